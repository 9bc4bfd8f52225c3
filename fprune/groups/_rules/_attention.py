"""Flow rules of attention: heads (``HeadAxis``), scaled-dot-product attention, matmul,
softmax, ``repeat_interleave`` (GQA) and ``nn.MultiheadAttention``."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, HeadAxis
from .._sizes import size_args


def repeat_interleave_rule(ctx: FlowContext) -> Flow:
    """Grouped-query attention: each key / value head serves `repeats` query heads."""
    flow = ctx.input(0)
    if flow is None:
        return None
    repeats, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if not isinstance(flow, HeadAxis) or not isinstance(repeats, int) or not isinstance(dim, int):
        raise PruneError("repeat_interleave is followed only over attention heads, by a constant count")
    if dim % flow.ndim != flow.head_dim % flow.ndim:
        raise PruneError("repeat_interleave over a dim other than the heads")
    return HeadAxis(flow.head_dim, flow.inner_dim, tuple(h for h in flow.heads for _ in range(repeats)), flow.ndim)


def expand_heads(ctx: FlowContext) -> Flow:
    """Multi-query attention: ``k.expand(b, heads, t, head_dim)`` (or ``expand_as(q)``) of one key /
    value head serves every query head, as ``repeat_interleave(heads, dim=1)`` does. The head
    count written in the sizes is recorded (it counts the one head's repeats)."""
    flow = ctx.input(0)
    assert isinstance(flow, HeadAxis)
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if len(flow.heads) != 1 or flow.inner_dim is None or in_shape is None or out_shape is None or len(in_shape) != len(out_shape):
        raise PruneError(
            "an expand of attention heads is followed only for one key / value head (multi-query attention), "
            "on a tensor of known shape (pass example_inputs)"
        )
    head, inner = flow.head_dim % flow.ndim, flow.inner_dim % flow.ndim
    if in_shape[head] != 1 or in_shape[inner] != out_shape[inner]:
        raise PruneError("an expand of attention heads along the dims of a head")
    count = out_shape[head]
    out = HeadAxis(flow.head_dim, flow.inner_dim, flow.heads * count, flow.ndim)
    if ctx.node.target == "expand":
        sizes = size_args(ctx.node)
        if len(sizes) != len(out_shape) or sizes[inner] not in (-1, out_shape[inner]):
            raise PruneError("an expand of attention heads with sizes fprune cannot read")
        _head_count(ctx, sizes[head], head, count, out)
    return out


def repeat_heads_rule(ctx: FlowContext) -> Flow:
    """``k.repeat(1, heads, 1, 1)`` of one key / value head (multi-query attention): as expand."""
    flow = ctx.input(0)
    if flow is None:
        return None
    if not isinstance(flow, HeadAxis) or len(flow.heads) != 1 or flow.inner_dim is None:
        raise PruneError("repeat of channels is followed only for one key / value head (multi-query attention)")
    counts = size_args(ctx.node)
    head = flow.head_dim % flow.ndim
    if len(counts) != flow.ndim or any(c != 1 for i, c in enumerate(counts) if i != head) or not isinstance(counts[head], int):
        raise PruneError("a repeat of attention heads other than of the head dim, by a count written in the code")
    count = counts[head]
    assert isinstance(count, int)
    out = HeadAxis(flow.head_dim, flow.inner_dim, flow.heads * count, flow.ndim)
    _head_count(ctx, count, head, count, out)
    return out


def _head_count(ctx: FlowContext, size: object, index: int, value: int, heads: HeadAxis) -> None:
    """Size argument `index` of this node counts the heads `heads`: a number is recorded."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise PruneError("a head count computed in forward; write it with a module attribute")
    if size != value:
        raise PruneError(f"a head count {size} where {value} was expected")
    ctx.literal(index, value, heads, 1)


MQA_REASON = (
    "multi-query attention: its one key/value head serves every query head, so heads can only be removed "
    "all together; the heads stay, other groups prune"
)


def _one_kv_head(ctx: FlowContext, *parts: HeadAxis) -> None:
    """All the heads of `parts` read one key / value head: they are one unit, which is blocked
    with the reason (removing a query head alone is not exact: its scores become uniform, its
    output the mean of the values, and the output projection reads it)."""
    for part in parts:
        ctx.block(part, MQA_REASON)


def _heads(flow: Flow, what: str) -> HeadAxis:
    if not isinstance(flow, HeadAxis) or flow.head_dim != -3 or flow.inner_dim not in (-1, -2, None):
        raise PruneError(f"attention {what} must be split into heads on dim -3 ([batch, heads, tokens, head_dim])")
    return flow


def _tie_heads(ctx: FlowContext, *parts: HeadAxis) -> None:
    counts = {len(p.heads) for p in parts}
    if len(counts) != 1:
        raise PruneError(f"attention inputs with different head counts {sorted(counts)}")
    for i in range(counts.pop()):
        ctx.tie([c for p in parts for c in p.heads[i]])


def sdpa_rule(ctx: FlowContext) -> Flow:
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    if q is None and k is None and v is None:
        return None
    qh, kh, vh = _heads(q, "queries"), _heads(k, "keys"), _heads(v, "values")
    if qh.inner_dim != -1 or kh.inner_dim != -1 or vh.inner_dim != -1:
        raise PruneError("scaled_dot_product_attention of heads not laid out [batch, heads, tokens, head_dim]")
    for name in ("attn_mask",):
        mask = ctx.node.kwargs.get(name, ctx.node.args[3] if len(ctx.node.args) > 3 else None)
        if ctx.flow(mask) is not None:
            raise PruneError("an attention mask computed from the channels")
    if len(kh.heads) != len(qh.heads):  # enable_gqa: query head i reads key head i // ratio
        if not ctx.node.kwargs.get("enable_gqa") or len(qh.heads) % len(kh.heads):
            raise PruneError("queries and keys with different head counts")
        ratio = len(qh.heads) // len(kh.heads)
        kh = HeadAxis(kh.head_dim, kh.inner_dim, tuple(h for h in kh.heads for _ in range(ratio)), kh.ndim)
        vh = HeadAxis(vh.head_dim, vh.inner_dim, tuple(h for h in vh.heads for _ in range(ratio)), vh.ndim)
    if len(qh.heads) > 1 and len({h for h in kh.heads}) == 1:  # k.expand / repeat of one head
        _one_kv_head(ctx, qh, kh, vh)
    _tie_heads(ctx, qh, kh, vh)
    return vh


def matmul_rule(ctx: FlowContext) -> Flow:
    """Hand-written attention: ``q @ k.transpose(-2, -1)``, then ``scores @ v``."""
    a, b = ctx.input(0), ctx.input(1)
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise PruneError("a matmul of channels with an untracked tensor")
    ah, bh = _heads(a, "scores or queries"), _heads(b, "keys or values")
    if len(ah.heads) != len(bh.heads) and 1 in (len(ah.heads), len(bh.heads)):  # one key / value head broadcast
        count = max(len(ah.heads), len(bh.heads))
        ah, bh = (replace(h, heads=h.heads * count) if len(h.heads) == 1 else h for h in (ah, bh))
    if len(ah.heads) > 1 and len(set(bh.heads)) == 1:
        _one_kv_head(ctx, ah, bh)
    if ah.inner_dim == -1 and bh.inner_dim == -2:  # q @ k^T: the head dims are summed away
        _tie_heads(ctx, ah, bh)
        return HeadAxis(-3, None, tuple(x + y for x, y in zip(ah.heads, bh.heads)), ah.ndim)
    if ah.inner_dim is None and bh.inner_dim == -1:  # scores @ v
        _tie_heads(ctx, ah, bh)
        return bh
    raise PruneError("a matmul of attention heads that is neither q @ k^T nor scores @ v")


def softmax_rule(ctx: FlowContext) -> Flow:
    flow = ctx.input(0)
    dim = ctx.arg(1, "dim")
    if flow is None:
        return None
    if not isinstance(dim, int):
        raise PruneError("a softmax over a computed dim")
    if isinstance(flow, HeadAxis) and flow.inner_dim is None and dim % flow.ndim != flow.head_dim % flow.ndim:
        return flow
    raise PruneError("a softmax across channels: removing some changes the others")


def softmax_module_rule(ctx: FlowContext) -> Flow:
    """``nn.Softmax(dim=-1)`` (timm's Swin ``self.softmax``): as ``F.softmax`` over its ``dim``."""
    flow = ctx.input(0)
    module = ctx.module
    assert isinstance(module, nn.Softmax)
    if flow is None:
        return None
    if not isinstance(flow, HeadAxis) or module.dim is None or flow.inner_dim is not None:
        raise PruneError(f"`{ctx.module_fqn}` (nn.Softmax) is followed only over attention scores, along a dim given")
    if module.dim % flow.ndim == flow.head_dim % flow.ndim:
        raise PruneError("a softmax across channels: removing some changes the others")
    return flow


def multihead_attention_rule(ctx: FlowContext) -> Flow:
    """nn.MultiheadAttention: whole heads (rows of the packed ``in_proj_weight`` with the
    matching ``out_proj`` columns), its input width (``in_proj_weight`` columns) and its output
    width (``out_proj`` rows). The pruned copy is a HeadPrunedMultiheadAttention."""
    module = ctx.module
    assert isinstance(module, nn.MultiheadAttention)
    inputs = [ctx.input(i) if i < len(ctx.node.args) else ctx.flow(ctx.node.kwargs.get(name)) for i, name in enumerate(("query", "key", "value"))]
    reason = ""
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        reason = "nn.MultiheadAttention with kdim / vdim, bias_k / bias_v or add_zero_attn is not supported"
    elif any(ctx.flow(v) is not None for k, v in ctx.node.kwargs.items() if k not in ("query", "key", "value")):
        reason = "an attention mask computed from the channels"
    axes = [f for f in inputs if f is not None]
    tracked: Axis | None = None
    if not reason and axes:
        if len(axes) != 3 or not all(isinstance(a, Axis) and a.dim == -1 and a.inner == 1 and a.outer == 1 for a in axes):
            reason = "nn.MultiheadAttention reads query, key and value with one in_proj_weight: they must carry the same channels"
        else:
            first = axes[0]
            assert isinstance(first, Axis)
            for other in axes[1:]:
                assert isinstance(other, Axis)
                if ctx.merge(first, other) is None:
                    reason = "query, key and value of nn.MultiheadAttention do not line up"
            tracked = first
    if reason:
        for flow in inputs:
            ctx.block(flow, reason)
        out = ctx.produce("out_proj.weight", 0, module.embed_dim)
        ctx.block(out, reason)
        return (out, None)
    if tracked is not None:
        ctx.consume("in_proj_weight", 1, tracked)
    inner = module.num_heads * module.head_dim
    rows = ctx.produce("in_proj_weight", 0, 3 * inner)
    if module.in_proj_bias is not None:
        ctx.carry("in_proj_bias", 0, Axis(0, rows.ids))
    size = module.head_dim
    for head in range(module.num_heads):
        ctx.tie([rows.ids[part * inner + head * size + d] for part in range(3) for d in range(size)])
    ctx.consume("out_proj.weight", 1, Axis(-1, rows.ids[2 * inner :]))
    out = ctx.produce("out_proj.weight", 0, module.embed_dim)
    if module.out_proj.bias is not None:
        ctx.carry("out_proj.bias", 0, Axis(0, out.ids))
    return (out, None)
