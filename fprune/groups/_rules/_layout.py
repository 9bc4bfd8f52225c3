"""Flow rules of layout ops: view / reshape (with the sizes they read), transpose / permute,
cat, split / chunk, getitem, flatten, mean and shape metadata."""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, HeadAxis, flatten_axis, handles_nonzero
from .._sizes import size_args


def input_axis(ctx: FlowContext, index: int = 0) -> Axis | None:
    flow = ctx.input(index)
    if flow is None or isinstance(flow, Axis):
        return flow
    if isinstance(flow, HeadAxis):
        raise PruneError(f"attention heads reach `{ctx.node.name}`, which does not follow them")
    raise PruneError("expects one tensor input, got a tuple")


# --- attention: heads ----------------------------------------------------------------------------


@handles_nonzero
def view_rule(ctx: FlowContext) -> Flow:
    """view / reshape: add or drop dims of size 1 (``view(b, c)`` after a global pool, and back
    with ``view(b, c, 1, 1)``), split the last (channel) dim into heads, merge heads back, or
    keep it."""
    flow = ctx.input(0)
    if flow is None:
        return None
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if in_shape is None or out_shape is None:
        raise PruneError("a view / reshape of channels needs shapes; pass example_inputs")
    sizes = size_args(ctx.node)
    if isinstance(flow, Axis):
        relabeled = _size_one_relabel(flow, in_shape, out_shape)
        if relabeled is not None and len(sizes) == len(out_shape):
            _channel_count(ctx, sizes, flow.ids, index=relabeled.dim)
            return relabeled
        if flow.nonzero:
            raise PruneError(f"`{ctx.node.name}` reshapes channels whose removed entries are not zero (after {flow.nonzero})")
        if flow.dim != -1 or flow.inner != 1 or flow.outer != 1:
            raise PruneError(
                "a view / reshape of channels that are not on the last dim (such as x.view(-1, 800) after a "
                "conv); flatten with torch.flatten(x, 1) or nn.Flatten instead, which fprune follows"
            )
        if out_shape[-1] == in_shape[-1]:
            _channel_count(ctx, sizes, flow.ids)
            return Axis(-1, flow.ids, ndim=len(out_shape))
        if len(out_shape) >= 2 and out_shape[:-2] == in_shape[:-1] and out_shape[-2] * out_shape[-1] == in_shape[-1]:
            heads, size = out_shape[-2], out_shape[-1]
            axis = HeadAxis(-2, -1, tuple(flow.ids[h * size : (h + 1) * size] for h in range(heads)), len(out_shape))
            _size_literal(ctx, sizes, len(sizes) - 2, heads, axis, 1)
            return axis
        raise PruneError(f"a view / reshape {tuple(in_shape)} -> {tuple(out_shape)} that moves the channels")
    if isinstance(flow, HeadAxis):
        if flow.head_dim == -2 and flow.inner_dim == -1 and out_shape == in_shape[:-2] + (in_shape[-2] * in_shape[-1],):
            if sizes and isinstance(sizes[-1], torch.fx.Node):  # the width read from a shape: `C` of `B, N, C = x.shape`
                _follow_count(ctx, sizes[-1], flow.ids)
            else:
                _size_literal(ctx, sizes, len(sizes) - 1, out_shape[-1], flow, in_shape[-1])
            return Axis(-1, flow.ids, ndim=len(out_shape))
        if out_shape == in_shape:
            return flow
        raise PruneError(f"a view / reshape {tuple(in_shape)} -> {tuple(out_shape)} of attention heads")
    raise PruneError("a view / reshape of a tuple")


def _size_one_relabel(axis: Axis, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Axis | None:
    """The axis after a view that only adds or drops dims of size 1 (the other sizes stay, in
    order), or None for any other view. The channels' dim must not have size 1 itself."""
    if axis.inner != 1 or axis.outer != 1 or -axis.dim > len(in_shape):
        return None
    kept_in = [i for i, size in enumerate(in_shape) if size != 1]
    kept_out = [i for i, size in enumerate(out_shape) if size != 1]
    channel = axis.dim % len(in_shape)
    if [in_shape[i] for i in kept_in] != [out_shape[i] for i in kept_out] or channel not in kept_in:
        return None
    return replace(axis, dim=kept_out[kept_in.index(channel)] - len(out_shape), ndim=len(out_shape))


def _channel_count(ctx: FlowContext, sizes: list[object], ids: tuple[int, ...], index: int = -1) -> None:
    """A view / reshape keeps the channels `ids` on its dim `index` (the last by default): the
    size there must follow pruning.

    -1 does, and so does a size read from the shape of a tensor with the same number of channels
    (``x.shape[-1]``, or the ``C`` of ``B, N, C = y.shape``): those channels are then pruned
    alike (the same positions kept), so the read stays equal to the kept count. A number
    written in the code does not (the pruned model would fail, or silently regroup values), nor
    does a size computed from anything else: either blocks.
    """
    size = sizes[index] if sizes else None
    if size == -1:
        return
    if isinstance(size, int) and not isinstance(size, bool):
        raise PruneError(
            f"a view / reshape that writes the channel count as the number {size}; pruning changes the count, "
            "so write -1 there (or read it from the tensor: x.shape[-1])"
        )
    _follow_count(ctx, size, ids)


def _follow_count(ctx: FlowContext, size: object, ids: tuple[int, ...]) -> None:
    """`size` lays out the channels `ids`: tie it to them, or refuse."""
    read = ctx.channel_count(size)
    if read is None:
        raise PruneError(
            f"a view / reshape whose channel count `{size}` is computed in forward from values fprune does not "
            "follow; write -1 there (or read it from the tensor: x.shape[-1])"
        )
    if len(read) != len(ids) or ctx.merge(Axis(-1, read), Axis(-1, ids)) is None:
        reason = f"a view / reshape sized by a channel count `{size}` of {len(read)} channels, laying out {len(ids)}"
        ctx.block(Axis(-1, read), reason)  # both sides: the read and (by the raise) the reshaped channels
        raise PruneError(reason)


def _size_literal(ctx: FlowContext, sizes: list[object], index: int, value: int, heads: HeadAxis, factor: int) -> None:
    if index < 0 or index >= len(sizes):
        raise PruneError("a view / reshape whose sizes fprune cannot read")
    size = sizes[index]
    if size == -1:
        return
    if isinstance(size, int) and not isinstance(size, bool):
        if size != value:
            raise PruneError(f"a view / reshape size {size} where {value} was expected")
        ctx.literal(index, value, heads, factor)
        return
    raise PruneError("a view / reshape whose head count is computed from tensors; write it with a module attribute or -1")


def _moved(dim: int, ndim: int, order: list[int]) -> int:
    """Where dim `dim` (negative) goes under the permutation `order`, as a negative dim."""
    return order.index(dim % ndim) - ndim


def _permute_flow(flow: Flow, ndim: int, order: list[int]) -> Flow:
    if isinstance(flow, Axis):
        if flow.inner != 1 or flow.outer != 1:
            raise PruneError("a permute of flattened channels")
        return Axis(_moved(flow.dim, ndim, order), flow.ids, ndim=ndim)
    if isinstance(flow, HeadAxis):
        inner = None if flow.inner_dim is None else _moved(flow.inner_dim, ndim, order)
        return HeadAxis(_moved(flow.head_dim, ndim, order), inner, flow.heads, ndim)
    raise PruneError("a permute of a tuple")


def _flow_ndim(ctx: FlowContext, flow: Flow) -> int:
    shape = ctx.shape(ctx.node.args[0])
    if shape is not None:
        return len(shape)
    if isinstance(flow, (Axis, HeadAxis)) and flow.ndim is not None:
        return flow.ndim
    raise PruneError("a transpose / permute of a tensor of unknown rank; pass example_inputs")


def transpose_rule(ctx: FlowContext) -> Flow:
    flow = ctx.input(0)
    if flow is None:
        return None
    a, b = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    if not isinstance(a, int) or not isinstance(b, int):
        raise PruneError("a transpose of computed dims")
    ndim = _flow_ndim(ctx, flow)
    order = list(range(ndim))
    order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
    return _permute_flow(flow, ndim, order)


def permute_rule(ctx: FlowContext) -> Flow:
    flow = ctx.input(0)
    if flow is None:
        return None
    dims = list(ctx.node.args[1:]) if ctx.node.op == "call_method" else [ctx.arg(1, "dims")]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = list(dims[0])
    if not all(isinstance(d, int) for d in dims):
        raise PruneError("a permute of computed dims")
    ndim = _flow_ndim(ctx, flow)
    return _permute_flow(flow, ndim, [d % ndim for d in dims if isinstance(d, int)])


def cat_rule(ctx: FlowContext) -> Flow:
    tensors = ctx.arg(0, "tensors")
    dim = ctx.arg(1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        raise PruneError("torch.cat with a computed list or dim")
    flows = [ctx.flow(t) for t in tensors]
    axes = [f for f in flows if isinstance(f, Axis)]
    if not axes:
        return None
    first = axes[0]
    ndim = next((a.ndim for a in axes if a.ndim is not None), None)
    if ndim is None:
        shape = ctx.shape()
        ndim = len(shape) if shape is not None else None
    cat_dim = dim if dim < 0 else (dim - ndim if ndim is not None else None)
    if len(axes) != len(flows):
        if cat_dim is None or any(f is not None and not isinstance(f, Axis) for f in flows) or any(a.dim != cat_dim for a in axes):
            raise PruneError("torch.cat of tracked channels with untracked tensors")
        axes = [f if isinstance(f, Axis) else _untracked_part(ctx, t, cat_dim, ndim) for t, f in zip(tensors, flows)]
    if cat_dim is None:
        raise PruneError("torch.cat along a positive dim of a tensor of unknown rank; pass example_inputs")
    if all(a.dim == cat_dim for a in axes):
        if any(a.inner != 1 or a.outer != 1 for a in axes):
            raise PruneError("torch.cat of flattened channels")
        return Axis(cat_dim, tuple(i for a in axes for i in a.ids), ndim=ndim)
    merged: Axis | None = first
    for other in axes[1:]:
        merged = ctx.merge(first, other) if merged is not None else None
    if merged is None:
        raise PruneError("torch.cat along another dim of tensors whose channels do not line up")
    return merged


def _untracked_part(ctx: FlowContext, value: object, cat_dim: int, ndim: int | None) -> Axis:
    """The channels an untracked tensor adds to a concat along the channels: fixed in place
    (blocked), so that the tracked parts stay prunable. Its width comes from its shape."""
    shape = ctx.shape(value)
    if shape is None or -cat_dim > len(shape):
        raise PruneError("torch.cat of tracked channels with untracked tensors of unknown shape; pass example_inputs")
    name = value.name if isinstance(value, torch.fx.Node) else repr(value)
    reason = f"`{name}` is concatenated to these channels, and fprune does not track where its channels come from"
    return ctx.fixed(shape[cat_dim], cat_dim, reason, ndim=ndim)


def split_rule(ctx: FlowContext) -> Flow:
    axis = input_axis(ctx)
    if axis is None:
        return None
    size = ctx.arg(1, "split_size_or_sections", ctx.node.kwargs.get("split_size"))
    dim = ctx.arg(2, "dim", 0)
    chunks = ctx.node.target in (torch.chunk, "chunk")
    if not isinstance(dim, int):
        raise PruneError("split along a computed dim")
    ndim = axis.ndim
    if ndim is None and dim >= 0:  # the rank from the example inputs' shapes
        shape = ctx.shape(ctx.node.args[0])
        ndim = len(shape) if shape is not None else None
    norm_dim = dim if dim < 0 else (dim - ndim if ndim is not None else None)
    if norm_dim is None:
        raise PruneError("split along a positive dim of a tensor of unknown rank; pass example_inputs")
    if norm_dim != axis.dim:
        return tuple(axis for _ in range(_piece_count(ctx)))
    if axis.inner != 1 or axis.outer != 1:
        raise PruneError("split of flattened channels")
    n = len(axis.ids)
    if chunks:
        if not isinstance(size, int):
            raise PruneError("chunk with a computed count")
        step = -(-n // size)
        sizes = [min(step, n - s) for s in range(0, n, step)]
    elif isinstance(size, int):
        sizes = [min(size, n - s) for s in range(0, n, size)]
    elif isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
        sizes = [s for s in size if isinstance(s, int)]
    else:
        raise PruneError("split with computed sizes")
    pieces: list[Axis] = []
    start = 0
    for s in sizes:
        pieces.append(Axis(axis.dim, axis.ids[start : start + s], ndim=ndim))
        start += s
    if len(set(sizes)) != 1:
        raise PruneError(f"a split into pieces of unequal sizes {sizes}: pruning cannot keep them")
    # the pieces are cut by position: they must all lose the same positions
    for j in range(sizes[0]):
        ctx.tie([piece.ids[j] for piece in pieces])
    if not chunks and len(pieces) > 1:  # every size written must follow the pieces' kept count
        for index in range(len(sizes) if isinstance(size, (list, tuple)) else 1):
            ctx.literal(index, sizes[index], pieces[index].ids, 1)
    return tuple(pieces)


def _piece_count(ctx: FlowContext) -> int:
    return max((int(u.args[1]) for u in ctx.node.users if u.target is operator.getitem and isinstance(u.args[1], int)), default=-1) + 1


def getitem_rule(ctx: FlowContext) -> Flow:
    source = ctx.input(0)
    index = ctx.node.args[1]
    if isinstance(source, tuple) and isinstance(index, int):
        return source[index] if -len(source) <= index < len(source) else None
    if source is None:
        return None
    raise PruneError(f"indexing a tensor ({index!r}) can drop or move its channels")


def flatten_rule(ctx: FlowContext) -> Flow:
    axis = input_axis(ctx)
    if axis is None:
        return None
    start: object
    end: object
    if ctx.module is not None:
        assert isinstance(ctx.module, nn.Flatten)
        start, end = ctx.module.start_dim, ctx.module.end_dim
    else:
        start = ctx.arg(1, "start_dim", 0)
        end = ctx.arg(2, "end_dim", -1)
    if not isinstance(start, int) or not isinstance(end, int):
        raise PruneError("flatten with computed dims")
    source = ctx.node.args[0]
    shape = ctx.shape(source, run=False)
    ndim = len(shape) if shape is not None else axis.ndim
    if ndim is None:
        shape = ctx.shape(source)
        ndim = len(shape) if shape is not None else None
    if ndim is None:
        raise PruneError("flatten of a tensor of unknown rank; pass example_inputs")
    first, last, channel = start % ndim, end % ndim, axis.dim % ndim
    if shape is None and first <= channel <= last:
        # the sizes of the merged dims matter: known from a pool's output size, else measured
        static = _static_shape(ctx, source, ndim)
        needed = static[first:channel] + static[channel + 1 : last + 1] if static is not None else (-1,)
        shape = static if all(size >= 0 for size in needed) else ctx.shape(source)
    if shape is None and channel == first and last == ndim - 1:
        # channels first in the flattened range: each spans the product of the dims after it,
        # which the consumer resolves (a Linear's in_features / channels)
        return Axis(-1, axis.ids, -1, 1, first + 1)
    return flatten_axis(axis, start, end, ndim, shape)


_ADAPTIVE_POOLS: dict[object, int] = {
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
    F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2,
    F.adaptive_max_pool3d: 3,
}


def _static_shape(ctx: FlowContext, value: object, ndim: int) -> tuple[int, ...] | None:
    """The shape of an adaptive pool's output as far as its arguments say (-1: unknown)."""
    if not isinstance(value, torch.fx.Node):
        return None
    size: object
    if value.op == "call_module":
        module = ctx.module_of(value)
        spatial = _ADAPTIVE_POOLS.get(type(module))
        size = getattr(module, "output_size", None)
    elif value.op == "call_function":
        try:
            spatial = _ADAPTIVE_POOLS.get(value.target)
        except TypeError:
            return None
        size = value.args[1] if len(value.args) > 1 else value.kwargs.get("output_size")
    else:
        return None
    if spatial is None or ndim < spatial:
        return None
    sizes = [size] * spatial if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else None
    if sizes is None or len(sizes) != spatial:
        return None
    known = [s if isinstance(s, int) and not isinstance(s, bool) else -1 for s in sizes]
    return (-1,) * (ndim - spatial) + tuple(known)


def reduce_mean_rule(ctx: FlowContext) -> Flow:
    """mean / sum / amax / amin over dims other than the channels' (zeros stay zeros)."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    dims = ctx.arg(1, "dim")
    keepdim = ctx.arg(2, "keepdim", False)
    axis = with_ndim(ctx, axis)  # the rank from the example inputs' shapes
    if dims is None or axis.ndim is None:
        raise PruneError("a reduction over unknown dims")
    dim_list = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (list, tuple)) else None
    if dim_list is None or not all(isinstance(d, int) for d in dim_list):
        raise PruneError("a reduction over computed dims")
    ndim = axis.ndim
    norm = {d % ndim for d in dim_list if isinstance(d, int)}
    channel = axis.dim % ndim
    if channel in norm:
        raise PruneError("a reduction over the channel dim")
    if keepdim:
        return axis
    new_ndim = ndim - len(norm)
    shift = sum(1 for d in norm if d > channel)
    return Axis(axis.dim + shift, axis.ids, axis.inner, axis.outer, new_ndim)


def metadata_rule(ctx: FlowContext) -> Flow:
    """``x.shape`` / ``x.dtype`` / ``x.device``: no channels flow into metadata."""
    if ctx.node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return None
    raise PruneError(f"attribute {ctx.node.args[1]!r} of a tensor of channels")


@handles_nonzero
def expand_rule(ctx: FlowContext) -> Flow:
    """``x.expand(...)`` / ``x.expand_as(y)``: repeats dims of size 1; the channels' dim keeps its
    size, so each channel's values stay its own (and its size argument must follow pruning)."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or -axis.dim > len(in_shape):
        raise PruneError(f"`{ctx.node.name}` expands channels of unknown shape or adds dims; pass example_inputs")
    if in_shape[axis.dim] != out_shape[axis.dim]:
        raise PruneError(f"`{ctx.node.name}` expands along the channels")
    if ctx.node.target == "expand":
        sizes = size_args(ctx.node)
        if len(sizes) != len(out_shape):
            raise PruneError(f"`{ctx.node.name}` expands with sizes fprune cannot read")
        _channel_count(ctx, sizes, axis.ids, index=axis.dim)
    return replace(axis, ndim=len(out_shape))


def _plain_on_dim_1(axis: Axis) -> bool:
    """The channels are dim 1 of a tensor of known rank, one position each (not flattened)."""
    return axis.ndim is not None and axis.dim % axis.ndim == 1 and axis.inner == 1 and axis.outer == 1


def with_ndim(ctx: FlowContext, axis: Axis) -> Axis:
    """`axis` with its rank filled in from the input's recorded shape where it is not known."""
    if axis.ndim is None:
        shape = ctx.shape(ctx.node.args[0])
        if shape is not None:
            return replace(axis, ndim=len(shape))
    return axis


def unsqueeze_rule(ctx: FlowContext) -> Flow:
    """``x.unsqueeze(d)``: a new dim of size 1; the channels keep their place among the others."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    axis = with_ndim(ctx, axis)
    dim = ctx.arg(1, "dim")
    if axis.ndim is None or not isinstance(dim, int):
        raise PruneError("unsqueeze of channels whose rank or new dim is unknown; pass example_inputs")
    ndim = axis.ndim + 1
    position, channel = dim % ndim, axis.dim % axis.ndim
    new = channel + 1 if position <= channel else channel
    return replace(axis, dim=new - ndim, ndim=ndim)


@handles_nonzero
def interpolate_rule(ctx: FlowContext) -> Flow:
    """``F.interpolate`` / ``nn.Upsample``: resamples the spatial dims (2 and on) of each
    channel; the channels must be on dim 1."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    axis = with_ndim(ctx, axis)
    if not _plain_on_dim_1(axis) or axis.ndim is None or axis.ndim < 3:
        raise PruneError(f"`{ctx.node.name}` resamples along the channels (they are not on dim 1)")
    return axis


def channel_shuffle_rule(ctx: FlowContext) -> Flow:
    """``nn.ChannelShuffle(g)`` / ``F.channel_shuffle(x, g)``: channel ``a * (C / g) + b`` moves to
    ``b * g + a``. The g channels of one ``b`` are one unit (kept or removed together), so the
    pruned copy, shuffling ``C_kept`` channels with the same g, puts every kept channel where the
    masked model has it."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    axis = with_ndim(ctx, axis)
    module = ctx.module
    groups = getattr(module, "groups", None) if module is not None else ctx.arg(1, "groups")
    if not isinstance(groups, int) or groups < 1:
        raise PruneError(f"`{ctx.node.name}`: channel shuffle with groups that are not a number")
    if not _plain_on_dim_1(axis):
        raise PruneError(f"`{ctx.node.name}` shuffles channels that are not on dim 1")
    ids = axis.ids
    if len(ids) % groups:
        raise PruneError(f"`{ctx.node.name}` shuffles {len(ids)} channels in {groups} groups")
    per = len(ids) // groups
    for b in range(per):
        ctx.tie([ids[a * per + b] for a in range(groups)])
    shuffled = tuple(ids[a * per + b] for b in range(per) for a in range(groups))
    return replace(axis, ids=shuffled)
