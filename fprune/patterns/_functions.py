"""Pure prune functions: each shrinks the modules of one matched chain and returns new ones.

A chain is a *producer* (Linear, Conv, LSTM) whose output channels are removed, the
*pass-through* ops its output flows through (activations, pools, BatchNorm, dropout, flatten)
and a *consumer* (Linear, Conv) whose matching input columns are removed, or the graph output.

Removed channels do not vanish from the masked model: they emit a constant (their bias, or 0,
passed through the chain's ops). That constant's contribution is folded into the consumer's
bias, so the pruned model computes what the masked model computes. Where it cannot be folded
exactly (a zero-padded consumer conv, a padded average pool, an LSTM's biases kept on removed
units), an :class:`UnfoldableConstant` (a PruneError) is raised; ``apply_prune(...,
unfoldable="keep")`` then leaves that producer unshrunk instead.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .._errors import PruneError, prefixed
from .._ops import (
    ADAPTIVE_POOL_FUNCTIONS,
    ADAPTIVE_POOL_MODULES,
    AVG_POOL_FUNCTIONS,
    AVG_POOL_MODULES,
    DROPOUT_FUNCTIONS,
    DROPOUT_MODULES,
    MAX_POOL_FUNCTIONS,
    MAX_POOL_MODULES,
)
from .._util.copy import copy_module
from .._util.gather import take, take_rows_columns
from ._records import Call, Op, Output

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class UnfoldableConstant(PruneError):
    """The constant that a chain's removed channels still emit cannot be folded into a bias.

    Raised by the chain functions (and so by any prune function built on them) where the
    pruned model could only differ from the masked model: the constant meets a zero-padded
    consumer conv or a padded average pool (it is no longer constant at the borders), or an
    LSTM keeps biases on removed units (their state changes over time). Shrinking the
    producer is then impossible, but leaving it full size with its removed rows zeroed is
    exact: ``apply_prune(..., unfoldable="keep")`` does that instead of raising.

    Attributes:
        reason: what stops the folding, in a few words (e.g. "zero-padded Conv2d consumer").
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

_DROPOUTS = (*DROPOUT_MODULES, nn.Identity)
# avg_pool{n}d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _name(op: Op) -> str:
    if isinstance(op, nn.Module):
        return type(op).__name__
    if isinstance(op, Call):
        return op.name
    return "output"


def rebuild_module(
    module: ModuleT, tensors: Mapping[str, Tensor], **attributes: object
) -> ModuleT:
    """A deep copy of `module` with the named parameters / buffers replaced by `tensors`.

    Replaced parameters keep their ``requires_grad`` flag; a name whose parameter was None
    (e.g. a missing bias) gets a new parameter. `attributes` are set on the copy afterwards
    (``out_features=...``). The original tensors are never copied; `module` is left unchanged.
    """
    memo: dict[int, object] = {}
    added: dict[str, Tensor] = {}
    for name, value in tensors.items():
        old = getattr(module, name, None)
        if isinstance(old, nn.Parameter):
            memo[id(old)] = nn.Parameter(value.detach(), requires_grad=old.requires_grad)
        elif isinstance(old, Tensor):
            memo[id(old)] = value.detach()
        else:
            added[name] = value.detach()
    new = copy_module(module, memo)
    for name, value in added.items():
        weight = getattr(module, "weight", None)
        requires_grad = weight.requires_grad if isinstance(weight, Tensor) else True
        setattr(new, name, nn.Parameter(value, requires_grad=requires_grad))
    for key, attr in attributes.items():
        setattr(new, key, attr)
    return new


def _indices(mask: Tensor) -> Tensor:
    return mask.nonzero().squeeze(1)


@dataclass
class _DeferredRows:
    """Within one ``apply_prune``: producer weights whose rows are cut together with their
    columns, when the later chain that consumes them runs (one gather, no half-cut copy).

    Attributes:
        weights: id() of the original producer weights that a later built-in chain consumes.
        pending: id() of a rebuilt module's (still uncut) weight -> the rows it keeps.
    """

    weights: set[int]
    pending: dict[int, Tensor] = field(default_factory=dict)


def deferred_rows(weights: set[int]) -> _DeferredRows:
    """A fresh deferral state for one apply_prune, which passes it explicitly to each built-in
    chain it runs (:func:`prune_deferring`): the row cut of `weights` is deferred to the chain
    that cuts their columns (see :class:`_DeferredRows`); what is still pending at the end is
    the caller's to cut (:func:`cut_pending_rows`). The public prune functions never defer."""
    return _DeferredRows(weights)


def cut_pending_rows(module: nn.Module, state: _DeferredRows) -> nn.Module:
    """`module` with the row cut of its weight done, if it was deferred and never done."""
    weight = param_of(module, "weight")
    rows = state.pending.pop(id(weight), None) if weight is not None else None
    if weight is None or rows is None:
        return module
    return rebuild_module(module, {"weight": take(weight.detach(), {0: rows})})


def take_dim(t: Tensor, mask: Tensor, dim: int) -> Tensor:
    return take(t.detach(), {dim: _indices(mask)})


def _values_device(t: Tensor) -> torch.device:
    """Where masks and constants about `t` live: its device, or the CPU for a meta tensor
    (a meta model is pruned from CPU masks, without values)."""
    return torch.device("cpu") if t.device.type == "meta" else t.device


def _values(t: Tensor, like: Tensor, what: str) -> Tensor:
    """`t` detached, as `like`'s dtype and device; PruneError if it has no values (meta)."""
    if t.device.type == "meta":
        raise PruneError(
            f"{what}: folding the constant that removed channels still emit needs this tensor's values, "
            "but it is on the meta device; prune a meta model with prune_bias=True (or load its weights first)"
        )
    return t.detach().to(like)


def param_of(module: nn.Module, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, Tensor) else None


def _weight(module: nn.Module, what: str) -> Tensor:
    weight = param_of(module, "weight")
    if weight is None:
        raise PruneError(f"{what} ({type(module).__name__}) has no `weight` tensor to prune")
    return weight


def check_mask(mask: Tensor, rows: int, what: str) -> None:
    if mask.dtype != torch.bool or mask.dim() != 1 or mask.shape[0] != rows:
        raise PruneError(
            f"keep-mask for {what} must be a 1-D torch.bool tensor of length {rows}, "
            f"got dtype {mask.dtype} and shape {tuple(mask.shape)}"
        )
    if not bool(mask.any()):
        raise PruneError(f"keep-mask for {what} removes every channel; keep at least one")


def _weight_mask(keep: Mapping[str, Tensor], producer: nn.Module) -> Tensor:
    if set(keep) != {"weight"}:
        raise PruneError(
            f"a {type(producer).__name__} producer takes one keep-mask named 'weight', "
            f"got {sorted(keep)}"
        )
    return keep["weight"]


@dataclass(frozen=True)
class _Flow:
    """Where the removed channels' constant stands while walking a chain."""

    const: Tensor  # per channel, in the chain's layout ([1, C] or [1, C, 1, ...])
    flatten_from: int | None  # start_dim of a flatten met on the way
    blocker: str | None  # an op met on the way that does not keep a constant constant


def _const_nonzero(flow: _Flow, removed: Tensor) -> bool:
    values = flow.const.reshape(flow.const.shape[1] if flow.const.dim() > 1 else -1)
    return bool((values[removed] != 0).any())


def _call_arg(call: Call, index: int, name: str, default: object) -> object:
    """Argument `name` (positional `index` after the input) of a bound call."""
    if index < len(call.args):
        return call.args[index]
    return dict(call.kwargs).get(name, default)


def _avg_pool_blocker(op: Op) -> str | None:
    """Why an average pool would turn a constant into a non-constant map, or None."""
    padding: object
    count_pad: object
    divisor: object
    if isinstance(op, AVG_POOL_MODULES):
        padding, count_pad, divisor = op.padding, op.count_include_pad, getattr(op, "divisor_override", None)
    elif isinstance(op, Call) and op.target in AVG_POOL_FUNCTIONS:
        padding = _call_arg(op, 2, "padding", 0)
        count_pad = _call_arg(op, 4, "count_include_pad", True)
        divisor = _call_arg(op, 5, "divisor_override", None)
    else:
        return None
    pads = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,)
    if divisor is not None:
        return f"{_name(op)} with divisor_override={divisor}"
    if count_pad and any(isinstance(p, int) and p > 0 for p in pads):
        return f"{_name(op)} with padding={padding} and count_include_pad=True"
    return None


def _flatten_start(op: Op) -> int | None:
    """start_dim of a flatten op that folds channels into features, else None."""
    if isinstance(op, nn.Flatten):
        if op.end_dim != -1:
            raise PruneError(f"nn.Flatten(end_dim={op.end_dim}) is not supported in a chain; only end_dim=-1")
        return op.start_dim
    if isinstance(op, Call) and (op.target is torch.flatten or op.target == "flatten"):
        start = _call_arg(op, 0, "start_dim", 0)
        end = _call_arg(op, 1, "end_dim", -1)
        if end != -1 or not isinstance(start, int):
            raise PruneError(f"{op.name}(start_dim={start}, end_dim={end}) is not supported in a chain")
        return start
    return None


def _batchnorm_const(bn: _BatchNorm, x: Tensor, removed: Tensor, prune_bias: bool) -> Tensor:
    """BatchNorm applied to the per-channel constant `x`, as the masked model applies it: with
    the running statistics in eval mode, with batch statistics in train mode (or without
    running statistics), where a constant channel normalizes to 0."""
    c = x.reshape(-1)
    weight, bias = param_of(bn, "weight"), param_of(bn, "bias")
    mean, var = bn.running_mean, bn.running_var
    if weight is not None and bias is not None and prune_bias:
        return torch.zeros_like(x)
    if mean is not None and var is not None and not bn.training and bn.track_running_stats:
        y = (c - _values(mean, c, _name(bn))) / torch.sqrt(_values(var, c, _name(bn)) + bn.eps)
    else:  # batch statistics of a constant channel: (c - c) / sqrt(0 + eps)
        y = torch.zeros_like(c)
    if weight is not None and bias is not None:
        if prune_bias:  # the masked model zeroes the removed channels' affine entries (only
            return torch.zeros_like(x)  # removed channels' constants are ever read)
        y = y * _values(weight, c, _name(bn)) + _values(bias, c, _name(bn))
    return y.reshape(x.shape)


def _pass(op: Op, keep: Tensor, flow: _Flow, prune_bias: bool) -> tuple[nn.Module | None, _Flow]:
    """Carry the removed channels through one pass-through op."""
    removed = ~keep
    const, flatten_from, blocker = flow.const, flow.flatten_from, flow.blocker
    replacement: nn.Module | None = None
    if flatten_from is not None and (isinstance(op, _BatchNorm) or _flatten_start(op) is not None):
        raise PruneError(f"{_name(op)} after a flatten is not supported in a chain")
    if isinstance(op, Output):
        raise PruneError("the graph output can only end a chain")
    start = _flatten_start(op)
    if start is not None:
        if start != 1:
            raise PruneError(f"a flatten with start_dim={start} mixes channels with the batch; only start_dim=1 is supported")
        return None, _Flow(const.reshape(1, -1), 1, blocker)
    if isinstance(op, _BatchNorm):
        if op.num_features != keep.shape[0]:
            raise PruneError(f"{_name(op)} has num_features={op.num_features}, expected {keep.shape[0]} channels")
        names = [n for n in ("weight", "bias", "running_mean", "running_var") if param_of(op, n) is not None]
        tensors = {n: take_dim(param_of(op, n), keep, 0) for n in names}  # type: ignore[arg-type]
        replacement = rebuild_module(op, tensors, num_features=int(keep.sum()))
        batch_stats = op.training or not op.track_running_stats or op.running_mean is None
        zeroed = prune_bias and param_of(op, "weight") is not None and param_of(op, "bias") is not None
        if blocker is not None and batch_stats and not zeroed:
            raise UnfoldableConstant(
                f"removed channels carry a position-dependent value (after {blocker}) into {_name(op)}, which "
                "normalizes it with batch statistics to something other than a constant, so it cannot be "
                "folded into a bias exactly; use prune_bias=True (or an activation with act(0) = 0)",
                f"{blocker} before {_name(op)} with batch statistics",
            )
        return replacement, _Flow(_batchnorm_const(op, const, removed, prune_bias), None, blocker)
    if isinstance(op, nn.PReLU):
        if op.num_parameters > 1:
            if op.num_parameters != keep.shape[0]:
                raise PruneError(f"PReLU has num_parameters={op.num_parameters}, expected {keep.shape[0]}")
            replacement = rebuild_module(
                op, {"weight": take_dim(op.weight, keep, 0)}, num_parameters=int(keep.sum())
            )
        if bool((const >= 0).all()):  # prelu(x) = x for x >= 0, whatever the slopes
            return replacement, _Flow(const, flatten_from, blocker)
        return replacement, _Flow(F.prelu(const, _values(op.weight, const, "PReLU")), flatten_from, blocker)
    if isinstance(op, (nn.LayerNorm, nn.GroupNorm)):
        raise PruneError(
            f"{_name(op)} normalizes across channels: removing channels changes every "
            "channel's output, so it cannot be a pass-through op of a chain"
        )
    if isinstance(op, _DROPOUTS) or (isinstance(op, Call) and op.target in DROPOUT_FUNCTIONS):
        return None, flow
    if isinstance(op, (MAX_POOL_MODULES, ADAPTIVE_POOL_MODULES)) or (
        isinstance(op, Call) and op.target in MAX_POOL_FUNCTIONS + ADAPTIVE_POOL_FUNCTIONS
    ):
        return None, flow
    pool_blocker = _avg_pool_blocker(op)
    if isinstance(op, AVG_POOL_MODULES) or (isinstance(op, Call) and op.target in AVG_POOL_FUNCTIONS):
        if pool_blocker is not None and _const_nonzero(flow, removed):
            blocker = blocker or pool_blocker
        return None, _Flow(const, flatten_from, blocker)
    if isinstance(op, nn.RReLU):  # eval-mode RReLU: a fixed slope
        return None, _Flow(F.rrelu(const, op.lower, op.upper, training=False), flatten_from, blocker)
    if isinstance(op, nn.Module):
        if any(True for _ in op.parameters()) or any(True for _ in op.buffers()):
            raise PruneError(
                f"{_name(op)} has parameters or buffers that fprune cannot slice per channel; "
                "write a prune function for a pattern containing it"
            )
        with torch.no_grad():
            out = op(const.clone())
    elif isinstance(op, Call):
        if op.target is operator.getitem:
            raise PruneError("operator.getitem is only supported after an LSTM")
        wide = [v for v in (*op.args, *(v for _, v in op.kwargs)) if isinstance(v, Tensor) and v.numel() > 1]
        if wide:
            raise PruneError(
                f"{_name(op)} takes a tensor argument with {wide[0].numel()} entries (one per channel), a model "
                "attribute read in forward that pruning does not slice; use a module such as "
                "nn.PReLU(num_parameters=...), whose weight is sliced, or a single-entry tensor"
            )
        with torch.no_grad():
            out = op(const.clone())
    else:
        raise PruneError(f"unexpected op {op!r} in a chain")
    if not isinstance(out, Tensor) or out.shape != const.shape:
        raise PruneError(f"{_name(op)} does not keep the channel layout (an elementwise op is expected)")
    return None, _Flow(out, flatten_from, blocker)


def _consume(
    consumer: nn.Module, keep: Tensor, flow: _Flow, producer_conv: bool, prune_bias: bool, deferred: _DeferredRows | None
) -> nn.Module:
    """The consumer with the removed input channels cut and their constant folded into its bias."""
    channels = keep.shape[0]
    removed_channels = ~keep
    const = flow.const.reshape(-1)
    weight = _weight(consumer, "consumer")
    rows = deferred.pending.pop(id(weight), None) if deferred is not None else None  # cut with the columns
    fold = _const_nonzero(flow, removed_channels)
    if flow.blocker is not None and fold:
        raise UnfoldableConstant(
            f"removed channels still carry a non-zero constant through {flow.blocker}, which "
            "makes it position-dependent, so it cannot be folded into a bias exactly; "
            "use prune_bias=True (or an activation with act(0) = 0)",
            flow.blocker,
        )
    if isinstance(consumer, nn.Linear):
        if producer_conv and flow.flatten_from is None:
            raise PruneError("a Linear consumer of a conv producer needs a flatten between them")
        if flow.flatten_from is not None:
            if not producer_conv and consumer.in_features != channels:
                raise PruneError(
                    f"a flatten after a Linear producer interleaves its {channels} features with the other dims "
                    f"(Linear consumer has in_features={consumer.in_features}); only a flatten of 2-D features "
                    "(in_features == the producer's out_features) can be pruned"
                )
            if consumer.in_features % channels:
                raise PruneError(
                    f"Linear consumer has in_features={consumer.in_features}, not a multiple of the "
                    f"producer's {channels} channels; cannot map channels to flattened features"
                )
            scale = consumer.in_features // channels
            columns = keep.repeat_interleave(scale)
            const = const.repeat_interleave(scale)
        else:
            if consumer.in_features != channels:
                raise PruneError(f"Linear consumer has in_features={consumer.in_features}, expected {channels}")
            columns = keep
        tensors = {"weight": take_dim(weight, columns, 1) if rows is None else take_rows_columns(weight.detach(), rows, _indices(columns))}
        if fold:
            cut = ~columns
            extra = _values(weight, const, _name(consumer))[:, cut] @ const[cut]
            extra = extra if rows is None else extra[rows.to(extra.device)]
            bias = param_of(consumer, "bias")
            base = _values(bias, const, _name(consumer)) if bias is not None else torch.zeros_like(extra)
            tensors["bias"] = (base + extra).to(weight.dtype)
        return rebuild_module(consumer, tensors, in_features=int(columns.sum()))
    if isinstance(consumer, _ConvNd) and not consumer.transposed:
        if not producer_conv:
            raise PruneError(f"a {_name(consumer)} consumer needs a conv producer")
        if consumer.groups != 1:
            raise PruneError(
                f"{_name(consumer)} consumer has groups={consumer.groups} (grouped / depthwise): "
                "its input channels cannot be cut by a chain pattern"
            )
        if consumer.in_channels != channels:
            raise PruneError(f"{_name(consumer)} consumer has in_channels={consumer.in_channels}, expected {channels}")
        padding = consumer.padding
        padded = padding == "same" or (isinstance(padding, tuple) and any(int(p) > 0 for p in padding))
        if fold and padded and consumer.padding_mode == "zeros":
            raise UnfoldableConstant(
                f"removed channels still carry a non-zero constant (their bias through the chain) "
                f"into a zero-padded {_name(consumer)} (padding={padding}): the constant is not "
                "constant at the borders, so it cannot be folded into a bias exactly; use "
                "prune_bias=True (or an activation with act(0) = 0)",
                f"zero-padded {_name(consumer)} consumer",
            )
        tensors = {"weight": take_dim(weight, keep, 1) if rows is None else take_rows_columns(weight.detach(), rows, _indices(keep))}
        if fold:
            w = _values(weight, const, _name(consumer))[:, removed_channels]
            extra = (w.sum(dim=tuple(range(2, w.dim()))) * const[removed_channels]).sum(dim=1)
            extra = extra if rows is None else extra[rows.to(extra.device)]
            bias = param_of(consumer, "bias")
            base = _values(bias, const, _name(consumer)) if bias is not None else torch.zeros_like(extra)
            tensors["bias"] = (base + extra).to(weight.dtype)
        return rebuild_module(consumer, tensors, in_channels=int(keep.sum()))
    raise PruneError(
        f"{_name(consumer)} cannot be a chain consumer; supported: nn.Linear, nn.Conv1d/2d/3d, the output"
    )


def prune_chain(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """Prune any ``producer -> pass-through ops... -> consumer | output`` chain; pure.

    The producer (nn.Linear, or nn.Conv1d/2d/3d with groups=1) loses the rows where
    ``keep["weight"]`` is False, with its bias entries. Pass-through ops: activations (module,
    function or method form, with their real arguments), pools, BatchNorm (sliced), per-channel
    PReLU (sliced), dropout and a flatten before a Linear consumer (each channel spans
    ``in_features // channels`` consecutive columns). The consumer (nn.Linear or a conv with
    groups=1) loses the matching input columns; the constant that removed channels still emit
    in the masked model (their bias if not `prune_bias`, passed through the ops in their mode)
    is folded into its bias. Returns one replacement module or None per op; `ops` are left
    unchanged. Raises PruneError where the result could not equal the masked model.
    """
    return _chain(prune_chain, ops, keep, prune_bias, None)


def _prune_chain(
    ops: Sequence[Op], keep: Mapping[str, Tensor], prune_bias: bool, deferred: _DeferredRows | None
) -> tuple[nn.Module | None, ...]:
    """:func:`prune_chain`; with `deferred` (apply_prune's state, never a public caller's), the
    row cut of a producer weight in ``deferred.weights`` is left to the chain that consumes it."""
    if len(ops) < 2:
        raise PruneError(f"a chain needs a producer and a consumer or the output, got {len(ops)} op(s)")
    producer = ops[0]
    if not isinstance(producer, (nn.Linear, _ConvNd)) or (isinstance(producer, _ConvNd) and producer.transposed):
        raise PruneError(f"{_name(producer)} cannot be a chain producer; supported: nn.Linear, nn.Conv1d/2d/3d")
    if isinstance(producer, _ConvNd) and producer.groups != 1:
        raise PruneError(
            f"{_name(producer)} producer has groups={producer.groups} (grouped / depthwise): its "
            "output channels cannot be cut by a chain pattern"
        )
    weight = _weight(producer, "producer")
    mask = _weight_mask(keep, producer)
    mask = mask.to(_values_device(weight))
    check_mask(mask, weight.shape[0], f"{_name(producer)} weight")
    is_conv = isinstance(producer, _ConvNd)
    work_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    bias = param_of(producer, "bias")
    const = torch.zeros(weight.shape[0], dtype=work_dtype, device=mask.device)
    if bias is not None and not prune_bias:
        const = torch.where(mask, const, _values(bias, const, f"{_name(producer)} bias (prune_bias=False)"))
    layout = (1, -1) + (1,) * (weight.dim() - 2 if is_conv else 0)
    flow = _Flow(const.reshape(layout), None, None)

    kept = int(mask.sum())
    defer = deferred is not None and id(weight) in deferred.weights
    tensors = {"weight": weight.detach() if defer else take_dim(weight, mask, 0)}  # deferred: cut with the columns
    if bias is not None:
        tensors["bias"] = take_dim(bias, mask, 0)
    size_attr = "out_channels" if is_conv else "out_features"
    rebuilt = rebuild_module(producer, tensors, **{size_attr: kept})
    if defer and deferred is not None:
        deferred.pending[id(_weight(rebuilt, "producer"))] = _indices(mask).to(weight.device)
    replacements: list[nn.Module | None] = [rebuilt]
    for op in ops[1:-1]:
        replacement, flow = _pass(op, mask, flow, prune_bias)
        replacements.append(replacement)
    last = ops[-1]
    if isinstance(last, Output):
        replacements.append(None)
    elif isinstance(last, nn.Module):
        replacements.append(_consume(last, mask, flow, is_conv, prune_bias, deferred))
    else:
        raise PruneError(f"{_name(last)} cannot end a chain; a chain ends with a Linear/Conv consumer or the output")
    return tuple(replacements)


def expect_ops(ops: Sequence[Op], kinds: Sequence[type | tuple[type, ...]], function: str) -> None:
    if len(ops) != len(kinds) or not all(isinstance(op, kind) for op, kind in zip(ops, kinds)):
        got = ", ".join(_name(op) for op in ops)
        raise PruneError(f"{function}: expects {len(kinds)} ops matching its name, got ({got})")


_ACT = (nn.Module, Call)


def prune_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Linear, "output")``: remove rows of a Linear whose output is returned; pure."""
    return _chain(prune_linear, ops, keep, prune_bias, None)


def prune_linear_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Linear, nn.Linear)``: remove rows of the first and columns of the second; pure."""
    return _chain(prune_linear_linear, ops, keep, prune_bias, None)


def prune_linear_activation_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Linear, activation, nn.Linear)``: the activation is a module or a call; pure."""
    return _chain(prune_linear_activation_linear, ops, keep, prune_bias, None)


def prune_conv2d(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, "output")``: remove output channels of a conv whose output is returned; pure."""
    return _chain(prune_conv2d, ops, keep, prune_bias, None)


def prune_conv2d_conv2d(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, nn.Conv2d)``: output channels of the first, input channels of the second; pure."""
    return _chain(prune_conv2d_conv2d, ops, keep, prune_bias, None)


def prune_conv2d_activation_conv2d(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, activation, nn.Conv2d)``; pure."""
    return _chain(prune_conv2d_activation_conv2d, ops, keep, prune_bias, None)


def prune_conv2d_activation_pool_conv2d(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, activation, pool, nn.Conv2d)``; pure."""
    return _chain(prune_conv2d_activation_pool_conv2d, ops, keep, prune_bias, None)


def prune_conv2d_pool_activation_conv2d(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, pool, activation, nn.Conv2d)``; pure."""
    return _chain(prune_conv2d_pool_activation_conv2d, ops, keep, prune_bias, None)


def prune_conv2d_pool_flatten_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.Conv2d, adaptive pool, flatten, nn.Linear)``: each kept channel keeps its
    ``in_features // out_channels`` consecutive Linear columns; pure."""
    return _chain(prune_conv2d_pool_flatten_linear, ops, keep, prune_bias, None)


_CHAIN_KINDS: Mapping[object, Sequence[type | tuple[type, ...]]] = MappingProxyType({
    prune_linear: (nn.Linear, Output),
    prune_linear_linear: (nn.Linear, nn.Linear),
    prune_linear_activation_linear: (nn.Linear, _ACT, nn.Linear),
    prune_conv2d: (nn.Conv2d, Output),
    prune_conv2d_conv2d: (nn.Conv2d, nn.Conv2d),
    prune_conv2d_activation_conv2d: (nn.Conv2d, _ACT, nn.Conv2d),
    prune_conv2d_activation_pool_conv2d: (nn.Conv2d, _ACT, _ACT, nn.Conv2d),
    prune_conv2d_pool_activation_conv2d: (nn.Conv2d, _ACT, _ACT, nn.Conv2d),
    prune_conv2d_pool_flatten_linear: (nn.Conv2d, _ACT, _ACT, nn.Linear),
})
"""Each named chain function -> the ops it expects, by position (matching its name); read-only."""

CHAIN_FUNCTIONS: frozenset[object] = frozenset({prune_chain, *_CHAIN_KINDS})
"""The prune functions built on :func:`prune_chain` (apply_prune may defer a producer's row
cut through them, with :func:`prune_deferring`)."""


def _chain(
    function: object, ops: Sequence[Op], keep: Mapping[str, Tensor], prune_bias: bool, deferred: _DeferredRows | None
) -> tuple[nn.Module | None, ...]:
    """`function` (one of :data:`CHAIN_FUNCTIONS`) on `ops`: its ops checked, then the chain
    pruned. Called by `function` itself (`deferred` None), a refusal starts with its name;
    apply_prune's private path (:func:`prune_deferring`) names the chain itself."""
    name = getattr(function, "__name__", "prune_chain")
    kinds = _CHAIN_KINDS.get(function)
    try:
        if kinds is not None:
            expect_ops(ops, kinds, name)
        return _prune_chain(ops, keep, prune_bias, deferred)
    except PruneError as error:
        if deferred is not None:
            raise
        raise prefixed(name, error) from None


def prune_deferring(
    function: object, ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool, deferred: _DeferredRows
) -> tuple[nn.Module | None, ...]:
    """What ``function(ops, keep, prune_bias=prune_bias)`` returns, for `function` one of
    :data:`CHAIN_FUNCTIONS`, except that the row cut of a producer weight in ``deferred.weights``
    is left to the later chain that cuts its columns (one gather), recorded in `deferred`.
    apply_prune's private path: the public prune functions never defer (they are pure), and
    `deferred` is the only state this reads or writes."""
    if function not in CHAIN_FUNCTIONS:
        raise PruneError(f"prune_deferring: {function!r} is not a built-in chain function")
    return _chain(function, ops, keep, prune_bias, deferred)
