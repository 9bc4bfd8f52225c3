"""Flow rules of elementwise ops: activations (checked to keep zeros), dropout / identity,
and binary ops that merge their operands' channels (a residual add, a gate product)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._errors import PruneError
from ..._ops import (
    ADAPTIVE_POOL_FUNCTIONS,
    ADAPTIVE_POOL_MODULES,
    AVG_POOL_FUNCTIONS,
    AVG_POOL_MODULES,
    CAST_METHODS,
    DROPOUT_FUNCTIONS,
    DROPOUT_MODULES,
    MAX_POOL_FUNCTIONS,
    MAX_POOL_MODULES,
)
from .._flow import Axis, Flow, FlowContext, HeadAxis, handles_nonzero, tracks_constant
from .._sizes import size_args
from ._rotary import head_scale
from ._vit import per_head_table


class _NonZero(PruneError):
    """An elementwise op maps 0 to a non-zero value; `fact` says so in a few words."""

    def __init__(self, message: str, fact: str) -> None:
        super().__init__(message)
        self.fact = fact


def _zero_preserving(apply: Callable[[Tensor], Tensor], what: str) -> None:
    with torch.no_grad():
        value = apply(torch.zeros(1, 1, 1, 1))
    if bool((value != 0).any()):
        fact = f"{what} maps 0 to {float(value.reshape(-1)[0]):.4g}"
        raise _NonZero(
            f"{fact}: removed channels would still feed the next layers a non-zero value; chain patterns "
            "(match_patterns) fold such constants",
            fact,
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


def _nonzero_after(ctx: FlowContext, axis: Flow, error: _NonZero) -> Flow:
    """The output of an elementwise op with f(0) != 0: its removed channels carry a non-zero
    value (see ``Axis.nonzero``); only a plain channel axis can say so, anything else blocks."""
    if not isinstance(axis, Axis):
        raise error
    return replace(axis, nonzero=f"`{ctx.node.name}`: {error.fact}")


def _activation_output(
    ctx: FlowContext, axis: Flow, check: Callable[[], None], apply: Callable[[Tensor], Tensor] | None = None
) -> Flow:
    """The flow after an elementwise activation: `axis` itself if `check` finds f(0) = 0;
    marked non-zero if f(0) != 0 (or if its removed channels already carry a value c: they
    carry f(c) now). `apply` computes f where it is a fixed function (a stateless activation):
    the removed channels' constant follows it (see ``Axis.constant``); without it, unknown."""
    if isinstance(axis, Axis) and axis.nonzero:
        return constant_flow(axis, evaluate(apply, axis.constant))
    try:
        check()
    except _NonZero as error:
        out = _nonzero_after(ctx, axis, error)
        return constant_flow(out, evaluate(apply, 0.0)) if isinstance(out, Axis) else out
    return axis


def evaluate(apply: Callable[[Tensor], Tensor] | None, value: float | None) -> float | None:
    """``f(value)`` for an elementwise `apply`, computed in float64; None if either is unknown,
    or if f fails or gives no finite number."""
    if apply is None or value is None:
        return None
    try:
        with torch.no_grad():
            out = apply(torch.full((1, 1, 1, 1), value, dtype=torch.float64))
    except (RuntimeError, TypeError, ValueError):
        return None
    if not isinstance(out, Tensor) or out.numel() != 1:
        return None
    result = float(out.reshape(-1)[0])
    return result if math.isfinite(result) else None


def constant_flow(axis: Axis, value: float | None) -> Axis:
    """`axis` (whose removed channels carry a value) with that value now `value`: back to
    zero (``nonzero`` cleared) where it is exactly 0, else `value` (None: unknown)."""
    if value == 0.0:
        return replace(axis, nonzero="", constant=None)
    return replace(axis, constant=value)


@tracks_constant
@handles_nonzero
def elementwise_module_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert module is not None
    axis = ctx.input(0)
    if axis is None:
        return None
    if any(True for _ in module.parameters()) and not isinstance(module, nn.PReLU):
        raise PruneError(f"`{ctx.module_fqn}` has parameters that are not per-channel")
    kind = _stateless_kind(module)

    def check() -> None:
        _zero_preserving(module, f"`{ctx.module_fqn}` ({type(module).__name__})")

    apply = None if kind is None or isinstance(module, nn.RReLU) else module  # RReLU draws slopes in training
    return _activation_output(ctx, axis, check if kind is None else lambda: ctx.once(("zero-preserving", kind), check), apply)


@tracks_constant
@handles_nonzero
def elementwise_call_rule(ctx: FlowContext) -> Flow:
    axis = ctx.input(0)
    if axis is None:
        return None
    target = ctx.node.target
    rest = ctx.node.args[1:]
    kwargs = dict(ctx.node.kwargs)
    if any(isinstance(a, torch.fx.Node) for a in list(rest) + list(kwargs.values())):
        raise PruneError(f"{ctx.node.name} takes other tensors as arguments")

    def apply(x: Tensor) -> Tensor:
        if isinstance(target, str):
            return cast(Tensor, getattr(x, target)(*rest, **kwargs))
        assert callable(target)
        return cast(Tensor, target(x, *rest, **kwargs))

    def check() -> None:
        _zero_preserving(apply, f"x.{target}()" if isinstance(target, str) else getattr(target, "__name__", str(target)))

    return _activation_output(ctx, axis, check, None if target is F.rrelu else apply)  # rrelu may draw slopes


def neg_rule(ctx: FlowContext) -> Flow:
    """``-x`` (rotate_half): zeros stay zero; heads and channels keep their place."""
    flow = ctx.input(0)
    if flow is None or isinstance(flow, HeadAxis):
        return flow
    return elementwise_call_rule(ctx)


@tracks_constant
@handles_nonzero
def keep_rule(ctx: FlowContext) -> Flow:
    """Ops that keep every channel where it is (pools, dropout, identity, contiguous)."""
    flow = ctx.input(0)
    if isinstance(flow, Axis) and flow.nonzero and flow.constant is not None and not keeps_constant(ctx):
        return replace(flow, constant=None)  # removed channels may now differ between positions
    return flow


_SAME_VALUE_METHODS = ("contiguous", "clone", "detach", "float", "double")


def keeps_constant(ctx: FlowContext) -> bool:
    """Whether the op of a :func:`keep_rule` node keeps a constant that fills a channel at
    every position (the removed channels' value after ``f(0) != 0``) the same at every
    position: identity, max and adaptive pools, average pools without zero padding counted
    in, dropout that is off. Anything else (a zero-padded average, dropout in training, a
    cast) makes it unknown, and the consumer that would fold it blocks."""
    node, module = ctx.node, ctx.module
    if module is not None:
        if isinstance(module, (nn.Identity, *MAX_POOL_MODULES, *ADAPTIVE_POOL_MODULES)):
            return True
        if isinstance(module, DROPOUT_MODULES):
            return not module.training or bool(module.p == 0)
        if isinstance(module, AVG_POOL_MODULES):
            pads: object = module.padding
            unpadded = not module.count_include_pad or not any(pads if isinstance(pads, tuple) else (pads,))
            return getattr(module, "divisor_override", None) is None and unpadded
        return False
    target = node.target
    if isinstance(target, str):
        return target in _SAME_VALUE_METHODS
    if target in MAX_POOL_FUNCTIONS or target in ADAPTIVE_POOL_FUNCTIONS:
        return True
    if target in DROPOUT_FUNCTIONS:
        return ctx.arg(2, "training", True) is False or ctx.arg(1, "p", 0.5) == 0
    if target in AVG_POOL_FUNCTIONS:
        given = ctx.arg(3, "padding", 0)
        padded = any(given) if isinstance(given, (tuple, list)) else given != 0
        return ctx.arg(6, "divisor_override") is None and (not padded or ctx.arg(5, "count_include_pad", True) is False)
    return False


@tracks_constant
@handles_nonzero
def merge_elementwise_rule(ctx: FlowContext) -> Flow:
    """add / sub / mul of two tensors, or of a tensor and a constant or a model tensor."""
    out = _merge_elementwise(ctx)
    if not isinstance(out, Axis) or not out.nonzero:
        return out
    return constant_flow(out, _merged_constant(ctx))


def _merged_constant(ctx: FlowContext) -> float | None:
    """The value the removed channels hold after an add / sub / mul / div that leaves them
    non-zero: the op on the operands' values (a channel axis gives its removed channels' value,
    0 if they are zero; a number itself). 0 after a product with a per-channel parameter
    (layer scale: masked_parameters zeroes its removed entries); None where an operand's
    value is unknown or differs between positions (a buffer, a tensor fprune does not track)."""
    target = ctx.node.target
    additive = target in _ADDITIVE
    if not additive and any(parameter for _, parameter in ctx.carried):
        return 0.0
    args = ctx.node.args
    a, b = args[0], args[1] if len(args) > 1 else ctx.node.kwargs.get("other")
    alpha = ctx.node.kwargs.get("alpha", 1)
    # a per-channel parameter added (a carrier: masked_parameters zeroes its removed entries) adds 0 there
    zeroed = 0.0 if additive and ctx.carried and all(parameter for _, parameter in ctx.carried) else None
    va, vb = (_operand_value(ctx, v, zeroed) for v in (a, b))
    if va is None or vb is None or len(args) > 2 or not _is_number(alpha):
        return None
    assert isinstance(alpha, (int, float))
    if additive:
        return va - alpha * vb if target in (operator.sub, torch.sub, "sub") else va + alpha * vb
    if target in _DIVISIONS:
        return va / vb if vb != 0 else None
    return va * vb


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _operand_value(ctx: FlowContext, value: object, carried: float | None) -> float | None:
    """An operand's value at the removed channels: `carried` for a model tensor that goes with
    the channels (None: unknown)."""
    flow = ctx.flow(value)
    if isinstance(flow, Axis):
        return flow.removed_value
    if flow is None and _is_number(value):
        assert isinstance(value, (int, float))
        return float(value)
    return carried if isinstance(value, torch.fx.Node) else None


def _merge_elementwise(ctx: FlowContext) -> Flow:
    a, b = ctx.node.args[0], ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("other")
    fa, fb = ctx.flow(a), ctx.flow(b)
    if isinstance(fa, HeadAxis) or isinstance(fb, HeadAxis):
        if any(isinstance(f, Axis) and f.nonzero for f in (fa, fb)):
            raise PruneError(f"`{ctx.node.name}` combines heads with channels whose removed entries are not zero")
        return _merge_heads(ctx, a, b, fa, fb)
    if fa is not None and not isinstance(fa, Axis) or fb is not None and not isinstance(fb, Axis):
        raise PruneError("elementwise op on tuples")
    if isinstance(fa, Axis) and isinstance(fb, Axis):
        if (fa.nonzero or fb.nonzero) and ctx.node.target in _DIVISIONS:
            raise PruneError(f"`{ctx.node.name}` divides channels whose removed entries are not zero")
        merged = ctx.merge(fa, fb)
        if merged is None:
            raise PruneError(f"`{ctx.node.name}` combines tensors whose channels do not line up")
        if ctx.node.target in _ADDITIVE:  # a sum is non-zero where either term is
            return replace(merged, nonzero=fa.nonzero or fb.nonzero)
        return replace(merged, nonzero=fa.nonzero if fb.nonzero else "")  # a product is zero where either factor is
    axis = fa if isinstance(fa, Axis) else fb
    other = b if isinstance(fa, Axis) else a
    if axis is None:
        return None
    if ctx.node.target in _DIVISIONS and other is a:
        raise PruneError(f"`{ctx.node.name}` divides by the channels")
    additive = ctx.node.target in _ADDITIVE
    attr = ctx.attr(other)
    if attr is None and (viewed := viewed_channel_tensor(ctx, other, axis, additive)) is not None:
        return viewed
    if additive and isinstance(other, (int, float)) and not isinstance(other, bool) and other != 0:
        # removed channels hold the constant now: a later product with zeros clears them (a
        # hard-sigmoid gate, ``relu6(g + 3) / 6``); any other op blocks them (Axis.nonzero)
        return replace(axis, nonzero=axis.nonzero or f"`{ctx.node.name}` adds {other!r} to the channels")
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
            if ctx.node.target in _DIVISIONS:  # masked, its removed entries are zero: 0 / 0
                raise PruneError(f"`{ctx.node.name}` divides the channels by `{fqn}`, whose removed entries masked_parameters zeroes")
            if axis.inner != 1 or axis.outer != 1:
                raise PruneError(f"`{fqn}` is added to flattened channels")
            ctx.carry("", dim_in_tensor, Axis(dim_in_tensor, axis.ids), fqn=fqn)
        elif dim_in_tensor is not None and tensor.shape[dim_in_tensor] != 1:
            raise PruneError(f"`{fqn}` does not broadcast over the channels")
    elif isinstance(other, torch.fx.Node):
        return untracked_factor(ctx, other, axis)
    return axis


_ADDITIVE = (operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub")
_DIVISIONS = (operator.truediv, torch.div, "div")


def _merge_heads(ctx: FlowContext, a: object, b: object, fa: Flow, fb: Flow) -> Flow:
    """Scores or heads scaled by a constant, or plus a mask that is the same for every head."""
    heads = fa if isinstance(fa, HeadAxis) else fb
    other, other_flow = (b, fb) if heads is fa else (a, fa)
    assert isinstance(heads, HeadAxis)
    if isinstance(fa, HeadAxis) and isinstance(fb, HeadAxis) and (fa.inner_dim is None) != (fb.inner_dim is None):
        if (scaled := head_scale(ctx, fa, fb)) is not None:  # q * rsqrt(mean of squares of each head + eps)
            return scaled
    if isinstance(other_flow, HeadAxis) and ctx.node.target not in _DIVISIONS:  # rotary: q * cos + rotate_half(q) * sin
        return _merge_two_heads(ctx, heads, other_flow)
    if other_flow is not None:
        raise PruneError("an elementwise op of attention heads with other channels")
    if ctx.node.target in (operator.truediv, torch.div, "div") and other is a:
        raise PruneError("a division by attention heads")
    if ctx.node.target in _ADDITIVE and heads.inner_dim is not None and not (isinstance(other, (int, float)) and other == 0):
        raise PruneError("a value added to queries, keys or values: removed heads would not stay zero")
    if isinstance(other, torch.fx.Node):
        shape = ctx.shape(other)
        if shape is None or (len(shape) >= -heads.head_dim and shape[heads.head_dim] != 1):
            if ctx.node.target in _ADDITIVE and heads.inner_dim is None and per_head_table(ctx, other, heads):
                return heads  # Swin's relative position bias: a table sliced with the heads
            raise PruneError("an elementwise op of attention heads with a tensor that differs per head")
    return heads


def _merge_two_heads(ctx: FlowContext, a: HeadAxis, b: HeadAxis) -> HeadAxis:
    """Two tensors of heads laid out alike, combined elementwise: head i of both is one head
    (their channels united position by position)."""
    if (a.head_dim, a.inner_dim, a.ndim) != (b.head_dim, b.inner_dim, b.ndim) or [len(h) for h in a.heads] != [len(h) for h in b.heads]:
        raise PruneError("an elementwise op of attention heads laid out differently")
    for x, y in zip(a.heads, b.heads):
        if ctx.merge(Axis(-1, x), Axis(-1, y)) is None:
            raise PruneError("an elementwise op of attention heads laid out differently")
    return a


# --- layer scale viewed channels-first; products with tensors fprune does not track -------------------


def viewed_channel_tensor(ctx: FlowContext, other: object, axis: Axis, additive: bool) -> Flow:
    """``gamma.view(1, -1, 1, 1) * x``, ``x * gamma[:, None, None]``: a model tensor with one entry
    per channel, reshaped (view / reshape / unsqueeze / indexing with ``None`` and ``:``) so that
    its entries line up with the channels and every other dim has size 1. It goes with the
    channels (a carrier, sliced with them), like ``x.mul(gamma)`` on the channels' own dim; the
    views follow the slicing if they write the channel count as -1. Returns None if `other`
    is no such view (the caller goes on). Casts are seen through, and in a product a number
    added to the tensor (Gemma's ``x * (1.0 + w.float())``) where the removed channels are zero:
    they stay zero whatever multiplies them (not where they are not: masked, the factor is the
    number there, not 0)."""
    offset = not (additive or ctx.node.target in _DIVISIONS or axis.nonzero)
    found = _viewed_tensor(ctx, _unoffset(other) if offset else other)
    if found is None or axis.inner != 1 or axis.outer != 1:
        return None
    fqn, tensor, written = found
    shape = ctx.shape(other)
    if shape is None or -axis.dim > len(shape) or shape[axis.dim] != axis.width or axis.width == 1:
        return None
    if [s for s in shape if s != 1] != [axis.width] or [s for s in tensor.shape if s != 1] != [axis.width]:
        return None
    if written:
        raise PruneError(
            f"`{written[0][0]}` views `{fqn}`, which goes with the channels, with the sizes {written[0][1]}; pruning "
            "changes the channel count, so write -1 there"
        )
    if ctx.node.target in _DIVISIONS:  # masked, its removed entries are zero: 0 / 0
        raise PruneError(f"`{ctx.node.name}` divides the channels by `{fqn}`, whose removed entries masked_parameters zeroes")
    if additive and not isinstance(tensor, nn.Parameter):  # masked_parameters cannot zero a buffer
        raise PruneError(
            f"`{ctx.node.name}` adds `{fqn}`, a buffer, to the channels: removed channels would pass it on to "
            "the next layers, which the pruned model could not reproduce"
        )
    dim = list(tensor.shape).index(axis.width)
    ctx.carry("", dim, Axis(dim, axis.ids), fqn=fqn)
    out = ctx.shape()
    return replace(axis, ndim=len(out)) if out is not None else axis


def _viewed_tensor(ctx: FlowContext, value: object) -> tuple[str, Tensor, list[tuple[str, tuple[object, ...]]]] | None:
    """(FQN, tensor, views that write sizes other than -1 and 1: (node, sizes)) if `value` is a
    model tensor seen through view / reshape / unsqueeze / indexing that adds dims; None for
    anything else."""
    written: list[tuple[str, tuple[object, ...]]] = []
    while isinstance(value, torch.fx.Node):
        attr = ctx.attr(value)
        if attr is not None:
            return attr[0], attr[1], written
        if value.op == "call_method" and value.target in ("view", "reshape") or value.target is torch.reshape:
            sizes = size_args(value)
            if not all(isinstance(s, int) and not isinstance(s, bool) and s in (-1, 1) for s in sizes):
                written.append((value.name, tuple(sizes)))
        elif not (
            value.op == "call_method" and value.target == "unsqueeze"
            or value.op == "call_method" and value.target in CAST_METHODS and not any(isinstance(a, torch.fx.Node) for a in value.args[1:])
            or value.op == "call_function" and value.target is torch.unsqueeze
            or value.op == "call_function" and value.target is operator.getitem and _adds_dims_only(value.args[1])
        ):
            return None
        value = value.args[0]
    return None


def _unoffset(value: object) -> object:
    """w for ``c + w`` / ``w + c`` with a number c; else `value`."""
    if isinstance(value, torch.fx.Node) and value.target in (operator.add, torch.add, "add") and len(value.args) == 2 and not value.kwargs:
        a, b = value.args
        for number, tensor in ((a, b), (b, a)):
            if _is_number(number) and isinstance(tensor, torch.fx.Node):
                return tensor
    return value


def _adds_dims_only(index: object) -> bool:
    """An index that keeps every entry and only adds dims: ``[:, None, None]``, ``[None, ..., None]``."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or i == slice(None) for i in items)


def untracked_factor(ctx: FlowContext, other: torch.fx.Node, axis: Axis) -> Flow:
    """The channels times (or divided by) `other`, a tensor fprune does not track (stochastic
    depth's random keep mask of shape (B, 1, 1, 1), a mask computed from the input): exact where
    `other` has size 1 on the channels' dim. It then broadcasts over them: a removed channel
    stays zero, a kept one is scaled as in the masked model, and `other` itself (its values, the
    random draws that made it) does not depend on the number of channels. Anything else blocks:
    `other` would have to be sliced with the channels. Needs shapes (example inputs)."""
    shape = ctx.shape(other)
    if shape is None:
        raise PruneError(
            f"`{ctx.node.name}` combines the channels with `{other.name}`, a tensor fprune does not track, of "
            "unknown shape; pass example_inputs so that fprune can check that it broadcasts over the channels"
        )
    if -axis.dim <= len(shape) and shape[axis.dim] != 1:
        raise PruneError(
            f"`{ctx.node.name}` combines the channels with `{other.name}`, a tensor fprune does not track, of shape "
            f"{tuple(shape)}: it differs along the channels' dim, so pruning would have to slice it too"
        )
    out = ctx.shape()
    return replace(axis, ndim=len(out)) if out is not None else axis


def fresh_tensor_rule(ctx: FlowContext) -> Flow:
    """``x.new_empty(size)`` / ``new_zeros`` / ``new_ones`` / ``new_full``: a new tensor whose values
    do not depend on x's (only its dtype and device do): no channels. A size read from x's shape
    on the channels' dim still blocks them (a size read no rule answers for)."""
    if ctx.flow(list(ctx.node.args[1:]) + list(ctx.node.kwargs.values())) is not None:
        raise PruneError(f"`{ctx.node.name}` makes a new tensor from values of tracked channels")
    return None
