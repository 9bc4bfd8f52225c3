"""Attention heads through the ops of today's decoders (Llama, Qwen, Mistral, ...), as fx and
torch.export graphs record them: rotary embeddings (``rotate_half``: the halves of each head
sliced, negated, concatenated back, multiplied by cos / sin, added) and grouped-query attention's
``repeat_kv`` (``k[:, :, None].expand(B, KV, n_rep, T, D).reshape(B, KV * n_rep, T, D)``).

Heads are pruned whole, so ops inside a head (along the dims of a head) keep every head's
channels within it: rotary pairs are never split.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..._errors import PruneError
from .._flow import Flow, FlowContext, HeadAxis
from .._sizes import size_args


def _is_full(index: object) -> bool:
    return isinstance(index, slice) and index == slice(None)


def head_slice(ctx: FlowContext, heads: HeadAxis, index: object) -> HeadAxis | None:
    """``q[..., :half]`` / ``q[:, :, :, half:]``: a slice along the dims of each head (the
    other dims whole); None for any other index."""
    if heads.inner_dim is None:
        return None
    entries = index if isinstance(index, tuple) else (index,)
    if any(e is None for e in entries):
        return None
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        rest = entries[at + 1 :]
        if Ellipsis in rest:
            return None
        entries = entries[:at] + (slice(None),) * (heads.ndim - len(entries) + 1) + rest
    if len(entries) > heads.ndim:
        return None
    inner = heads.inner_dim % heads.ndim
    cut = [(d, e) for d, e in enumerate(entries) if not _is_full(e)]
    if len(cut) != 1 or cut[0][0] != inner or not isinstance(cut[0][1], slice):
        return None
    part = cut[0][1]
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (part.start, part.stop, part.step)):
        return None
    return HeadAxis(heads.head_dim, heads.inner_dim, tuple(tuple(h[part]) for h in heads.heads), heads.ndim)


def head_cat(ctx: FlowContext, flows: list[Flow], dim: int) -> HeadAxis:
    """``cat((-x2, x1), dim=-1)`` of heads along the dims of each head: each head's channels, part
    after part."""
    parts = [f for f in flows if isinstance(f, HeadAxis)]
    if len(parts) != len(flows):
        raise PruneError("torch.cat of attention heads with other tensors")
    first = parts[0]
    if first.inner_dim is None or any((p.head_dim, p.inner_dim, p.ndim, len(p.heads)) != (first.head_dim, first.inner_dim, first.ndim, len(first.heads)) for p in parts):
        raise PruneError("torch.cat of attention heads laid out differently")
    if dim % first.ndim != first.inner_dim % first.ndim:
        raise PruneError("torch.cat of attention heads along a dim other than the dims of a head")
    return HeadAxis(first.head_dim, first.inner_dim, tuple(tuple(i for p in parts for i in p.heads[h]) for h in range(len(first.heads))), first.ndim)


def head_unsqueeze(ctx: FlowContext, heads: HeadAxis, dim: object) -> HeadAxis:
    """``k[:, :, None]`` / ``k.unsqueeze(2)``: a new dim of size 1 among the heads' dims."""
    if not isinstance(dim, int):
        raise PruneError("unsqueeze of attention heads at a computed dim")
    ndim = heads.ndim + 1
    position = dim % ndim

    def moved(d: int) -> int:
        old = d % heads.ndim
        return (old + 1 if position <= old else old) - ndim

    return HeadAxis(moved(heads.head_dim), None if heads.inner_dim is None else moved(heads.inner_dim), heads.heads, ndim)


def head_expand(ctx: FlowContext, heads: HeadAxis) -> HeadAxis | None:
    """``expand`` of heads along a dim of size 1 that is neither the head dim nor a dim of a head
    (repeat_kv's ``expand(B, KV, n_rep, T, D)``): the heads stay; a head count written among
    the sizes is recorded. None if the heads' own dims are expanded (the caller goes on)."""
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or len(out_shape) != heads.ndim:
        return None
    head = heads.head_dim % heads.ndim
    own = {head} if heads.inner_dim is None else {head, heads.inner_dim % heads.ndim}
    if any(in_shape[d] != out_shape[d] for d in own):
        return None
    if ctx.node.target == "expand":
        sizes = size_args(ctx.node)
        if len(sizes) != len(out_shape):
            raise PruneError("an expand of attention heads with sizes fprune cannot read")
        count = sizes[head]
        if count != -1:
            if isinstance(count, bool) or not isinstance(count, int) or count != len(heads.heads):
                raise PruneError("an expand of attention heads whose head count fprune cannot read; write -1 there")
            ctx.literal(head, count, heads, 1)
    return heads


def repeat_view(
    ctx: FlowContext, heads: HeadAxis, in_shape: tuple[int, ...], out_shape: tuple[int, ...], sizes: list[object]
) -> HeadAxis | None:
    """``reshape(B, KV * n_rep, T, D)`` of ``(B, KV, n_rep, T, D)``: the head dim merged with the
    repeat dim after it; each key / value head now serves `n_rep` heads in a row (as
    ``repeat_interleave(n_rep, dim=1)``). None for any other view."""
    if heads.inner_dim is None or len(in_shape) != heads.ndim or len(out_shape) != heads.ndim - 1:
        return None
    head = heads.head_dim % heads.ndim
    if head + 1 >= heads.ndim or heads.inner_dim % heads.ndim == head + 1:
        return None
    n_rep = in_shape[head + 1]
    if out_shape != in_shape[:head] + (in_shape[head] * n_rep,) + in_shape[head + 2 :] or len(sizes) != len(out_shape):
        return None
    inner = heads.inner_dim % heads.ndim
    ndim = heads.ndim - 1
    out = HeadAxis(head - ndim, (inner - 1 if inner > head else inner) - ndim, tuple(h for h in heads.heads for _ in range(n_rep)), ndim)
    size = sizes[head]
    if size != -1:
        if isinstance(size, bool) or not isinstance(size, int) or size != len(out.heads):
            raise PruneError("a view of repeated attention heads whose head count fprune cannot read; write -1 there")
        ctx.literal(head, size, heads, n_rep)
    return out



# --- an RMSNorm over the dims of each head (Qwen3's q_norm / k_norm) -----------------------------
#
# ``x * rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w`` on the heads (B, T, H, D): the statistic
# is per head, over that head's own dims, which are never pruned (heads go whole), so each kept
# head computes what it did; `w` (one entry per dim of a head) is shared by all heads and stays.
# A removed head is zero in the masked model: its mean of squares is 0, rsqrt(0 + eps) finite
# (eps > 0), and the product 0 again. The mean gives "one value per head": a HeadAxis whose
# inner_dim is None, with size 1 on the heads' inner dim.


def head_pow(ctx: FlowContext, heads: HeadAxis, exponent: object) -> HeadAxis:
    """``q.pow(p)`` on the dims of each head, a number ``p > 0``: elementwise, 0 stays 0."""
    if heads.inner_dim is None:
        raise PruneError(f"`{ctx.node.name}` raises per-head values to a power")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
        raise PruneError(f"`{ctx.node.name}` raises attention heads to the power {exponent!r}: only a number > 0 keeps 0 at 0")
    return heads


def head_statistic(ctx: FlowContext, heads: HeadAxis) -> HeadAxis:
    """``q.mean(-1, keepdim=True)`` over the dims of each head: one value per head (0 for a removed
    one). Any other reduction of heads blocks."""
    node = ctx.node
    dims = ctx.arg(1, "dim")
    dim_list = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (list, tuple)) else None
    if (
        node.target not in (torch.mean, "mean") or heads.inner_dim is None or dim_list is None or len(dim_list) != 1
        or not isinstance(dim_list[0], int) or dim_list[0] % heads.ndim != heads.inner_dim % heads.ndim
        or ctx.arg(2, "keepdim", False) is not True or ctx.arg(3, "dtype") is not None
    ):  # fmt: skip
        raise PruneError(f"`{node.name}` reduces attention heads other than by a mean over the dims of each head (keepdim)")
    return HeadAxis(heads.head_dim, None, heads.heads, heads.ndim)


def head_rsqrt_rule(ctx: FlowContext) -> Flow:
    """``rsqrt(m + eps)`` of a per-head mean of squares ``m`` (:func:`head_statistic` of
    ``q.pow(2)``) with a number ``eps > 0``: finite for a removed head. rsqrt of anything else
    that holds channels blocks (rsqrt(0) is inf)."""
    flow = ctx.input(0)
    if flow is None:
        return None
    node, arg = ctx.node, ctx.node.args[0] if ctx.node.args else None
    if isinstance(flow, HeadAxis) and flow.inner_dim is None and len(node.args) == 1 and not node.kwargs and isinstance(arg, fx.Node):
        if arg.target in (operator.add, torch.add, "add") and len(arg.args) == 2 and not arg.kwargs:
            a, b = arg.args
            mean, eps = (a, b) if isinstance(a, fx.Node) else (b, a)
            if (
                isinstance(mean, fx.Node) and mean.target in (torch.mean, "mean") and isinstance(ctx.flow(mean), HeadAxis)
                and isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0
                and isinstance(square := mean.args[0], fx.Node) and square.target in (torch.pow, operator.pow, "pow")
                and square.args[1:] == (2,)
            ):  # fmt: skip
                return flow
    raise PruneError(f"`{node.name}` takes rsqrt of channels (rsqrt(0) is inf); only an RMSNorm's rsqrt(mean of squares + eps > 0) of each head is followed")


def head_scale(ctx: FlowContext, a: HeadAxis, b: HeadAxis) -> HeadAxis | None:
    """Heads times one value per head (a product; the per-head tensor of size 1 on the heads'
    inner dim, from the same heads, position by position): the heads. None for any other pair
    (the caller goes on)."""
    heads, per_head = (a, b) if b.inner_dim is None else (b, a)
    if ctx.node.target not in (operator.mul, torch.mul, "mul") or heads.inner_dim is None or per_head.inner_dim is not None:
        return None
    if (heads.head_dim, heads.ndim) != (per_head.head_dim, per_head.ndim) or heads.heads != per_head.heads:
        return None
    other = ctx.node.args[1] if heads is a else ctx.node.args[0]
    shape = ctx.shape(other)
    if shape is None or len(shape) != heads.ndim or shape[heads.inner_dim] != 1:
        return None
    return heads
