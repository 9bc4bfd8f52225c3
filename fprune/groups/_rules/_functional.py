"""Flow rules of layers called as functions on model tensors: ``F.linear(x, self.weight)``,
``F.embedding(ids, self.weight)``, ``torch.addmm(self.bias, x, self.weight)`` (Hugging Face's
``Conv1D``, a transposed Linear). A ``torch.export`` graph calls every layer this way; so may a
module's own forward. The weight must be a model tensor (a ``get_attr``), named by its FQN."""

from __future__ import annotations

from torch import fx

from ..._errors import PruneError
from .._flow import Flow, FlowContext, handles_nonzero
from ._layers import linear_flow
from ._layout import input_axis


def _weight(ctx: FlowContext, value: object, what: str, ndim: int) -> tuple[str, tuple[int, ...]]:
    """The FQN and shape of the model tensor `value` (a PruneError if it is not one)."""
    found = ctx.attr(value)
    if found is None:
        name = value.name if isinstance(value, fx.Node) else repr(value)
        raise PruneError(f"{what} `{ctx.node.name}` takes its weight from `{name}`, not from a tensor of the model")
    fqn, tensor = found
    if tensor.dim() != ndim:
        raise PruneError(f"{what} `{ctx.node.name}` takes a {tensor.dim()}-D weight `{fqn}`")
    return fqn, tuple(tensor.shape)


def _bias(ctx: FlowContext, value: object, what: str) -> str:
    """The FQN of the bias `value` ("" for None; a PruneError for a tensor not of the model)."""
    if value is None:
        return ""
    fqn, _ = _weight(ctx, value, what, 1)
    return fqn


@handles_nonzero
def linear_call_rule(ctx: FlowContext) -> Flow:
    """``F.linear(x, weight, bias)`` on model tensors: as nn.Linear."""
    weight, (out_features, in_features) = _weight(ctx, ctx.arg(1, "weight"), "F.linear", 2)
    bias = _bias(ctx, ctx.arg(2, "bias"), "F.linear")
    return linear_flow(ctx, input_axis(ctx), weight, bias, in_features, out_features, f"the linear layer `{weight}`")


@handles_nonzero
def addmm_rule(ctx: FlowContext) -> Flow:
    """``torch.addmm(bias, x, weight)`` with a model weight of shape [in, out]: Hugging Face's
    ``Conv1D`` (GPT-2's layers), a Linear with its weight transposed."""
    if ctx.arg(3, "beta", 1) != 1 or ctx.arg(4, "alpha", 1) != 1:
        raise PruneError(f"`{ctx.node.name}`: addmm with beta or alpha other than 1 is not followed")
    weight, (in_features, out_features) = _weight(ctx, ctx.arg(2, "mat2"), "addmm", 2)
    bias = _bias(ctx, ctx.arg(0, "input"), "addmm")
    return linear_flow(ctx, input_axis(ctx, 1), weight, bias, in_features, out_features, f"the Conv1D layer `{weight}`", transposed=True)


def embedding_call_rule(ctx: FlowContext) -> Flow:
    """``F.embedding(ids, weight)`` on a model weight: produces its columns."""
    weight, (_, dim) = _weight(ctx, ctx.arg(1, "weight"), "F.embedding", 2)
    if ctx.input(0) is not None:
        ctx.block(ctx.input(0), f"`{ctx.node.name}` looks up rows by the values of these channels")
    return ctx.produce(weight, 1, dim)
