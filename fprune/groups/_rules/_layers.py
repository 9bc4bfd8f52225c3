"""Flow rules of layers with weights: producers and consumers (Linear, Conv, Embedding,
LSTM) and per-channel carriers (BatchNorm, PReLU, LayerNorm / GroupNorm)."""

from __future__ import annotations

import operator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext
from ._layout import input_axis, with_ndim


def linear_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Linear)
    axis = input_axis(ctx)
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


def conv_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, _ConvNd)
    spatial = len(module.kernel_size)
    channel_dim = -(spatial + 1)
    axis = input_axis(ctx)
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


def embedding_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Embedding)
    return ctx.produce("weight", 1, module.embedding_dim)


def batchnorm_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, _BatchNorm)
    axis = input_axis(ctx)
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


def batch_norm_call_rule(ctx: FlowContext) -> Flow:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` with the model's own
    per-channel tensors: what BatchNorm subclasses with a fused activation (timm's
    ``BatchNormAct2d``) trace to. Like the module: those tensors go with the channels."""
    axis = input_axis(ctx)
    if axis is None:
        return None
    if axis.inner != 1 or axis.outer != 1 or not _on_dim_1(ctx, axis):
        raise PruneError(f"`{ctx.node.name}` (batch_norm) normalizes dim 1, but the channels are not there")
    tensors = {
        name: ctx.arg(index, name)
        for index, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    }
    if tensors["weight"] is None or tensors["bias"] is None:
        raise PruneError(
            f"`{ctx.node.name}` (batch_norm) has no affine weight and bias: removed channels would leave it "
            "as a non-zero constant (-mean / std) that the pruned model cannot reproduce"
        )
    for name, value in tensors.items():
        if value is None:
            continue
        found = ctx.attr(value)
        if found is None or found[1].dim() != 1 or found[1].shape[0] != len(axis.ids):
            raise PruneError(f"`{ctx.node.name}` (batch_norm): its {name} is not a per-channel tensor of the model")
        ctx.carry("", 0, Axis(0, axis.ids), fqn=found[0])
    return axis


def _on_dim_1(ctx: FlowContext, axis: Axis) -> bool:
    """False if the channels are known not to be on dim 1 of the input, which BatchNorm and
    PReLU act on (a Linear's output on tokens, ``[batch, tokens, features]``, whose token count
    happens to equal the feature count). Unknown ranks pass: a Linear's output is then taken
    to be ``[batch, features]``."""
    axis = with_ndim(ctx, axis)
    return axis.ndim is None or axis.dim % axis.ndim == 1


def prelu_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.PReLU)
    axis = input_axis(ctx)
    if axis is not None and module.num_parameters > 1:
        if len(axis.ids) != module.num_parameters or axis.dim not in (-1, -3, -2, -4) or axis.inner != 1:
            raise PruneError(f"PReLU `{ctx.module_fqn}` has {module.num_parameters} parameters, which the channels do not match")
        if not _on_dim_1(ctx, axis):
            raise PruneError(f"PReLU `{ctx.module_fqn}` scales dim 1, but the channels are on dim {axis.dim}")
        ctx.carry("weight", 0, Axis(0, axis.ids))
    return axis


def normalization_rule(ctx: FlowContext) -> Flow:
    axis = input_axis(ctx)
    if axis is not None:
        ctx.block(
            axis,
            f"{type(ctx.module).__name__ if ctx.module is not None else 'normalization'} normalizes across "
            "the channels: removing some changes every other channel's output, so the pruned model "
            "could not match the masked one",
        )
    return None


def lstm_rule(ctx: FlowContext) -> Flow:
    """nn.LSTM: each layer's hidden units are channels, in all 4 gates at once.

    Producers: the layer's ``weight_ih`` and ``weight_hh`` rows (gate-major: unit j is rows
    j, H + j, 2H + j, 3H + j) with both biases; consumers: ``weight_hh`` columns and the next
    layer's ``weight_ih`` columns (or, for the last layer, whatever reads the output).
    """
    module = ctx.module
    assert isinstance(module, nn.LSTM)
    axis = input_axis(ctx)
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
