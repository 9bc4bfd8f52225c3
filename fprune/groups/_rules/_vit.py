"""Flow rules of vision-transformer layouts (timm's ViT and Swin): a fused qkv Linear split into
heads by ``reshape(B, N, 3, H, D)``, ``unbind``, indexing that leaves the channels whole
(``x[:, 0]``, ``qkv[0]``, ``x[:, 0::2, 0::2, :]``), and a model parameter concatenated to the
channels along another dim (the cls token)."""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
from torch import fx, nn

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, HeadAxis
from .._sizes import size_args

_WHOLE = slice(None)


def _is_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fused_heads_view(
    ctx: FlowContext, axis: Axis, in_shape: tuple[int, ...], out_shape: tuple[int, ...], sizes: list[object]
) -> HeadAxis | None:
    """``qkv(x).reshape(B, N, 3, H, D)``: the last dim, ``3 * H * D`` channels, split into 3 parts
    (queries, keys, values) of H heads of D; None for any other view.

    Part p's channel ``h * D + d`` and part 0's are united (one channel of the group: they are
    kept or removed together, which whole heads do anyway), and each head's D channels are one
    unit, so the pruned tensor is ``[B, N, 3, H', D]``: the 3 and D stay, and H is rewritten like
    any head count written in a view (``self.num_heads``). The 3 and D must be numbers (or -1);
    a D computed in forward (``C // self.num_heads``) would change when the head count does.
    """
    if len(out_shape) != len(in_shape) + 2 or out_shape[:-3] != in_shape[:-1] or math.prod(out_shape[-3:]) != in_shape[-1]:
        return None
    parts, heads, size = out_shape[-3:]
    name = ctx.node.name
    if len(sizes) != len(out_shape):
        raise PruneError(f"`{name}` splits channels into {parts} x {heads} heads with sizes fprune cannot read")
    if not (_is_number(sizes[-3]) and sizes[-3] in (parts, -1)):
        raise PruneError(f"`{name}` splits channels into {parts} parts with the count `{sizes[-3]}` computed in forward; write it as a number")
    if not (_is_number(sizes[-1]) and sizes[-1] in (size, -1)):
        raise PruneError(
            f"`{name}` splits channels into heads of {size} with the head width `{sizes[-1]}` computed in forward "
            "(such as C // self.num_heads): it would change when pruning changes the head count; write it as a "
            "module attribute that pruning keeps (self.head_dim) or -1"
        )
    from ._layout import _size_literal  # noqa: PLC0415 - _layout calls this module

    block = heads * size
    result = HeadAxis(-2, -1, tuple(axis.ids[h * size : (h + 1) * size] for h in range(heads)), len(out_shape))
    _size_literal(ctx, sizes, len(sizes) - 2, heads, result, 1)
    first = Axis(-1, axis.ids[:block])
    for p in range(1, parts):
        ctx.merge(first, Axis(-1, axis.ids[p * block : (p + 1) * block]))
    for head in result.heads:
        ctx.tie(head)
    return result


def check_merge_width(ctx: FlowContext, size: object, heads: HeadAxis) -> None:
    """Heads merged back by ``reshape(B, N, C)`` with `size` read in forward: a PruneError with the
    reason unless it counts channels fprune follows (which then get tied to the heads)."""
    if ctx.channel_count(size) is not None:
        return
    shape = ctx.shape()
    width = shape[-1] if shape else "?"
    raise PruneError(
        f"`{ctx.node.name}` merges {len(heads.heads)} attention heads back to the width `{size}` computed in forward, "
        "as timm's `reshape(B, N, C)` does with `B, N, C = x.shape`: that is the width of another tensor (the "
        "attention's input), which is not pruned with the heads (its channels are blocked, as by a LayerNorm, or not "
        f"followed), so it would stay {width} while the heads shrink and the pruned model's reshape would fail; "
        "write `reshape(B, N, -1)` there to prune heads"
    )


def _channel_dims(flow: Axis | HeadAxis, ndim: int) -> set[int]:
    if isinstance(flow, Axis):
        return {flow.dim % ndim}
    return {flow.head_dim % ndim} | (set() if flow.inner_dim is None else {flow.inner_dim % ndim})


def _ndim(ctx: FlowContext, flow: Axis | HeadAxis) -> int | None:
    shape = ctx.shape(ctx.node.args[0])
    if shape is not None:
        return len(shape)
    return flow.ndim


def _index_plan(index: object, ndim: int) -> tuple[list[int | None], list[object]] | None:
    """For ``x[index]`` of a tensor with `ndim` dims: the input dim of each output dim (None for a
    new dim of size 1) and the entry each input dim gets; None if an entry is not an int, a
    slice of numbers, None or ``...``."""
    entries = list(index) if isinstance(index, tuple) else [index]
    if not all(e is None or e is Ellipsis or isinstance(e, slice) or _is_number(e) for e in entries):
        return None
    if any(isinstance(e, slice) and any(v is not None and not _is_number(v) for v in (e.start, e.stop, e.step)) for e in entries):
        return None
    used = sum(1 for e in entries if e is not None and e is not Ellipsis)
    if entries.count(Ellipsis) > 1 or used > ndim:
        return None
    expanded: list[object] = []
    for e in entries:
        expanded.extend([_WHOLE] * (ndim - used) if e is Ellipsis else [e])
    out: list[int | None] = []
    per_dim: list[object] = []
    for e in expanded:
        if e is None:
            out.append(None)
            continue
        if isinstance(e, slice):
            out.append(len(per_dim))
        per_dim.append(e)
    out.extend(range(len(per_dim), ndim))
    per_dim.extend([_WHOLE] * (ndim - len(per_dim)))
    return out, per_dim


def _relabel(flow: Axis | HeadAxis, where: list[int | None], ndim: int) -> Flow:
    new_ndim = len(where)

    def moved(dim: int) -> int:
        return where.index(dim % ndim) - new_ndim

    if isinstance(flow, Axis):
        return replace(flow, dim=moved(flow.dim), ndim=new_ndim)
    inner = None if flow.inner_dim is None else moved(flow.inner_dim)
    return HeadAxis(moved(flow.head_dim), inner, flow.heads, new_ndim)


def index_off_channels(ctx: FlowContext) -> Flow | None:
    """``x[:, 0]`` (cls pooling), ``qkv[0]``, ``x[:, 0::2, 0::2, :]`` (patch merging): ints, slices,
    None and ``...`` on the dims without channels, the channel dims (a head dim and a head's
    dim, for heads) left whole. Each channel keeps its own values, and the pruned copy indexes
    its dims alike. None for any other index."""
    flow, index = ctx.input(0), ctx.node.args[1]
    if not isinstance(flow, (Axis, HeadAxis)):
        return None
    ndim = _ndim(ctx, flow)
    plan = _index_plan(index, ndim) if ndim is not None else None
    if plan is None or ndim is None:
        return None
    where, per_dim = plan
    if any(per_dim[d] != _WHOLE for d in _channel_dims(flow, ndim)):
        return None
    return _relabel(flow, where, ndim)


def unbind_rule(ctx: FlowContext) -> Flow:
    """``qkv.unbind(0)`` / ``torch.unbind(x, dim)``: one tensor per index of a dim without channels."""
    flow = ctx.input(0)
    if flow is None:
        return None
    if not isinstance(flow, (Axis, HeadAxis)):
        raise PruneError(f"`{ctx.node.name}` unbinds a tuple")
    dim = ctx.arg(1, "dim", 0)
    shape = ctx.shape(ctx.node.args[0])
    if not _is_number(dim) or shape is None:
        raise PruneError(f"`{ctx.node.name}` unbinds a computed dim, or a tensor of unknown shape; pass example_inputs")
    assert isinstance(dim, int)
    ndim = len(shape)
    if dim % ndim in _channel_dims(flow, ndim):
        raise PruneError(f"`{ctx.node.name}` unbinds the channels (dim {dim}) into separate tensors")
    where = [d for d in range(ndim) if d != dim % ndim]
    piece = _relabel(flow, list(where), ndim)
    return tuple(piece for _ in range(shape[dim]))


def _parameter_behind(ctx: FlowContext, value: object, channel: int) -> tuple[str, int] | None:
    """(FQN, dim) of the model parameter `value` is, or an ``expand`` of it that keeps its
    channel dim (``self.cls_token.expand(B, -1, -1)``), with its channels on that dim, where
    `channel` is the (negative) channel dim of `value`; None for anything else."""
    node = value
    if isinstance(node, fx.Node) and node.op == "call_method" and node.target == "expand":
        sizes = size_args(node)
        if -channel > len(sizes) or sizes[channel] != -1:  # a channel count written in forward would not follow
            return None
        node = node.args[0]
    found = ctx.attr(node)
    if found is None:
        return None
    fqn, tensor = found
    if not isinstance(tensor, nn.Parameter) or -channel > tensor.dim():
        return None
    return fqn, tensor.dim() + channel


def cat_parameters(ctx: FlowContext, tensors: list[object] | tuple[object, ...], flows: list[Flow], cat_dim: int | None) -> Axis | None:
    """``torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)``: channels concatenated along
    another dim (tokens) with a model parameter whose channels line up with them: the parameter
    goes with the channels (a carrier: masked, its removed channels are zero, like theirs). None
    unless every untracked part is such a parameter."""
    tracked = [f for f in flows if f is not None]
    if cat_dim is None or not tracked or not all(isinstance(f, Axis) and f.inner == 1 and f.outer == 1 and f.dim != cat_dim for f in tracked):
        return None
    first = tracked[0]
    assert isinstance(first, Axis)
    carried: list[tuple[str, int]] = []
    for value, flow in zip(tensors, flows):
        if flow is not None:
            continue
        found = _parameter_behind(ctx, value, first.dim)
        shape = ctx.shape(value)
        if found is None or shape is None or -first.dim > len(shape) or shape[first.dim] != len(first.ids):
            return None
        carried.append(found)
    merged: Axis | None = first
    for other in tracked[1:]:
        assert isinstance(other, Axis)
        merged = ctx.merge(first, other) if merged is not None else None
    if merged is None:
        raise PruneError("torch.cat along another dim of tensors whose channels do not line up")
    for fqn, dim in carried:
        ctx.carry("", dim, Axis(dim, first.ids), fqn=fqn)
    shape = ctx.shape()
    return replace(merged, ndim=len(shape)) if shape is not None else merged



def roll_rule(ctx: FlowContext) -> Flow:
    """``torch.roll(x, shifts, dims)`` along dims without channels (Swin's shifted windows): each
    channel's values move along the tokens, the channels stay where they are."""
    flow = ctx.input(0)
    if flow is None:
        return None
    dims = ctx.arg(2, "dims")
    shape = ctx.shape(ctx.node.args[0])
    listed = [dims] if _is_number(dims) else list(dims) if isinstance(dims, (tuple, list)) else None
    if not isinstance(flow, (Axis, HeadAxis)) or shape is None or listed is None or not all(_is_number(d) for d in listed):
        raise PruneError(f"`{ctx.node.name}` rolls a computed or unknown dim (or a flattened tensor, without dims); pass example_inputs")
    ndim = len(shape)
    if any(d % ndim in _channel_dims(flow, ndim) for d in listed if isinstance(d, int)):
        raise PruneError(f"`{ctx.node.name}` rolls along the channels: pruning would change which channel lands where")
    return flow


# --- Swin: the relative position bias, the shifted-window mask's batch split -------------------


def heads_batch_view(
    ctx: FlowContext, flow: HeadAxis, in_shape: tuple[int, ...], out_shape: tuple[int, ...], sizes: list[object]
) -> HeadAxis | None:
    """``attn.view(B_ // nW, nW, self.num_heads, N, N)`` and back with ``view(-1, self.num_heads,
    N, N)`` (Swin's shifted-window mask): a view that regroups only the dims before the heads
    (batch, windows) and keeps the head dim and every dim after it. The head count there must be
    -1 or a number, which is rewritten like any head count; None for any other view."""
    first = flow.head_dim % len(in_shape)
    if flow.inner_dim is not None and flow.inner_dim < flow.head_dim:
        return None
    trailing = in_shape[first:]
    if len(out_shape) < len(trailing) or out_shape[len(out_shape) - len(trailing) :] != trailing or len(sizes) != len(out_shape):
        return None
    _size_literal_at(ctx, sizes, len(sizes) + flow.head_dim, len(flow.heads), flow)
    return HeadAxis(flow.head_dim, flow.inner_dim, flow.heads, len(out_shape))


def _size_literal_at(ctx: FlowContext, sizes: list[object], index: int, value: int, heads: HeadAxis, node: fx.Node | None = None) -> None:
    """Size `index` of a view keeps `value` heads: -1, or a number recorded as a head count."""
    size = sizes[index]
    where = ctx.node.name if node is None else node.name
    if size == -1:
        return
    if not _is_number(size):
        raise PruneError(f"`{where}` writes the head count as `{size}`, computed in forward; write it with a module attribute (self.num_heads) or -1")
    if size != value:
        raise PruneError(f"`{where}` writes the size {size} where {value} heads were expected")
    assert isinstance(size, int)
    ctx.literal(index, size, heads, 1, node=node)


_KEEPS = ("contiguous", "clone")


def _single_user(node: fx.Node) -> bool:
    return len(node.users) == 1


def per_head_table(ctx: FlowContext, other: fx.Node, heads: HeadAxis) -> bool:
    """Swin's relative position bias, ``table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)
    .contiguous().unsqueeze(0)`` added to the scores ``[B_, H, N, N]``: a model tensor with one
    entry per head on one of its dims (the table's ``[(2W-1)^2, H]`` dim 1), seen through views,
    permutes, ``unsqueeze`` and indexing of its other dims (rows picked by an index tensor), so
    that its head dim lands on the heads' dim. It goes with the heads (a carrier, one channel per
    head, sliced with them). Exact: a removed head's queries, keys and values are zero in the
    masked model, so its output ``softmax(0 + bias) @ 0`` is zero whatever its bias is.

    Returns False if `other` is no such tensor (the caller blocks); raises a PruneError with the
    reason for one that is, but that fprune cannot slice with the heads."""
    shape = ctx.shape(other)
    if shape is None or len(shape) < -heads.head_dim:
        return False
    dim = len(shape) + heads.head_dim  # the dim of `other` on the heads (non-negative)
    count = len(heads.heads)
    literals: list[tuple[fx.Node, int]] = []
    node = other
    while True:
        if ctx.flow(node) is not None:
            return False
        found = ctx.attr(node)
        if found is not None:
            break
        if not _single_user(node):
            raise PruneError(
                f"`{node.name}` holds a per-head tensor added to attention heads and is used elsewhere too: "
                "slicing it with the heads would change those other uses"
            )
        source = node.args[0] if node.args else None
        in_shape = ctx.shape(source) if isinstance(source, fx.Node) else None
        out_shape = ctx.shape(node)
        if not isinstance(source, fx.Node) or in_shape is None or out_shape is None:
            return False
        moved = _dim_before(ctx, node, dim, in_shape, out_shape, count, literals)
        if moved is None:
            return False
        dim, node = moved, source
    fqn, tensor = found
    if tensor.shape[dim] != count:
        return False
    readers = [n for n in node.graph.nodes if n.op == "get_attr" and str(n.target) == fqn]
    if len(readers) != 1 or not _single_user(node):
        raise PruneError(
            f"`{fqn}`, a per-head tensor added to attention heads, is read more than once: slicing it with "
            "these heads would change its other uses"
        )
    for view, index in literals:
        _size_literal_at(ctx, size_args(view), index, count, heads, view)
    ids = tuple(h[0] for h in heads.heads)  # heads are units: one channel id stands for each
    ctx.carry("", dim, Axis(dim, ids), fqn=fqn)
    return True


def _dim_before(
    ctx: FlowContext,
    node: fx.Node,
    dim: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    count: int,
    literals: list[tuple[fx.Node, int]],
) -> int | None:
    """The dim of `node`'s input that its output dim `dim` (size `count`, the heads) comes
    from, unchanged; None if the op mixes it with others or is not one fprune follows."""
    method = node.target if node.op == "call_method" else None
    function = node.target if node.op == "call_function" else None
    ndim = len(out_shape)
    if method in _KEEPS or function is torch.clone:
        return dim if in_shape == out_shape else None
    if method == "unsqueeze" or function is torch.unsqueeze:
        new = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if not _is_number(new):
            return None
        assert isinstance(new, int)
        new %= ndim
        return None if new == dim else dim - 1 if new < dim else dim
    if method == "permute" or function is torch.permute:
        given: object = node.kwargs.get("dims", node.args[1] if len(node.args) == 2 else node.args[1:])
        order = [d for d in given if isinstance(d, int)] if isinstance(given, (tuple, list)) else []
        if len(order) != ndim or not all(_is_number(d) for d in order):
            return None
        return order[dim] % ndim
    if method == "transpose" or function is torch.transpose:
        a, b = (node.args[1:3] if len(node.args) >= 3 else (None, None))
        if not (_is_number(a) and _is_number(b)):
            return None
        assert isinstance(a, int) and isinstance(b, int)
        a, b = a % ndim, b % ndim
        return b if dim == a else a if dim == b else dim
    if method in ("view", "reshape") or function is torch.reshape:
        prefix = math.prod(out_shape[:dim])
        for i, size in enumerate(in_shape):
            if math.prod(in_shape[:i]) == prefix and size == out_shape[dim]:
                sizes = size_args(node)
                if len(sizes) != ndim:
                    return None
                literals.append((node, dim))
                return i
        return None
    if function is operator.getitem:  # table[index]: rows picked by an index tensor, on dim 0
        index = node.args[1]
        index_shape = ctx.shape(index) if isinstance(index, fx.Node) else None
        if index_shape is None or ctx.flow(index) is not None or dim < len(index_shape):
            return None
        return dim - len(index_shape) + 1
    return None
