"""The default flow rules: how channels pass through each op ``channel_groups`` understands."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ._errors import PruneError
from ._groups import Axis, Flow, FlowContext, FlowRule, HeadAxis, RuleKey, flatten_axis, size_args
from ._patterns import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES

__all__ = ["default_flow_rules"]


def _axis(ctx: FlowContext, index: int = 0) -> Axis | None:
    flow = ctx.input(index)
    if flow is None or isinstance(flow, Axis):
        return flow
    if isinstance(flow, HeadAxis):
        raise PruneError(f"attention heads reach `{ctx.node.name}`, which does not follow them")
    raise PruneError("expects one tensor input, got a tuple")


# --- attention: heads ----------------------------------------------------------------------------


def _view(ctx: FlowContext) -> Flow:
    """view / reshape: split the last (channel) dim into heads, merge heads back, or keep it."""
    flow = ctx.input(0)
    if flow is None:
        return None
    in_shape, out_shape = ctx.shape(ctx.node.args[0]), ctx.shape()
    if in_shape is None or out_shape is None:
        raise PruneError("a view / reshape of channels needs shapes; pass example_inputs")
    sizes = size_args(ctx.node)
    if isinstance(flow, Axis):
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


def _channel_count(ctx: FlowContext, sizes: list[object], ids: tuple[int, ...]) -> None:
    """A view / reshape keeps the channels `ids` on its last dim: its last size must follow pruning.

    -1 does, and so does a size read from the shape of a tensor with the same number of channels
    (``x.shape[-1]``, or the ``C`` of ``B, N, C = y.shape``): those channels are then pruned
    alike (the same positions kept), so the read stays equal to the kept count. A number
    written in the code does not (the pruned model would fail, or silently regroup values), nor
    does a size computed from anything else: either blocks.
    """
    size = sizes[-1] if sizes else None
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


def _transpose(ctx: FlowContext) -> Flow:
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


def _permute(ctx: FlowContext) -> Flow:
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


def _repeat_interleave(ctx: FlowContext) -> Flow:
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


def _sdpa(ctx: FlowContext) -> Flow:
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
    _tie_heads(ctx, qh, kh, vh)
    return vh


def _matmul(ctx: FlowContext) -> Flow:
    """Hand-written attention: ``q @ k.transpose(-2, -1)``, then ``scores @ v``."""
    a, b = ctx.input(0), ctx.input(1)
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise PruneError("a matmul of channels with an untracked tensor")
    ah, bh = _heads(a, "scores or queries"), _heads(b, "keys or values")
    if ah.inner_dim == -1 and bh.inner_dim == -2:  # q @ k^T: the head dims are summed away
        _tie_heads(ctx, ah, bh)
        return HeadAxis(-3, None, tuple(x + y for x, y in zip(ah.heads, bh.heads)), ah.ndim)
    if ah.inner_dim is None and bh.inner_dim == -1:  # scores @ v
        _tie_heads(ctx, ah, bh)
        return bh
    raise PruneError("a matmul of attention heads that is neither q @ k^T nor scores @ v")


def _softmax(ctx: FlowContext) -> Flow:
    flow = ctx.input(0)
    dim = ctx.arg(1, "dim")
    if flow is None:
        return None
    if not isinstance(dim, int):
        raise PruneError("a softmax over a computed dim")
    if isinstance(flow, HeadAxis) and flow.inner_dim is None and dim % flow.ndim != flow.head_dim % flow.ndim:
        return flow
    raise PruneError("a softmax across channels: removing some changes the others")


def _linear(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Linear)
    axis = _axis(ctx)
    ndim = None
    if axis is not None and axis.inner == -1:  # a flatten of unknown trailing size: resolve it
        if module.in_features % len(axis.ids):
            raise PruneError(f"nn.Linear `{ctx.module_fqn}` has in_features={module.in_features}, not a multiple of the {len(axis.ids)} flattened channels")
        axis = Axis(axis.dim, axis.ids, module.in_features // len(axis.ids), axis.outer, axis.ndim)
    if axis is not None:
        if axis.dim != -1:
            raise PruneError(f"nn.Linear `{ctx.module_fqn}` reads the last dim, but the channels are on dim {axis.dim}")
        if axis.width != module.in_features:
            raise PruneError(f"nn.Linear `{ctx.module_fqn}` has in_features={module.in_features}, but {axis.width} channel positions reach it")
        ctx.consume("weight", 1, axis)
        ndim = axis.ndim
    out = ctx.produce("weight", 0, module.out_features, ndim=ndim)
    if module.bias is not None:
        ctx.carry("bias", 0, Axis(0, out.ids))
    return out


def _conv(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, _ConvNd)
    spatial = len(module.kernel_size)
    channel_dim = -(spatial + 1)
    axis = _axis(ctx)
    ndim = axis.ndim if axis is not None and axis.ndim is not None else spatial + 2
    if module.transposed:
        # weight: [in, out / groups, *k]
        if module.groups != 1:
            if axis is not None:
                ctx.block(axis, f"grouped ConvTranspose `{ctx.module_fqn}` (groups={module.groups}) is not supported")
            return None
        if axis is not None:
            _check_conv_input(ctx, axis, channel_dim, module.in_channels)
            ctx.consume("weight", 0, axis)
        out = ctx.produce("weight", 1, module.out_channels, ndim=ndim, out_dim=channel_dim)
    elif module.groups == 1:
        if axis is not None:
            _check_conv_input(ctx, axis, channel_dim, module.in_channels)
            ctx.consume("weight", 1, axis)
        out = ctx.produce("weight", 0, module.out_channels, ndim=ndim, out_dim=channel_dim)
    elif module.groups == module.in_channels == module.out_channels and axis is not None:
        # depthwise: output channel c reads only input channel c; its filter goes with it
        _check_conv_input(ctx, axis, channel_dim, module.in_channels)
        out = Axis(channel_dim, axis.ids, ndim=ndim)
        ctx.carry("weight", 0, Axis(0, axis.ids))
        if module.bias is not None:
            ctx.carry("bias", 0, Axis(0, axis.ids))
        return out
    else:
        reason = (
            f"grouped conv `{ctx.module_fqn}` (groups={module.groups}, {module.in_channels} -> "
            f"{module.out_channels} channels) mixes channels within groups of fixed size"
        )
        if axis is not None:
            ctx.block(axis, reason)
        out = ctx.produce("weight", 0, module.out_channels, ndim=ndim, out_dim=channel_dim)
        ctx.block(out, reason)
        return out
    if module.bias is not None:
        ctx.carry("bias", 0, Axis(0, out.ids))
    return out


def _check_conv_input(ctx: FlowContext, axis: Axis, channel_dim: int, in_channels: int) -> None:
    if axis.dim != channel_dim or axis.inner != 1 or axis.outer != 1:
        raise PruneError(f"`{ctx.module_fqn}` reads channels on dim {channel_dim}, but they are on dim {axis.dim}")
    if len(axis.ids) != in_channels:
        raise PruneError(f"`{ctx.module_fqn}` has in_channels={in_channels}, but {len(axis.ids)} channels reach it")


def _embedding(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Embedding)
    return ctx.produce("weight", 1, module.embedding_dim)


def _batchnorm(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, _BatchNorm)
    axis = _axis(ctx)
    if axis is None:
        return None
    if axis.inner != 1 or axis.outer != 1 or len(axis.ids) != module.num_features:
        raise PruneError(f"BatchNorm `{ctx.module_fqn}` has num_features={module.num_features}, which the channels reaching it do not match")
    expected = {-1, -2} if isinstance(module, nn.BatchNorm1d) else {-3 if isinstance(module, nn.BatchNorm2d) else -4}
    if axis.dim not in expected or not _on_dim_1(ctx, axis):
        raise PruneError(f"BatchNorm `{ctx.module_fqn}` normalizes dim 1, but the channels are on dim {axis.dim}")
    if not module.affine:
        raise PruneError(
            f"BatchNorm `{ctx.module_fqn}` has no affine parameters: removed channels would leave it "
            "as a non-zero constant (-mean / std) that the pruned model cannot reproduce"
        )
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            ctx.carry(name, 0, Axis(0, axis.ids))
    return axis


def _on_dim_1(ctx: FlowContext, axis: Axis) -> bool:
    """False if the channels are known not to be on dim 1 of the input, which BatchNorm and
    PReLU act on (a Linear's output on tokens, ``[batch, tokens, features]``, whose token count
    happens to equal the feature count). Unknown ranks pass: a Linear's output is then taken
    to be ``[batch, features]``."""
    ndim = axis.ndim
    if ndim is None:
        shape = ctx.shape(ctx.node.args[0])
        ndim = len(shape) if shape is not None else None
    return ndim is None or axis.dim % ndim == 1


def _prelu(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.PReLU)
    axis = _axis(ctx)
    if axis is not None and module.num_parameters > 1:
        if len(axis.ids) != module.num_parameters or axis.dim not in (-1, -3, -2, -4) or axis.inner != 1:
            raise PruneError(f"PReLU `{ctx.module_fqn}` has {module.num_parameters} parameters, which the channels do not match")
        if not _on_dim_1(ctx, axis):
            raise PruneError(f"PReLU `{ctx.module_fqn}` scales dim 1, but the channels are on dim {axis.dim}")
        ctx.carry("weight", 0, Axis(0, axis.ids))
    return axis


def _normalization(ctx: FlowContext) -> Flow:
    axis = _axis(ctx)
    if axis is not None:
        ctx.block(
            axis,
            f"{type(ctx.module).__name__ if ctx.module is not None else 'normalization'} normalizes across "
            "the channels: removing some changes every other channel's output, so the pruned model "
            "could not match the masked one",
        )
    return None


def _zero_preserving(apply: Callable[[Tensor], Tensor], what: str) -> None:
    with torch.no_grad():
        value = apply(torch.zeros(1, 1, 1, 1))
    if bool((value != 0).any()):
        raise PruneError(
            f"{what} maps 0 to {float(value.reshape(-1)[0]):.4g}: removed channels would still feed "
            "the next layers a non-zero value; chain patterns (match_patterns) fold such constants"
        )


def _stateless_kind(module: nn.Module) -> tuple[object, ...] | None:
    """(class, public attributes) of a module with no tensors, children or hooks of its own:
    two such modules of one kind compute the same function. None for any other module."""
    if module._parameters or module._buffers or module._modules or module._forward_hooks or module._forward_pre_hooks:
        return None
    attributes = tuple(sorted((k, v) for k, v in vars(module).items() if not k.startswith("_")))
    try:
        hash(attributes)
    except TypeError:
        return None
    return (type(module), attributes)


def _elementwise_module(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert module is not None
    axis = ctx.input(0)
    if axis is not None:
        kind = _stateless_kind(module)
        checked = ctx._analysis.checked  # a deep MLP's 512 ReLUs are run on zeros once, not 512 times
        if kind is not None and ("zero-preserving", kind) in checked:
            return axis
        if any(True for _ in module.parameters()) and not isinstance(module, nn.PReLU):
            raise PruneError(f"`{ctx.module_fqn}` has parameters that are not per-channel")
        _zero_preserving(module, f"`{ctx.module_fqn}` ({type(module).__name__})")
        if kind is not None:
            checked.add(("zero-preserving", kind))
    return axis


def _elementwise_call(ctx: FlowContext) -> Flow:
    axis = ctx.input(0)
    if axis is not None:
        target = ctx.node.target
        rest = ctx.node.args[1:]
        kwargs = dict(ctx.node.kwargs)
        if any(isinstance(a, torch.fx.Node) for a in list(rest) + list(kwargs.values())):
            raise PruneError(f"{ctx.node.name} takes other tensors as arguments")
        if isinstance(target, str):
            _zero_preserving(lambda x: cast(Tensor, getattr(x, target)(*rest, **kwargs)), f"x.{target}()")
        else:
            assert callable(target)
            _zero_preserving(lambda x: cast(Tensor, target(x, *rest, **kwargs)), getattr(target, "__name__", str(target)))
    return axis


def _keep(ctx: FlowContext) -> Flow:
    """Ops that keep every channel where it is (pools, dropout, identity, contiguous)."""
    return ctx.input(0)


def _merge_elementwise(ctx: FlowContext) -> Flow:
    """add / sub / mul of two tensors, or of a tensor and a constant or a model tensor."""
    a, b = ctx.node.args[0], ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("other")
    fa, fb = ctx.flow(a), ctx.flow(b)
    if isinstance(fa, HeadAxis) or isinstance(fb, HeadAxis):
        return _merge_heads(ctx, a, b, fa, fb)
    if fa is not None and not isinstance(fa, Axis) or fb is not None and not isinstance(fb, Axis):
        raise PruneError("elementwise op on tuples")
    if isinstance(fa, Axis) and isinstance(fb, Axis):
        merged = ctx.merge(fa, fb)
        if merged is None:
            raise PruneError(f"`{ctx.node.name}` combines tensors whose channels do not line up")
        return merged
    axis = fa if isinstance(fa, Axis) else fb
    other = b if isinstance(fa, Axis) else a
    if axis is None:
        return None
    if ctx.node.target in (operator.truediv, torch.div, "div") and other is a:
        raise PruneError(f"`{ctx.node.name}` divides by the channels")
    additive = ctx.node.target in _ADDITIVE
    attr = ctx.attr(other)
    if additive and attr is None and not (isinstance(other, (int, float)) and other == 0):
        raise PruneError(
            f"`{ctx.node.name}` adds a value to the channels: removed channels would pass it on to the "
            "next layers, which the pruned model could not reproduce"
        )
    if attr is not None:
        fqn, tensor = attr
        dim_in_tensor = tensor.dim() + axis.dim if -axis.dim <= tensor.dim() else None
        per_channel = dim_in_tensor is not None and tensor.shape[dim_in_tensor] == axis.width
        if additive and not (per_channel and isinstance(tensor, nn.Parameter)):
            # a value shared by all channels (or a buffer, which masked_parameters cannot
            # zero) would reach the next layers from the removed channels too
            what = "a buffer" if per_channel else "a value shared by every channel"
            raise PruneError(
                f"`{ctx.node.name}` adds `{fqn}`, {what}, to the channels: removed channels would pass it "
                "on to the next layers, which the pruned model could not reproduce"
            )
        if per_channel:
            assert dim_in_tensor is not None
            if axis.inner != 1 or axis.outer != 1:
                raise PruneError(f"`{fqn}` is added to flattened channels")
            ctx.carry("", dim_in_tensor, Axis(dim_in_tensor, axis.ids), fqn=fqn)
        elif dim_in_tensor is not None and tensor.shape[dim_in_tensor] != 1:
            raise PruneError(f"`{fqn}` does not broadcast over the channels")
    elif isinstance(other, torch.fx.Node):
        shape = ctx.shape(other)
        if shape is None or (-axis.dim <= len(shape) and shape[axis.dim] != 1):
            raise PruneError(f"`{ctx.node.name}` combines the channels with a tensor fprune does not track")
    return axis


_ADDITIVE = (operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub")


def _merge_heads(ctx: FlowContext, a: object, b: object, fa: Flow, fb: Flow) -> Flow:
    """Scores or heads scaled by a constant, or plus a mask that is the same for every head."""
    heads = fa if isinstance(fa, HeadAxis) else fb
    other, other_flow = (b, fb) if heads is fa else (a, fa)
    assert isinstance(heads, HeadAxis)
    if other_flow is not None:
        raise PruneError("an elementwise op of attention heads with other channels")
    if ctx.node.target in (operator.truediv, torch.div, "div") and other is a:
        raise PruneError("a division by attention heads")
    if ctx.node.target in _ADDITIVE and heads.inner_dim is not None and not (isinstance(other, (int, float)) and other == 0):
        raise PruneError("a value added to queries, keys or values: removed heads would not stay zero")
    if isinstance(other, torch.fx.Node):
        shape = ctx.shape(other)
        if shape is None or (len(shape) >= -heads.head_dim and shape[heads.head_dim] != 1):
            raise PruneError("an elementwise op of attention heads with a tensor that differs per head")
    return heads


def _cat(ctx: FlowContext) -> Flow:
    tensors = ctx.arg(0, "tensors")
    dim = ctx.arg(1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        raise PruneError("torch.cat with a computed list or dim")
    flows = [ctx.flow(t) for t in tensors]
    axes = [f for f in flows if isinstance(f, Axis)]
    if not axes:
        return None
    if len(axes) != len(flows):
        raise PruneError("torch.cat of tracked channels with untracked tensors")
    first = axes[0]
    ndim = next((a.ndim for a in axes if a.ndim is not None), None)
    if ndim is None:
        shape = ctx.shape()
        ndim = len(shape) if shape is not None else None
    cat_dim = dim if dim < 0 else (dim - ndim if ndim is not None else None)
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


def _split(ctx: FlowContext) -> Flow:
    axis = _axis(ctx)
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


def _getitem(ctx: FlowContext) -> Flow:
    source = ctx.input(0)
    index = ctx.node.args[1]
    if isinstance(source, tuple) and isinstance(index, int):
        return source[index] if -len(source) <= index < len(source) else None
    if source is None:
        return None
    raise PruneError(f"indexing a tensor ({index!r}) can drop or move its channels")


def _flatten(ctx: FlowContext) -> Flow:
    axis = _axis(ctx)
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


def _reduce_mean(ctx: FlowContext) -> Flow:
    axis = _axis(ctx)
    if axis is None:
        return None
    dims = ctx.arg(1, "dim")
    keepdim = ctx.arg(2, "keepdim", False)
    if axis.ndim is None:  # the rank from the example inputs' shapes
        shape = ctx.shape(ctx.node.args[0])
        if shape is not None:
            axis = Axis(axis.dim, axis.ids, axis.inner, axis.outer, len(shape))
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


def _lstm(ctx: FlowContext) -> Flow:
    """nn.LSTM: each layer's hidden units are channels, in all 4 gates at once.

    Producers: the layer's ``weight_ih`` and ``weight_hh`` rows (gate-major: unit j is rows
    j, H + j, 2H + j, 3H + j) with both biases; consumers: ``weight_hh`` columns and the next
    layer's ``weight_ih`` columns (or, for the last layer, whatever reads the output).
    """
    module = ctx.module
    assert isinstance(module, nn.LSTM)
    axis = _axis(ctx)
    reason = ""
    if module.bidirectional or module.proj_size:
        reason = "bidirectional LSTMs and LSTMs with proj_size are not supported yet"
    elif len(ctx.node.args) > 1 or ctx.node.kwargs:
        reason = "an LSTM called with an initial state: the state's units would have to be pruned too"
    elif axis is not None and (axis.dim != -1 or axis.inner != 1 or axis.outer != 1):
        reason = "the LSTM's input channels are not on the last dim"
    hidden = module.hidden_size
    layers: list[Axis] = []
    previous = axis
    for layer in range(module.num_layers):
        if previous is not None and not reason:
            ctx.consume(f"weight_ih_l{layer}", 1, previous)
        units = ctx.produce(f"weight_ih_l{layer}", 0, hidden, outer=4)
        gates = Axis(0, units.ids, outer=4)
        ctx.carry("", 0, gates, fqn=f"{ctx.module_fqn}.weight_hh_l{layer}")
        ctx.consume(f"weight_hh_l{layer}", 1, Axis(-1, units.ids))
        if module.bias:
            ctx.carry(f"bias_ih_l{layer}", 0, gates)
            ctx.carry(f"bias_hh_l{layer}", 0, gates)
        layers.append(Axis(-1, units.ids))
        previous = layers[-1]
    state_used = any(
        u.args[1] != 0 and any(v.op != "output" for v in u.users) for u in ctx.node.users if u.target is operator.getitem
    )
    if state_used:
        reason = reason or "the LSTM's (h, c) state is used by other ops; only returning it is supported"
    if reason:
        for units in layers:
            ctx.block(units, reason)
        if axis is not None:
            ctx.block(axis, reason)
    state = layers[-1] if module.num_layers == 1 else None
    return (layers[-1], (state, state))


def _multihead_attention(ctx: FlowContext) -> Flow:
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


def _metadata(ctx: FlowContext) -> Flow:
    """``x.shape`` / ``x.dtype`` / ``x.device``: no channels flow into metadata."""
    if ctx.node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return None
    raise PruneError(f"attribute {ctx.node.args[1]!r} of a tensor of channels")


def default_flow_rules() -> dict[RuleKey, FlowRule]:
    """A fresh dict of the flow rules fprune ships, by module class, function or method name.

    Extend it with rules for your own modules and pass it to :func:`channel_groups`.
    """
    rules: dict[RuleKey, FlowRule] = {
        nn.Linear: _linear,
        nn.Conv1d: _conv,
        nn.Conv2d: _conv,
        nn.Conv3d: _conv,
        nn.ConvTranspose1d: _conv,
        nn.ConvTranspose2d: _conv,
        nn.ConvTranspose3d: _conv,
        nn.Embedding: _embedding,
        _BatchNorm: _batchnorm,
        nn.PReLU: _prelu,
        nn.LayerNorm: _normalization,
        nn.GroupNorm: _normalization,
        nn.LocalResponseNorm: _normalization,
        nn.LSTM: _lstm,
        nn.MultiheadAttention: _multihead_attention,
        nn.Flatten: _flatten,
        torch.flatten: _flatten,
        "flatten": _flatten,
        operator.getitem: _getitem,
        torch.cat: _cat,
        torch.concat: _cat,
        torch.split: _split,
        torch.chunk: _split,
        "split": _split,
        "chunk": _split,
        torch.mean: _reduce_mean,
        "mean": _reduce_mean,
        "contiguous": _keep,
        "view": _view,
        "reshape": _view,
        torch.reshape: _view,
        "transpose": _transpose,
        torch.transpose: _transpose,
        "permute": _permute,
        torch.permute: _permute,
        "repeat_interleave": _repeat_interleave,
        torch.repeat_interleave: _repeat_interleave,
        F.scaled_dot_product_attention: _sdpa,
        operator.matmul: _matmul,
        torch.matmul: _matmul,
        "matmul": _matmul,
        F.softmax: _softmax,
        torch.softmax: _softmax,
        "softmax": _softmax,
        "size": lambda ctx: None,
        getattr: _metadata,
        "dim": lambda ctx: None,
    }
    for module in ACTIVATION_MODULES:
        if module is not nn.PReLU:
            assert isinstance(module, type)
            rules[module] = _elementwise_module
    for module in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.ReLU6, nn.Softsign):
        rules[module] = _keep if module is nn.Identity or "Dropout" in module.__name__ else _elementwise_module
    for function in ACTIVATION_FUNCTIONS + ACTIVATION_METHODS + ("relu_", "gelu", "silu"):
        rules[function] = _elementwise_call
    for pool in (
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
        F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
        F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    ):  # fmt: skip
        rules[pool] = _keep
    for merge in (operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub",
                  operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, torch.div, "div"):  # fmt: skip
        rules[merge] = _merge_elementwise
    return rules
