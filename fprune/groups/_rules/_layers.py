"""Flow rules of layers with weights: producers and consumers (Linear, Conv, Embedding,
LSTM) and per-channel carriers (BatchNorm, PReLU, LayerNorm / GroupNorm)."""

from __future__ import annotations

import operator
from dataclasses import replace

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..._errors import PruneError
from .._flow import Axis, Flow, FlowContext, handles_nonzero
from .._records import BiasFold
from ._layout import input_axis, with_ndim


@handles_nonzero
def linear_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Linear)
    has_bias = module.bias is not None
    return linear_flow(ctx, input_axis(ctx), "weight", "bias" if has_bias else "", module.in_features, module.out_features, f"nn.Linear `{ctx.module_fqn}`")


def linear_flow(
    ctx: FlowContext, axis: Axis | None, weight: str, bias: str, in_features: int, out_features: int, what: str, *, transposed: bool = False
) -> Flow:
    """A linear layer over the last dim of the input whose channels are `axis`: `weight` (this
    module's tensor name, or a model FQN in a functional call) reads the input channels along
    dim 1 and makes the output channels along dim 0 (`transposed`: the other way round, as HF's
    ``Conv1D``); `bias` ("" if none) goes with the output channels."""
    ndim = None
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    if axis is not None and axis.inner == -1:  # a flatten of unknown trailing size: resolve it
        if in_features % len(axis.ids):
            raise PruneError(f"{what} has in_features={in_features}, not a multiple of the {len(axis.ids)} flattened channels")
        axis = replace(axis, inner=in_features // len(axis.ids))
    if axis is not None:
        if axis.dim != -1:
            raise PruneError(f"{what} reads the last dim, but the channels are on dim {axis.dim}")
        if axis.width != in_features:
            raise PruneError(f"{what} has in_features={in_features}, but {axis.width} channel positions reach it")
        ctx.consume(weight, in_dim, axis)
        fold_constant(ctx, axis, bool(bias), weight=weight, bias=bias, in_dim=in_dim)
        ndim = axis.ndim
    out = ctx.produce(weight, out_dim, out_features, ndim=ndim)
    if bias:
        ctx.carry(bias, 0, Axis(0, out.ids))
    return out


@handles_nonzero
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
                ctx.block(
                    axis,
                    f"grouped ConvTranspose `{ctx.module_fqn}` (groups={module.groups}) is not supported: "
                    "only non-transposed grouped convs are pruned by in-group position",
                )
            return None
        if axis is not None:
            _check_conv_input(ctx, axis, channel_dim, module.in_channels)
            ctx.consume("weight", 0, axis)
            fold_constant(ctx, axis, False, "a transposed conv spreads it unevenly over its output positions")
        out = ctx.produce("weight", 1, module.out_channels, ndim=ndim, out_dim=channel_dim)
    else:
        bias = "bias" if module.bias is not None else ""
        channels = (module.in_channels, module.out_channels)
        return conv_flow(ctx, axis, "weight", bias, channels, module.groups, channel_dim, ndim, _zero_padded(module), f"`{ctx.module_fqn}`")
    if module.bias is not None:
        ctx.carry("bias", 0, Axis(0, out.ids))
    return out


def conv_flow(
    ctx: FlowContext,
    axis: Axis | None,
    weight: str,
    bias: str,
    channels: tuple[int, int],
    groups: int,
    channel_dim: int,
    ndim: int | None,
    unfoldable: str,
    what: str,
) -> Axis:
    """A non-transposed conv (an nn.Conv module, or ``F.conv2d`` on model tensors) reading the
    channels of `axis` on `channel_dim`: `weight` (this module's tensor name, or a model FQN) of
    shape [out, in / groups, *k] (`channels`: in, out), `bias` ("" if none), `unfoldable`
    why a constant input cannot fold into the bias ("" if it can). ``groups == 1``: the weight
    reads the input along dim 1 and makes the output along dim 0. Depthwise (groups == in ==
    out): the filter is a carrier of the input channels, which pass. Other groups: by in-group
    position (:func:`_grouped_conv`)."""
    in_channels, out_channels = channels
    if groups == 1:
        if axis is not None:
            _check_conv_input(ctx, axis, channel_dim, in_channels, what)
            ctx.consume(weight, 1, axis)
            fold_constant(ctx, axis, bool(bias), unfoldable, weight=weight, bias=bias)
        out = ctx.produce(weight, 0, out_channels, ndim=ndim, out_dim=channel_dim)
    elif groups == in_channels == out_channels and axis is not None:
        # depthwise: output channel c reads only input channel c; its filter goes with it (and
        # makes a removed channel 0 again, whatever it held: masked_parameters zeroes the filter)
        _check_conv_input(ctx, axis, channel_dim, in_channels, what)
        out = Axis(channel_dim, axis.ids, ndim=ndim)
        ctx.carry(weight, 0, Axis(0, axis.ids))
    else:
        out = _grouped_conv(ctx, axis, weight, bias, channels, groups, channel_dim, ndim, unfoldable, what)
    if bias:
        ctx.carry(bias, 0, Axis(0, out.ids))
    return out


def _grouped_conv(
    ctx: FlowContext,
    axis: Axis | None,
    weight: str,
    bias: str,
    channels: tuple[int, int],
    groups: int,
    channel_dim: int,
    ndim: int | None,
    unfoldable: str,
    what: str,
) -> Axis:
    """A conv with ``1 < groups`` (not depthwise), as Torch-Pruning prunes it: by in-group position.

    Input channel ``G * (in / groups) + j`` is position j of group G; weight column j reads
    position j of every group, so the positions j of all groups are one unit (kept or removed
    together) and the column goes with group 0's channel j. Output rows likewise: position k
    of every group is one unit. Every group then keeps the same positions, and the pruned
    conv, with the same `groups`, computes what the masked one does."""
    in_channels, out_channels = channels
    per_in = in_channels // groups
    name = f"grouped conv {what} (groups={groups}, {in_channels} -> {out_channels} channels)"
    if axis is not None:
        _check_conv_input(ctx, axis, channel_dim, in_channels, what)
        if _tie_positions(ctx, axis, groups, f"{name} reads one input channel per group"):
            consumed = replace(axis, ids=axis.ids[:per_in], inner=1, outer=1)
            ctx.consume(weight, 1, consumed)
            fold_constant(ctx, consumed, bool(bias), unfoldable, weight=weight, bias=bias)
    out = ctx.produce(weight, 0, out_channels, ndim=ndim, out_dim=channel_dim)
    _tie_positions(ctx, out, groups, f"{name} makes one output channel per group")
    return out


def _tie_positions(ctx: FlowContext, axis: Axis, groups: int, one_per_group: str) -> bool:
    """Tie in-group position j of every one of the `groups` groups of `axis` into a unit; with one
    channel per group, block them instead (`one_per_group` says which side) and return False."""
    if len(axis.ids) == groups:
        ctx.block(axis, f"{one_per_group}: removing one would remove its whole group, which changes `groups`; only in-group positions are pruned")
        return False
    ctx.tie_positions(axis.ids, groups)
    return True


def fold_constant(
    ctx: FlowContext, axis: Axis, has_bias: bool, unfoldable: str = "", *, weight: str = "weight", bias: str = "bias", in_dim: int = 1
) -> None:
    """This layer's `weight` reads the channels of `axis` along `in_dim` (a Linear, a conv): where
    their removed entries hold a non-zero constant (after ``sigmoid``, ``x + 3``), fold it into
    the layer's bias (:class:`BiasFold`), or block them, saying why it cannot (`unfoldable`:
    the layer's own reason)."""
    if not axis.nonzero:
        return
    why = unfoldable or (
        "it has no bias to take it" if not has_bias
        else "its value is unknown or may differ between positions (an op on the way changed it)" if axis.constant is None
        else ""
    )
    if why:
        ctx.block(
            axis,
            f"after {axis.nonzero}, the removed channels carry a non-zero value into `{ctx.module_fqn or ctx.node.name}`, "
            f"which cannot fold it into its bias: {why}; only a product with channels that are zero there "
            "(an SE gate: x * sigmoid(...)) or a BatchNorm makes them zero again",
        )
        return
    assert axis.constant is not None
    prefix = f"{ctx.module_fqn}." if ctx.module_fqn else ""
    ctx.fold(BiasFold(ctx.node.name, prefix + weight, in_dim, prefix + bias, axis.constant, axis.nonzero), axis)


def _zero_padded(module: _ConvNd) -> str:
    """Why a conv's zero padding keeps a constant input from folding into its bias ("" if it
    has none): at the border the padded zeros replace it, so the output there differs."""
    if module.padding_mode != "zeros":  # reflect / replicate / circular repeat a constant plane
        return ""
    if module.padding == "valid":
        return ""
    if module.padding == "same":
        padded = any((k - 1) * d for k, d in zip(module.kernel_size, module.dilation))
    else:
        padded = any(module.padding)
    return f"its zero padding ({module.padding}) gives border outputs less of it" if padded else ""


def _check_conv_input(ctx: FlowContext, axis: Axis, channel_dim: int, in_channels: int, what: str = "") -> None:
    what = what or f"`{ctx.module_fqn}`"
    if axis.dim != channel_dim or axis.inner != 1 or axis.outer != 1:
        raise PruneError(f"{what} reads channels on dim {channel_dim}, but they are on dim {axis.dim}")
    if len(axis.ids) != in_channels:
        raise PruneError(f"{what} has in_channels={in_channels}, but {len(axis.ids)} channels reach it")


def embedding_rule(ctx: FlowContext) -> Flow:
    module = ctx.module
    assert isinstance(module, nn.Embedding)
    return ctx.produce("weight", 1, module.embedding_dim)


@handles_nonzero
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
    return _zeroed(axis)


def _zeroed(axis: Axis) -> Axis:
    """The output of an affine norm whose weight and bias masked_parameters zeroes for removed
    channels: they are 0 there, whatever they held (a constant after ``sigmoid``)."""
    return replace(axis, nonzero="", constant=None) if axis.nonzero else axis


@handles_nonzero
def batch_norm_call_rule(ctx: FlowContext) -> Flow:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` with the model's own
    per-channel tensors: what BatchNorm subclasses with a fused activation (timm's
    ``BatchNormAct2d``) trace to; also ``F.instance_norm``, whose tensors come in the same places.
    Like the module: those tensors go with the channels."""
    function = getattr(ctx.node.target, "__name__", "batch_norm")
    axis = input_axis(ctx)
    if axis is None:
        return None
    if axis.inner != 1 or axis.outer != 1 or not _on_dim_1(ctx, axis):
        raise PruneError(f"`{ctx.node.name}` ({function}) normalizes dim 1, but the channels are not there")
    tensors = {
        name: ctx.arg(index, name)
        for index, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    }
    if tensors["weight"] is None or tensors["bias"] is None:
        raise PruneError(
            f"`{ctx.node.name}` ({function}) has no affine weight and bias: removed channels would leave it "
            "as a non-zero constant (-mean / std) that the pruned model cannot reproduce"
        )
    for name, value in tensors.items():
        if value is None:
            continue
        found = ctx.attr(value)
        if found is None or found[1].dim() != 1 or found[1].shape[0] != len(axis.ids):
            raise PruneError(f"`{ctx.node.name}` ({function}): its {name} is not a per-channel tensor of the model")
        ctx.carry("", 0, Axis(0, axis.ids), fqn=found[0])
    affine = [ctx.attr(tensors[name]) for name in ("weight", "bias")]
    if axis.nonzero and not all(found is not None and isinstance(found[1], nn.Parameter) for found in affine):
        raise PruneError(
            f"`{ctx.node.name}` ({function}): after {axis.nonzero}, the removed channels carry a non-zero value, "
            "and its weight or bias is a buffer that masked_parameters does not zero, so they would pass it on"
        )
    return _zeroed(axis)


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
