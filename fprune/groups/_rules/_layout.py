"""Flow rules of layout ops: view / reshape (with the sizes they read), transpose / permute,
cat, split / chunk, getitem, flatten, mean and shape metadata."""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, HeadAxis, flatten_axis, handles_nonzero, tracks_constant
from .._sizes import size_args
from ._attention import expand_heads
from ._rotary import head_cat, head_expand, head_slice, head_statistic, head_unsqueeze, repeat_view
from ._vit import cat_parameters, check_merge_width, fused_heads_view, heads_batch_view, index_off_channels


def input_axis(ctx: FlowContext, index: int = 0) -> Axis | None:
    flow = ctx.input(index)
    if flow is None or isinstance(flow, Axis):
        return flow
    if isinstance(flow, HeadAxis):
        raise PruneError(f"attention heads reach `{ctx.node.name}`, which does not follow them")
    raise PruneError("expects one tensor input, got a tuple")


# --- attention: heads ----------------------------------------------------------------------------


@tracks_constant
@handles_nonzero
def view_rule(ctx: FlowContext) -> Flow:
    """view / reshape: add or drop dims of size 1 (``view(b, c)`` after a global pool, and back
    with ``view(b, c, 1, 1)``), split the last (channel) dim into heads, merge heads back, or
    keep it."""
    flow = ctx.input(0)
    if flow is None:
        return None
    if (shuffled := shuffle_view(ctx)) is not None:  # view(b, g, C // g, h, w), transpose(1, 2), view back
        return shuffled
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if in_shape is None or out_shape is None:
        raise PruneError("a view / reshape of channels needs shapes; pass example_inputs")
    sizes = size_args(ctx.node)
    if isinstance(flow, Axis):
        if (one := _one_head_view(ctx, flow, in_shape, out_shape, sizes)) is not None:  # MQA: view(b, t, 1, head_dim)
            return one
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
        if (fused := fused_heads_view(ctx, flow, in_shape, out_shape, sizes)) is not None:  # qkv(x).reshape(B, N, 3, H, D)
            return fused
        raise PruneError(f"a view / reshape {tuple(in_shape)} -> {tuple(out_shape)} that moves the channels")
    if isinstance(flow, HeadAxis):
        if flow.head_dim == -2 and flow.inner_dim == -1 and out_shape == in_shape[:-2] + (in_shape[-2] * in_shape[-1],):
            if sizes and isinstance(sizes[-1], torch.fx.Node):  # the width read from a shape: `C` of `B, N, C = x.shape`
                check_merge_width(ctx, sizes[-1], flow)  # a width fprune does not follow: the reason
                _follow_count(ctx, sizes[-1], flow.ids)
            else:
                _size_literal(ctx, sizes, len(sizes) - 1, out_shape[-1], flow, in_shape[-1])
            return Axis(-1, flow.ids, ndim=len(out_shape))
        if out_shape == in_shape:
            return flow
        if (split := heads_batch_view(ctx, flow, in_shape, out_shape, sizes)) is not None:  # Swin's window mask
            return split
        if (repeated := repeat_view(ctx, flow, in_shape, out_shape, sizes)) is not None:  # repeat_kv
            return repeated
        raise PruneError(f"a view / reshape {tuple(in_shape)} -> {tuple(out_shape)} of attention heads")
    raise PruneError("a view / reshape of a tuple")


def _one_head_view(
    ctx: FlowContext, flow: Axis, in_shape: tuple[int, ...], out_shape: tuple[int, ...], sizes: list[object]
) -> HeadAxis | None:
    """``view(b, t, 1, head_dim)`` of a one-head key / value projection (multi-query attention):
    the channels split into one head (its head count 1 recorded), or None for any other view.
    Only where the head size is written as a number, which as a plain channel count would block."""
    if flow.dim != -1 or flow.inner != 1 or flow.outer != 1 or flow.nonzero or len(out_shape) < 3 or len(sizes) != len(out_shape):
        return None
    if out_shape[:-2] != in_shape[:-1] or out_shape[-2] != 1 or out_shape[-1] != in_shape[-1]:
        return None
    if isinstance(sizes[-1], bool) or sizes[-1] != out_shape[-1]:
        return None
    axis = HeadAxis(-2, -1, (flow.ids,), len(out_shape))
    _size_literal(ctx, sizes, len(sizes) - 2, 1, axis, 1)
    return axis


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
    if isinstance(size, int) and not isinstance(size, bool) and ctx.exported and size == len(ids):
        ctx.literal(index % len(sizes), size, ids, 1)  # export writes every size as a number: checked by apply
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
    if any(isinstance(f, HeadAxis) for f in flows):  # rotate_half: cat((-x2, x1), dim=-1)
        return head_cat(ctx, flows, dim)
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
        if (carried := cat_parameters(ctx, tensors, flows, cat_dim)) is not None:  # cat((cls_token.expand(B, -1, -1), x), 1)
            return carried
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
    if isinstance(source, HeadAxis) and (halves := head_slice(ctx, source, index)) is not None:  # rotate_half
        return halves
    if (sliced := channel_slice(ctx)) is not None:  # x[:, :k]
        return sliced
    if (indexed := index_off_channels(ctx)) is not None:  # x[:, 0], qkv[0]: the channel dims whole
        return indexed
    raise PruneError(f"indexing a tensor ({index!r}) can drop or move its channels")


def flatten_rule(ctx: FlowContext) -> Flow:
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
    heads = ctx.input(0)
    if isinstance(heads, HeadAxis) and (heads.head_dim, heads.inner_dim) == (-2, -1):
        # heads merged back: ``o.transpose(1, 2).flatten(2)`` of [B, N, H, D], as reshape(B, N, -1)
        if (start % heads.ndim, end % heads.ndim) == (heads.ndim - 2, heads.ndim - 1):
            return Axis(-1, heads.ids, ndim=heads.ndim - 1)
    axis = input_axis(ctx)
    if axis is None:
        return None
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
    from ._norms import head_norm_rescale, rms_statistic  # noqa: PLC0415 - norms written out (_norms imports this module)

    if isinstance(heads := ctx.input(0), HeadAxis):  # Qwen3's RMSNorm over the dims of each head
        statistic = head_statistic(ctx, heads)
        head_norm_rescale(ctx)  # its eps may move with the hidden size's, the projection before it rescaled
        return statistic
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
        if rms_statistic(ctx, axis, norm):
            return None
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


@tracks_constant
@handles_nonzero
def expand_rule(ctx: FlowContext) -> Flow:
    """``x.expand(...)`` / ``x.expand_as(y)``: repeats dims of size 1; the channels' dim keeps its
    size, so each channel's values stay its own (and its size argument must follow pruning)."""
    if isinstance(heads := ctx.input(0), HeadAxis):
        if (repeated := head_expand(ctx, heads)) is not None:  # repeat_kv: expand(B, KV, n_rep, T, D)
            return repeated
        return expand_heads(ctx)  # multi-query attention: one key / value head for every query head
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
    if isinstance(heads := ctx.input(0), HeadAxis):  # repeat_kv: k[:, :, None]
        return head_unsqueeze(ctx, heads, ctx.arg(1, "dim"))
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


@tracks_constant
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
    module = ctx.module
    mode = getattr(module, "mode", None) if module is not None else ctx.arg(3, "mode", "nearest")
    if axis.nonzero and mode not in ("nearest", "nearest-exact"):  # a constant plane, resampled otherwise: unknown
        return replace(axis, constant=None)
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
    ctx.tie_positions(ids, groups)
    shuffled = tuple(ids[a * per + b] for b in range(per) for a in range(groups))
    return replace(axis, ids=shuffled)


# --- channel shuffle written as view / transpose / view (torchvision's ShuffleNetV2) -------------

_VIEWS: tuple[object, ...] = ("view", "reshape", torch.reshape)


def _is_call(node: object, targets: tuple[object, ...]) -> bool:
    return isinstance(node, torch.fx.Node) and node.op in ("call_method", "call_function") and any(node.target is t or node.target == t for t in targets)


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _shuffle_chain(ctx: FlowContext, first: torch.fx.Node) -> tuple[int, torch.fx.Node] | None:
    """(groups, the view back) if `first` is the view of a channel shuffle written as torchvision
    writes it: ``x.view(b, g, C // g, h, w)`` of a 4-D ``x``, whose only user is
    ``transpose(1, 2)``, then (optionally) ``.contiguous()``, then a view / reshape back to
    ``x``'s shape; None for anything else."""
    if not _is_call(first, _VIEWS):
        return None
    in_shape, out_shape = ctx.shape(first.args[0]), ctx.shape(first)
    if in_shape is None or out_shape is None or len(in_shape) != 4 or len(out_shape) != 5:
        return None
    if out_shape[0] != in_shape[0] or out_shape[3:] != in_shape[2:] or out_shape[1] * out_shape[2] != in_shape[1]:
        return None
    swap = _only_user(first)
    if swap is None or not _is_call(swap, ("transpose", torch.transpose)) or swap.args[0] is not first:
        return None
    dims = [swap.args[i] if i < len(swap.args) else swap.kwargs.get(f"dim{i - 1}") for i in (1, 2)]
    if not all(isinstance(d, int) for d in dims) or {d % 5 for d in dims if isinstance(d, int)} != {1, 2}:
        return None
    back = _only_user(swap)
    if back is not None and _is_call(back, ("contiguous",)) and len(back.args) == 1:
        back, source = _only_user(back), back
    else:
        source = swap
    if back is None or not _is_call(back, _VIEWS) or back.args[0] is not source or ctx.shape(back) != in_shape:
        return None
    return out_shape[1], back


def _shuffle_start(node: torch.fx.Node) -> torch.fx.Node | None:
    """The first view of the shuffle chain that ends in the view `node` (by the graph alone)."""
    source = node.args[0] if node.args else None
    if _is_call(source, ("contiguous",)):
        assert isinstance(source, torch.fx.Node)
        source = source.args[0]
    if not _is_call(source, ("transpose", torch.transpose)):
        return None
    assert isinstance(source, torch.fx.Node)
    first = source.args[0]
    return first if isinstance(first, torch.fx.Node) else None


def _group_size_ok(ctx: FlowContext, size: object, groups: int, ids: tuple[int, ...]) -> bool:
    """`size` (the C / g of the shuffle's first view) stays C_kept / g: it is -1, or
    ``n // groups`` of a count `n` read from the shape of the same channels (which
    :func:`floordiv_rule` answered for)."""
    if size == -1:
        return True
    if not _is_call(size, (operator.floordiv,)):
        return False
    assert isinstance(size, torch.fx.Node)
    if len(size.args) != 2 or size.args[1] != groups or isinstance(size.args[1], bool):
        return False
    read = ctx.channel_count(size.args[0])
    return read is not None and sorted(read) == sorted(ids)


def shuffle_view(ctx: FlowContext) -> Flow | None:
    """The two views of a channel shuffle written as torchvision writes it (``view(b, g, C // g,
    h, w)``, ``transpose(1, 2)``, ``contiguous()``, ``view(b, C, h, w)``), or None for any other
    view. Channel ``a * (C / g) + b`` moves to ``b * g + a``, as :func:`channel_shuffle_rule`
    follows it: the g channels of one ``b`` are one unit, so every group keeps the same
    positions and the pruned copy, with the same literal g and the sizes it reads from the
    tensor, puts every kept channel where the masked model has it. Between the views the
    channels are a :class:`HeadAxis` (dim 1 the g groups, dim 2 the positions in a group)."""
    node, flow = ctx.node, ctx.input(0)
    if isinstance(flow, Axis) and not flow.nonzero:
        chain = _shuffle_chain(ctx, node)
        axis = with_ndim(ctx, flow)
        if chain is None or not _plain_on_dim_1(axis):
            return None
        groups, ids = chain[0], axis.ids
        sizes = size_args(node)
        if len(sizes) != 5 or sizes[1] != groups or isinstance(sizes[1], bool):
            raise PruneError(f"`{node.name}` splits the channels into groups for a shuffle, but not with the group count {groups} written as a number")
        if not _group_size_ok(ctx, sizes[2], groups, ids):
            raise PruneError(
                f"`{node.name}` splits the channels into {groups} groups of `{sizes[2]}`, a size that pruning would not "
                f"change; write -1 there, or `num_channels // {groups}` with num_channels read from x.size()"
            )
        per = len(ids) // groups
        ctx.tie_positions(ids, groups)
        return HeadAxis(-4, -3, tuple(ids[a * per : (a + 1) * per] for a in range(groups)), 5)
    if isinstance(flow, HeadAxis) and flow.ndim == 5 and (flow.head_dim, flow.inner_dim) == (-3, -4):
        start = _shuffle_start(node)
        chain = _shuffle_chain(ctx, start) if start is not None else None
        if chain is None or chain[1] is not node:
            return None
        sizes = size_args(node)
        shuffled = tuple(head[b] for b in range(len(flow.heads[0])) for head in flow.heads)
        count = sizes[1] if len(sizes) == 4 else None
        read = ctx.channel_count(count) if count != -1 else shuffled
        if read is None or sorted(read) != sorted(shuffled):
            raise PruneError(
                f"`{node.name}` merges shuffled channels back with a channel count `{count}` that pruning would not "
                "change; write -1 there, or the count read from x.size() before the shuffle"
            )
        return Axis(-3, shuffled, ndim=4)
    return None


def floordiv_rule(ctx: FlowContext) -> Flow:
    """``n // k`` of numbers. A channel count read from a shape is answered here only where every
    use of the quotient is the group size of a channel shuffle's first view (``num_channels //
    groups`` of the same channels), which :func:`shuffle_view` keeps right; anywhere else the
    read stays unanswered and the walk blocks its channels."""
    if ctx.input(0) is not None or ctx.input(1) is not None:
        raise PruneError(f"`{ctx.node.name}` floor-divides channels")
    node, divisor = ctx.node, ctx.arg(1, "b")
    views: list[tuple[torch.fx.Node, Axis]] = []
    for view in node.users:
        chain = _shuffle_chain(ctx, view)
        sizes = size_args(view) if chain is not None else []
        axis = ctx.flow(view.args[0])
        if chain is None or len(sizes) != 5 or sizes[2] is not node or sizes.count(node) != 1 or chain[0] != divisor:
            return None
        if not isinstance(axis, Axis):
            return None
        views.append((view, axis))
    read = ctx.channel_count(ctx.arg(0, "a")) if views else None
    if read is None:
        return None
    for view, axis in views:
        if sorted(read) != sorted(axis.ids):
            ctx.block(
                Axis(-1, read),
                f"`{node.name}` divides a count of these channels, and `{view.name}` uses it as the group size of a "
                "channel shuffle of other channels",
            )
    return None


# --- a slice of the channels: ``out[:, :k]`` (GhostNet's ghost module) -----------------------------


def channel_slice(ctx: FlowContext) -> Flow | None:
    """``x[:, :k]`` (the other dims whole): the first k positions of the channels, or None for any
    other index. The positions from k on are dropped; the kept ones stay prunable, with k a
    :class:`~fprune.groups.SizeLiteral` (``self.oup`` in forward) that pruning rewrites to the
    number of kept channels among the first k. A slice to the end or past it (k >= the width)
    stays right as it is. In an exported graph (every size a number) a start s is followed
    alike: ``x[..., s:k]``, the pieces of a fused projection cut at literal positions, keeps
    the channels from s to k, with s a literal (at index ``~dim``) that pruning rewrites to
    the kept count of the channels before it. A step, an end counted from the end, and a
    start elsewhere block."""
    source, index = ctx.input(0), ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if not isinstance(source, Axis) or not isinstance(index, tuple) or source.inner != 1 or source.outer != 1:
        return None
    axis = with_ndim(ctx, source)
    if axis.ndim is None:
        return None
    channel = axis.dim % axis.ndim
    whole = slice(None)
    entry = index[channel] if channel < len(index) else whole
    if len(index) > axis.ndim or not isinstance(entry, slice) or entry == whole or any(e != whole for i, e in enumerate(index) if i != channel):
        return None
    name = ctx.node.name
    if entry.step is not None and entry.step != 1:
        raise PruneError(f"`{name}` slices the channels with step {entry.step!r}: pruning would change which channels it takes")
    start = 0 if entry.start is None else entry.start
    if start != 0 and not (ctx.exported and isinstance(start, int) and not isinstance(start, bool) and 0 < start < len(axis.ids)):
        raise PruneError(f"`{name}` slices the channels from position {entry.start!r}, which pruning would move")
    stop = len(axis.ids) if entry.stop is None else entry.stop
    if not isinstance(stop, int) or isinstance(stop, bool) or stop <= start:
        raise PruneError(
            f"`{name}` slices the channels up to {stop!r}; only a positive end written in forward as a number or a "
            "module attribute (x[:, :self.oup]) is followed"
        )
    if start:  # an exported graph's piece of the channels (Phi-3's fused qkv[..., q : q + kv]): its start follows too
        ctx.literal(~channel, start, axis.ids[:start], 1)  # the kept count of the channels before it
    if stop < len(axis.ids):
        ctx.literal(channel, stop, axis.ids[:stop], 1)
    return axis if not start and stop >= len(axis.ids) else replace(axis, ids=axis.ids[start:stop])
