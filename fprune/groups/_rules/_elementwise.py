"""Flow rules of elementwise ops: activations (checked to keep zeros), dropout / identity,
and binary ops that merge their operands' channels (a residual add, a gate product)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
from torch import Tensor, nn

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, HeadAxis, handles_nonzero


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


def _activation_output(ctx: FlowContext, axis: Flow, check: Callable[[], None]) -> Flow:
    """The flow after an elementwise activation: `axis` itself if `check` finds f(0) = 0 (or
    if its removed channels already carry a value: f of it is some other value); marked
    non-zero if f(0) != 0."""
    if isinstance(axis, Axis) and axis.nonzero:
        return axis
    try:
        check()
    except _NonZero as error:
        return _nonzero_after(ctx, axis, error)
    return axis


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

    return _activation_output(ctx, axis, check if kind is None else lambda: ctx.once(("zero-preserving", kind), check))


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

    def check() -> None:
        if isinstance(target, str):
            _zero_preserving(lambda x: cast(Tensor, getattr(x, target)(*rest, **kwargs)), f"x.{target}()")
        else:
            assert callable(target)
            _zero_preserving(lambda x: cast(Tensor, target(x, *rest, **kwargs)), getattr(target, "__name__", str(target)))

    return _activation_output(ctx, axis, check)


@handles_nonzero
def keep_rule(ctx: FlowContext) -> Flow:
    """Ops that keep every channel where it is (pools, dropout, identity, contiguous)."""
    return ctx.input(0)


@handles_nonzero
def merge_elementwise_rule(ctx: FlowContext) -> Flow:
    """add / sub / mul of two tensors, or of a tensor and a constant or a model tensor."""
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
_DIVISIONS = (operator.truediv, torch.div, "div")


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

