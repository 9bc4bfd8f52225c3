"""Flow rules of layers called as functions on model tensors: ``F.linear(x, self.weight)``,
``F.embedding(ids, self.weight)``, ``torch.addmm(self.bias, x, self.weight)`` (Hugging Face's
``Conv1D``, a transposed Linear). A ``torch.export`` graph calls every layer this way; so may a
module's own forward. The weight must be a model tensor (a ``get_attr``), named by its FQN."""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx

from ..._errors import PruneError
from .._flow import Flow, FlowContext, handles_nonzero
from ._layers import conv_flow, linear_flow
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
    if isinstance(value, fx.Node) and len(value.users) > 1:  # as a module called twice in a traced graph
        raise PruneError(f"`{fqn}` is read by {len(value.users)} calls in forward (a layer called more than once), and fprune prunes only layers called once")
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


_CONV_DIMS: dict[object, int] = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@handles_nonzero
def conv_call_rule(ctx: FlowContext) -> Flow:
    """``F.conv1d / conv2d / conv3d(x, weight, bias, stride, padding, dilation, groups)`` on model
    tensors (as torch.export records an nn.Conv): as the module (:func:`conv_flow`), with groups
    (grouped convs by in-group position, depthwise ones carrying their filters). A depthwise
    conv's ``groups`` is its channel count, a number in the call: it is recorded as a literal
    (the kept channels), which apply checks by exporting the pruned copy again."""
    spatial = _CONV_DIMS[ctx.node.target]
    what = f"F.conv{spatial}d `{ctx.node.name}`"
    weight, shape = _weight(ctx, ctx.arg(1, "weight"), f"F.conv{spatial}d", spatial + 2)
    bias = _bias(ctx, ctx.arg(2, "bias"), f"F.conv{spatial}d")
    groups = ctx.arg(6, "groups", 1)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise PruneError(f"{what} takes groups={groups!r}, not a number fprune can follow")
    channel_dim = -(spatial + 1)
    axis = input_axis(ctx)
    out_shape = ctx.shape()
    ndim = len(out_shape) if out_shape is not None else axis.ndim if axis is not None else None
    channels = (shape[1] * groups, shape[0])
    out = conv_flow(ctx, axis, weight, bias, channels, groups, channel_dim, ndim, _padded(ctx, shape[2:]), what)
    if axis is not None and 1 < groups == channels[0] == channels[1]:  # depthwise: `groups` counts the channels
        ctx.literal(0, groups, axis.ids, 1)  # (index 0 of the conv's sizes: its groups argument, see _sizes)
    return out


def _padded(ctx: FlowContext, kernel: tuple[int, ...]) -> str:
    """Why a functional conv cannot fold a constant input into its bias ("" if it can): zero
    padding gives its border outputs less of it."""
    padding = ctx.arg(4, "padding", 0)
    dilation = ctx.arg(5, "dilation", 1)
    if padding == "valid":
        return ""
    if padding == "same":
        dilations = dilation if isinstance(dilation, (list, tuple)) else [dilation] * len(kernel)
        padded = any((k - 1) * d for k, d in zip(kernel, dilations) if isinstance(d, int))
    elif isinstance(padding, (list, tuple)):
        padded = any(p != 0 for p in padding)
    else:
        padded = padding != 0
    return f"its zero padding ({padding}) gives border outputs less of it" if padded else ""
