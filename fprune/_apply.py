"""Turn keep-masks and matches into a physically pruned copy (``apply_prune``) or into masked
parameters for ``torch.func.functional_call`` (``masked_parameters``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar, overload

import torch
from torch import Tensor, nn

from ._errors import PruneError, prefixed
from ._util.checks import check_model, names_by_tensor, trace
from ._util.tensor_ops import TensorOp
from .calibrate._statistics import Statistics
from .groups._apply import apply_groups, masked_group_parameters
from .groups._records import ChannelGroup
from .patterns._apply import Unshrunk, masked_match_parameters, prune_matches
from .patterns._defaults import default_patterns
from .patterns._match import match_patterns
from .patterns._records import Match

ModelT = TypeVar("ModelT", bound=nn.Module)

Unfoldable = Literal["refuse", "keep"]
"""What ``apply_prune`` does with a producer whose removed channels' constant cannot be folded."""


def _check_masks(
    model: nn.Module, masks: Mapping[str, Tensor], dims: Mapping[str, int] | None = None, *, tied_ok: bool = False
) -> dict[str, Tensor]:
    """The model's tensors by FQN, after checking every mask against its tensor.

    A mask runs over dim 0 of its tensor, or over ``dims[fqn]`` (a channel group's producer
    dim, e.g. 1 for an Embedding).
    """
    if not isinstance(masks, Mapping):
        raise PruneError(f"masks must be a mapping from tensor FQN to bool keep-mask, got {type(masks).__name__}")
    tensors: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    for fqn, mask in masks.items():
        if fqn not in tensors:
            close = [name for name in tensors if name.endswith(fqn.rpartition(".")[2])][:3]
            hint = f"; tensors with that name: {', '.join(close)}" if close else ""
            raise PruneError(f"mask for `{fqn}`: the model has no parameter of that name{hint}")
        tensor = tensors[fqn]
        if not isinstance(mask, Tensor):
            raise PruneError(f"mask for `{fqn}` is a {type(mask).__name__}; expected a torch.bool tensor")
        if mask.dtype != torch.bool:
            raise PruneError(
                f"mask for `{fqn}` has dtype {mask.dtype}; expected torch.bool (True = keep the row), "
                "e.g. from fprune.saliency_mask or `scores > threshold`"
            )
        if tensor.dim() < 2:
            raise PruneError(f"mask for `{fqn}`: the tensor has {tensor.dim()} dim(s); masks go on a producer's 2+-dim weight")
        dim = dims.get(fqn, 0) if dims is not None else 0
        if mask.shape != (tensor.shape[dim],):
            what = "one entry per row: the weight's dim 0" if dim == 0 else f"one entry per channel: the weight's dim {dim}"
            raise PruneError(f"mask for `{fqn}` has shape {tuple(mask.shape)}, expected ({tensor.shape[dim]},) ({what})")
        if mask.device.type == "meta":
            raise PruneError(f"mask for `{fqn}` is on the meta device and has no values; give keep-masks as CPU torch.bool tensors")
        if mask.device != tensor.device and not (tensor.device.type == "meta" and mask.device.type == "cpu"):
            raise PruneError(f"mask for `{fqn}` is on {mask.device}, but the tensor is on {tensor.device}; move the mask")
        if not bool(mask.any()):
            raise PruneError(f"mask for `{fqn}` is all False: it would remove every row; keep at least one")
    shared = names_by_tensor(tensors.items())
    for fqn in masks:
        names = shared[id(tensors[fqn])]
        if len(names) > 1 and not tied_ok:
            raise PruneError(
                f"mask for `{fqn}`: the parameter is shared with {', '.join(n for n in names if n != fqn)}; pruning one "
                "would desynchronise them: untie them first (give each module its own copy), or leave this mask out"
            )
    return tensors


def _producer_dims(groups: Sequence[ChannelGroup] | None) -> dict[str, int] | None:
    if groups is None:
        return None
    return {m.fqn: m.dim for g in groups for m in g.members if m.role == "producer"}


def split_records(records: Sequence[Match] | Sequence[ChannelGroup], function: str) -> tuple[list[ChannelGroup] | None, list[Match]]:
    """``(groups, [])`` if `records` are channel groups, ``(None, matches)`` if they are pattern
    matches (or empty); a PruneError from `function` for a mix or anything else."""
    groups = [r for r in records if isinstance(r, ChannelGroup)]
    matches = [r for r in records if isinstance(r, Match)]
    if groups and matches:
        raise PruneError(f"{function}: pass either pattern matches or channel groups, not both")
    if len(groups) + len(matches) != len(records):
        other = next(r for r in records if not isinstance(r, (ChannelGroup, Match)))
        raise PruneError(
            f"{function}: matches must be fprune.Match records, as returned by fprune.match_patterns, or "
            f"fprune.ChannelGroup records from fprune.channel_groups; got a {type(other).__name__}"
        )
    return (groups, []) if groups else (None, matches)


@overload
def apply_prune(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    unfoldable: Unfoldable = "refuse",
    compensate: None = None,
) -> ModelT: ...


@overload
def apply_prune(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[ChannelGroup],
    *,
    prune_bias: Literal[True] = True,
    unfoldable: Unfoldable = "refuse",
    compensate: Statistics | None = None,
) -> ModelT: ...


@overload
def apply_prune(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    unfoldable: Unfoldable = "refuse",
    compensate: Statistics | None = None,
) -> ModelT: ...


def apply_prune(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    unfoldable: Unfoldable = "refuse",
    compensate: Statistics | None = None,
) -> ModelT:
    """A physically pruned copy of `model`; `model` itself is left exactly as it was.

    Args:
        model: the model `matches` were found in (the traced GraphModule or the original).
        masks: keep-masks by producer weight FQN (``"seq.0.weight"``): 1-D torch.bool over the
            weight's dim 0, True = keep, on the weight's device.
        matches: from :func:`match_patterns` (matches without a mask are left alone), or
            channel groups from :func:`channel_groups` (a mask keyed by any producer weight of
            a group prunes the whole group; groups always remove their biases).
        prune_bias: True removes the removed rows' bias with them. False keeps the masked
            model's semantics of a layer whose bias stays: the constant the removed channels
            still emit is carried through the chain's ops (in their train/eval mode) and folded into the
            consumer's bias. A mapping gives it per producer weight FQN (default True), e.g.
            ``{"seq.0.weight": False}``; mixed values between neighbours are exact too.
        unfoldable: what to do with a producer whose removed channels still emit a constant
            that cannot be folded into a bias exactly: into a zero-padded consumer conv or a
            padded average pool, or an LSTM that keeps its biases on removed units (with
            ``prune_bias=False``, or an activation with ``act(0) != 0``). ``"refuse"`` (the
            default) raises PruneError. ``"keep"`` leaves that producer full size, as torch.ao
            does: its removed rows are zeroed (and, with `prune_bias`, their bias and
            BatchNorm entries), the ops after it and its consumer's columns are untouched, so
            the result is still exact; every other chain is pruned as usual. One
            ``UserWarning`` then names the producers left unshrunk (a producer whose pruned
            weight still has all its rows, while its mask removes some, is one of them).
        compensate: bias compensation (FLAP, An et al. 2024), with channel groups only: the
            :class:`~fprune.calibrate.Statistics` from :func:`~fprune.calibrate.collect_statistics`
            (with these groups, on this model). Every layer that reads a pruned group's removed
            channels (a consumer) takes their mean input into its bias:
            ``bias[o] += sum over removed c of mean[c] * sum over the kernel of W[o, c, ...]``
            (a HF Conv1D's weight is ``[in, out]``: ``W[c, o]``), computed in float64 and cast
            to the bias's dtype; a Linear or conv without a bias gets one (``requires_grad``
            like its weight). The copy then computes what the model computes with the removed
            channels replaced by their means where each consumer reads them (instead of the
            masked model's zeros, or the constant a fold adds). A Hugging Face copy whose config
            says its layers have no bias gets the flag that builds them (``mlp_bias``,
            ``attention_bias``), with zero biases for the other layers the flag gives one, so
            :func:`fprune.hf.save_pretrained` can save it. Consumers must be a Linear, a HF
            Conv1D, or a Conv1d / 2d / 3d with groups=1 and no zero padding (a zero-padded conv
            reads zeros at its borders, not the means).

    Returns:
        A new model of the same class with smaller modules (``in_features``, ``out_channels``,
        ... updated), no parametrizations and no hooks added; ``requires_grad``, dtype, device
        and train/eval mode preserved. It computes what the masked model computes
        (``functional_call(model, masked_parameters(model, masks, matches), x)``), with the
        removed channels gone from any tensor it returns.

    Raises:
        PruneError: a mask of the wrong dtype / shape / device, for an unknown FQN, or for a
            tensor no match covers (the message says why, e.g. "feeds a residual add"); or
            where the pruned model could not compute exactly what the masked model computes.
            With `compensate`: pattern matches instead of channel groups; a consumer of a
            pruned group that cannot take the means into a bias (another layer type, a
            grouped or zero-padded conv), that the statistics did not see, or whose statistics
            count other channels; tied consumer weights or biases.
    """
    pruned, unshrunk = prune_reporting_unshrunk(
        model, masks, matches, prune_bias=prune_bias, unfoldable=unfoldable, caller="apply_prune", compensate=compensate
    )
    if unshrunk:
        warnings.warn(
            f"apply_prune: left {len(unshrunk)} producer(s) unshrunk (unfoldable='keep'), their removed rows "
            f"zeroed instead of cut: {describe_unshrunk(unshrunk, prune_bias, 'pass prune_bias=True for them')}",
            UserWarning,
            stacklevel=2,
        )
    return pruned


def describe_unshrunk(unshrunk: Unshrunk, prune_bias: bool | Mapping[str, bool], fix: str) -> str:
    """The producers left unshrunk, why, and what would shrink them, for a warning. `fix` says
    how to set prune_bias=True (the remedy where prune_bias=False made the constant)."""
    listed = "; ".join(f"`{fqn}` ({why})" for fqn, why in unshrunk)
    flags = [prune_bias if isinstance(prune_bias, bool) else bool(prune_bias.get(fqn, True)) for fqn, _ in unshrunk]
    if not any(flags):
        remedy = f"{fix} to shrink them"
    elif all(flags):
        remedy = "an activation with act(0) = 0 before the padded layer would shrink them"
    else:
        remedy = f"{fix} (and an activation with act(0) = 0 before the padded layer) to shrink them"
    return (
        f"{listed}. The constant their removed channels still emit (their bias with prune_bias=False, or "
        f"act(0) != 0) cannot be folded into a bias exactly; the result is still exact. {remedy[0].upper()}{remedy[1:]}"
    )


def prune_reporting_unshrunk(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    unfoldable: Unfoldable = "refuse",
    caller: str = "apply_prune",
    compensate: Statistics | None = None,
    recorded: dict[str, list[TensorOp]] | None = None,
) -> tuple[ModelT, Unshrunk]:
    """:func:`apply_prune` without its warning: the pruned copy and the producers that
    ``unfoldable="keep"`` left unshrunk, as ``(weight FQN, reason)`` pairs (empty with
    ``"refuse"``). `caller` names the public function in error messages. With channel groups,
    `recorded` collects what is done to each tensor (``make_plan``)."""
    if unfoldable not in ("refuse", "keep"):
        raise PruneError(f"{caller}: `unfoldable` must be 'refuse' or 'keep', got {unfoldable!r}")
    if compensate is not None and not isinstance(compensate, Statistics):
        raise PruneError(
            f"{caller}: `compensate` must be fprune.calibrate.Statistics (from collect_statistics) or None, "
            f"got {type(compensate).__name__}"
        )
    check_model(model, caller)
    groups, match_list = split_records(matches, caller)
    if compensate is not None and groups is None:
        raise PruneError(
            f"{caller}: `compensate` (bias compensation) works with channel groups only, which say which layers read "
            "the removed channels: find them with fprune.channel_groups and pass those instead of pattern matches"
        )
    try:
        _check_masks(model, masks, _producer_dims(groups), tied_ok=groups is not None)  # groups keep ties whole
        if groups is not None:
            if prune_bias is not True:
                raise PruneError("channel groups always prune biases with their channels; leave prune_bias=True")
            return apply_groups(model, groups, masks, caller, compensate, recorded), ()  # groups are exact: nothing to fold
        return prune_matches(model, masks, match_list, prune_bias=prune_bias, unfoldable=unfoldable)
    except PruneError as error:  # the core's refusals, named after the public function called
        raise prefixed(caller, error) from None


@overload
def masked_parameters(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | None = None,
    *,
    prune_bias: bool | Mapping[str, bool] = True,
) -> dict[str, Tensor]: ...


@overload
def masked_parameters(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[ChannelGroup],
    *,
    prune_bias: Literal[True] = True,
) -> dict[str, Tensor]: ...


@overload
def masked_parameters(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
) -> dict[str, Tensor]: ...


def masked_parameters(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup] | None = None,
    *,
    prune_bias: bool | Mapping[str, bool] = True,
) -> dict[str, Tensor]:
    """Every parameter of `model` by FQN, with what pruning removes zeroed; `model` is unchanged.

    Zeroed: the producer rows where a mask is False and, with `prune_bias`, their bias entries
    and the affine entries of a BatchNorm (or an LSTM chain's LayerNorm) on those channels. An
    LSTM's masks zero the unit's rows in all 4 gates of ``weight_ih``/``weight_hh``/biases.
    `prune_bias` may be a mapping per producer weight FQN, as in :func:`apply_prune`.
    The masked tensors are ``parameter * mask`` products, differentiable with respect to the
    originals, for ``torch.func.functional_call(model, masked_parameters(...), args)``.
    `matches` defaults to ``match_patterns(symbolic_trace(model), default_patterns())``; with
    channel groups, every producer row and carrier entry (bias, BatchNorm, depthwise filter,
    added parameter) of a removed channel is zeroed.
    Raises PruneError for the same mask errors as :func:`apply_prune`.
    """
    return masked_parameters_for(model, masks, matches, prune_bias=prune_bias, caller="masked_parameters")


def masked_parameters_for(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup] | None,
    *,
    prune_bias: bool | Mapping[str, bool],
    caller: str,
) -> dict[str, Tensor]:
    """:func:`masked_parameters`, its refusals named after `caller` (the public function)."""
    check_model(model, caller)
    if matches is None:
        traced = trace(model, caller, ", or pass matches found on a GraphModule you traced yourself")
        matches = match_patterns(traced, default_patterns())
    groups, match_list = split_records(matches, caller)
    try:
        tensors = _check_masks(model, masks, _producer_dims(groups), tied_ok=groups is not None)
        if groups is not None:
            return masked_group_parameters(model, groups, masks)
        return masked_match_parameters(model, masks, match_list, prune_bias, tensors)
    except PruneError as error:  # the core's refusals, named after the public function called
        raise prefixed(caller, error) from None
