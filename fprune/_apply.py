"""Turn keep-masks and matches into a physically pruned copy (``apply_prune``) or into masked
parameters for ``torch.func.functional_call`` (``masked_parameters``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._checks import check_model, names_by_tensor
from ._copy import copy_module
from ._errors import PruneError
from ._group_prune import apply_groups, masked_group_parameters
from ._groups import ChannelGroup
from ._match import explain_unmatched, match_patterns
from ._patterns import default_patterns
from ._prune_functions import CHAIN_FUNCTIONS, UnfoldableConstant, cut_pending_rows, deferred_rows, prune_deferring, rebuild_module
from ._records import Attr, Call, Match, ModuleOp, Op, OUTPUT, Output, Pattern, PruneFunction

__all__ = ["Unfoldable", "Unshrunk", "apply_prune", "describe_unshrunk", "masked_parameters", "prune_reporting_unshrunk"]

ModelT = TypeVar("ModelT", bound=nn.Module)

Unfoldable = Literal["refuse", "keep"]
"""What ``apply_prune`` does with a producer whose removed channels' constant cannot be folded."""

Unshrunk = tuple[tuple[str, str], ...]
"""The producers ``unfoldable="keep"`` left full size: (weight FQN, why), in the order of the masks."""


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


def _coverage(model: nn.Module, masks: Mapping[str, Tensor], matches: Sequence[Match]) -> list[Match]:
    """The matches that have a mask, after checking every mask is covered by one match."""
    if not all(isinstance(m, Match) for m in matches):
        raise PruneError("matches must be fprune.Match records, as returned by fprune.match_patterns")
    owner: dict[str, Match] = {}
    for match in matches:
        for fqn in match.mask_fqns:
            if fqn in owner and owner[fqn] is not match:
                raise PruneError(f"two matches prune `{fqn}` ({owner[fqn].nodes} and {match.nodes}); pass each match once")
            owner[fqn] = match
    modules = dict(model.named_modules())
    for match in matches:
        for op in match.ops:
            if isinstance(op, ModuleOp) and (op.fqn not in modules or type(modules[op.fqn]) is not op.type):
                raise PruneError(f"match {match.nodes}: the model has no {op.type.__name__} at `{op.fqn}`; were the matches found on another model?")
    for fqn in masks:
        if fqn not in owner:
            raise PruneError(f"mask for `{fqn}`: no match prunes it: {_why_unmatched(model, fqn, matches)}")
    return [m for m in matches if any(f in masks for f in m.mask_fqns)]


def _why_unmatched(model: nn.Module, fqn: str, matches: Sequence[Match]) -> str:
    patterns: dict[Pattern, PruneFunction] = default_patterns()
    patterns.update({m.pattern: m.prune_fn for m in matches})
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure only weakens the hint
        return f"the model could not be traced to find out why ({type(error).__name__})"
    return explain_unmatched(gm, fqn, patterns)


def _order(active: list[Match]) -> list[Match]:
    """Consumers first: a match runs after every match whose producer it consumes.

    Folding a removed channel's constant into a consumer must see the consumer's own rows
    already removed (the masked model zeroes them), so matches run against chain order.
    Iterative (a depth-first post-order with an explicit stack), so chains of any length work.
    """
    producer_of = {m.ops[0].fqn: m for m in active if isinstance(m.ops[0], ModuleOp)}
    done: set[int] = set()
    on_path: set[int] = set()
    ordered: list[Match] = []
    for root in active:
        if id(root) in done:
            continue
        stack: list[tuple[Match, bool]] = [(root, False)]
        while stack:
            match, expanded = stack.pop()
            if expanded:
                on_path.discard(id(match))
                if id(match) not in done:
                    done.add(id(match))
                    ordered.append(match)
                continue
            if id(match) in done:
                continue
            if id(match) in on_path:
                raise PruneError(f"matches form a cycle at {match.nodes}")
            on_path.add(id(match))
            stack.append((match, True))
            for op in reversed(match.ops[1:]):
                if isinstance(op, ModuleOp) and op.fqn in producer_of and id(producer_of[op.fqn]) not in done:
                    stack.append((producer_of[op.fqn], False))
    return ordered


def _resolve(op: object, model: nn.Module, current: Mapping[str, nn.Module]) -> Op:
    if isinstance(op, ModuleOp):
        if op.fqn in current:
            return current[op.fqn]
        return model.get_submodule(op.fqn)
    if isinstance(op, Call):
        def value(v: object) -> object:
            return _attr(model, v.fqn) if isinstance(v, Attr) else v
        return Call(op.target, tuple(value(v) for v in op.args), tuple((k, value(v)) for k, v in op.kwargs))
    if isinstance(op, Output):
        return OUTPUT
    raise PruneError(f"unexpected op record {op!r}")


def _attr(model: nn.Module, fqn: str) -> object:
    owner, _, name = fqn.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def _match_prune_bias(match: Match, prune_bias: bool | Mapping[str, bool]) -> bool:
    """The prune_bias of one match: the flag, or the mapping's value for its tensors (default True)."""
    if isinstance(prune_bias, bool):
        return prune_bias
    values = {bool(prune_bias[fqn]) for fqn in match.mask_fqns if fqn in prune_bias}
    if len(values) > 1:
        raise PruneError(
            f"{' and '.join(f'`{f}`' for f in match.mask_fqns if f in prune_bias)} are pruned together "
            f"(chain {' -> '.join(match.nodes)}) but prune_bias gives them different values; give them the same"
        )
    return values.pop() if values else True


def _producer_dims(groups: Sequence[ChannelGroup] | None) -> dict[str, int] | None:
    if groups is None:
        return None
    return {m.fqn: m.dim for g in groups for m in g.members if m.role == "producer"}


def _groups_only(records: Sequence[Match] | Sequence[ChannelGroup], function: str) -> Sequence[ChannelGroup] | None:
    """The records as channel groups if they are groups, None if they are matches."""
    if records and all(isinstance(r, ChannelGroup) for r in records):
        return records  # type: ignore[return-value]
    if any(isinstance(r, ChannelGroup) for r in records):
        raise PruneError(f"{function}: pass either pattern matches or channel groups, not both")
    return None


def apply_prune(
    model: ModelT,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    unfoldable: Unfoldable = "refuse",
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
    """
    pruned, unshrunk = prune_reporting_unshrunk(
        model, masks, matches, prune_bias=prune_bias, unfoldable=unfoldable, caller="apply_prune"
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
) -> tuple[ModelT, Unshrunk]:
    """:func:`apply_prune` without its warning: the pruned copy and the producers that
    ``unfoldable="keep"`` left unshrunk, as ``(weight FQN, reason)`` pairs (empty with
    ``"refuse"``). `caller` names the public function in error messages."""
    if unfoldable not in ("refuse", "keep"):
        raise PruneError(f"{caller}: `unfoldable` must be 'refuse' or 'keep', got {unfoldable!r}")
    check_model(model, caller)
    groups = _groups_only(matches, caller)
    _check_masks(model, masks, _producer_dims(groups), tied_ok=groups is not None)  # groups keep ties whole
    if groups is not None:
        if prune_bias is not True:
            raise PruneError(f"{caller}: channel groups always prune biases with their channels; leave prune_bias=True")
        return apply_groups(model, groups, masks), ()  # groups are exact: nothing to fold
    active = _coverage(model, masks, matches)  # type: ignore[arg-type]
    current: dict[str, nn.Module] = {}
    unshrunk: list[tuple[str, str]] = []
    deferred = deferred_rows(_cut_twice(model, active))  # passed explicitly to the built-in chains only
    with torch.no_grad():
        for match in _order(active):
            ops = [_resolve(op, model, current) for op in match.ops]
            producer = match.ops[0]
            assert isinstance(producer, ModuleOp)
            keep = {fqn[len(producer.fqn) + 1 :]: masks[fqn] for fqn in match.mask_fqns if fqn in masks}
            flag = _match_prune_bias(match, prune_bias)
            pending = dict(deferred.pending) if unfoldable == "keep" else {}  # a refused chain may take or add some
            try:
                if match.prune_fn in CHAIN_FUNCTIONS:  # the same result, with the one-gather row cut
                    new = prune_deferring(match.prune_fn, ops, keep, prune_bias=flag, deferred=deferred)
                else:
                    new = match.prune_fn(ops, keep, prune_bias=flag)
            except UnfoldableConstant as error:
                if unfoldable == "refuse":
                    raise PruneError(f"pruning `{match.weight_fqn}` (chain {' -> '.join(match.nodes)}): {error}") from None
                deferred.pending.clear()
                deferred.pending.update(pending)
                new = _masked_in_place(model, masks, match, flag, current)
                unshrunk += [(fqn, f"chain {' -> '.join(match.nodes)}: {error.reason}") for fqn in match.mask_fqns if fqn in masks]
            except PruneError as error:
                raise PruneError(f"pruning `{match.weight_fqn}` (chain {' -> '.join(match.nodes)}): {error}") from None
            if not isinstance(new, tuple) or len(new) != len(ops):
                raise PruneError(
                    f"prune function {getattr(match.prune_fn, '__name__', match.prune_fn)!r} returned "
                    f"{type(new).__name__}; expected a tuple of {len(ops)} entries (module or None per op)"
                )
            for record, replacement in zip(match.ops, new):
                if replacement is None:
                    continue
                if not isinstance(record, ModuleOp) or not isinstance(replacement, nn.Module):
                    raise PruneError(f"prune function for {match.nodes} returned a replacement for a non-module op")
                current[record.fqn] = replacement
        current = {fqn: cut_pending_rows(module, deferred) for fqn, module in current.items()}
    _check_ties(model, current)
    memo: dict[int, object] = {id(model.get_submodule(fqn)): module for fqn, module in current.items()}
    order = {fqn: index for index, fqn in enumerate(masks)}
    return copy_module(model, memo), tuple(sorted(unshrunk, key=lambda entry: order[entry[0]]))


def _masked_in_place(
    model: nn.Module, masks: Mapping[str, Tensor], match: Match, prune_bias: bool, current: Mapping[str, nn.Module]
) -> tuple[nn.Module | None, ...]:
    """The replacements that leave `match` unshrunk but exact: each of its modules with the
    tensors :func:`masked_parameters` zeroes replaced by their masked values (the producer's
    removed rows; with `prune_bias` their bias and BatchNorm entries), None for the others."""
    keep = {fqn: masks[fqn] for fqn in match.mask_fqns if fqn in masks}
    masked = masked_parameters(model, keep, [match], prune_bias=prune_bias)
    replacements: list[nn.Module | None] = []
    for op in match.ops:
        module = model.get_submodule(op.fqn) if isinstance(op, ModuleOp) else None
        prefix = f"{op.fqn}." if isinstance(op, ModuleOp) and op.fqn else ""
        changed = {
            name: masked[prefix + name]
            for name, tensor in (module.named_parameters(recurse=False) if module is not None else ())
            if masked.get(prefix + name, tensor) is not tensor
        }
        if module is None or not changed:
            replacements.append(None)
            continue
        assert isinstance(op, ModuleOp)
        if op.fqn in current:  # chains run consumers first: a producer is rebuilt only by its own chain
            raise PruneError(f"apply_prune: `{op.fqn}` was already rebuilt by another chain; cannot leave it unshrunk")
        rebuilt = rebuild_module(module, changed)
        if isinstance(rebuilt, nn.RNNBase):
            rebuilt._init_flat_weights()
        replacements.append(rebuilt)
    return tuple(replacements)


def _cut_twice(model: nn.Module, active: Sequence[Match]) -> set[int]:
    """id() of the producer weights that one built-in chain cuts by rows and a later one by
    columns: their rows are cut with the columns, in one gather (see ``deferred_rows``)."""
    consumed = {
        match.ops[-1].fqn for match in active if match.prune_fn in CHAIN_FUNCTIONS and isinstance(match.ops[-1], ModuleOp)
    }
    weights: set[int] = set()
    for match in active:
        producer = match.ops[0]
        if match.prune_fn in CHAIN_FUNCTIONS and isinstance(producer, ModuleOp) and producer.fqn in consumed:
            weight = getattr(model.get_submodule(producer.fqn), "weight", None)
            if isinstance(weight, Tensor):
                weights.add(id(weight))
    return weights


def _check_ties(model: nn.Module, replaced: Mapping[str, nn.Module]) -> None:
    """PruneError if a rebuilt module holds a tensor that is also reachable under a name outside
    it (tied weights): the copy would hold two tensors where the model holds one."""
    if not replaced:
        return
    names = names_by_tensor([*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])
    for module_fqn in replaced:
        prefix = f"{module_fqn}." if module_fqn else ""
        module = model.get_submodule(module_fqn)
        for name, tensor in [*module.named_parameters(prefix=module_fqn, remove_duplicate=False), *module.named_buffers(prefix=module_fqn, remove_duplicate=False)]:
            outside = [n for n in names.get(id(tensor), []) if not n.startswith(prefix)]
            if outside:
                raise PruneError(
                    f"pruning rebuilds `{module_fqn}`, whose `{name}` is the same tensor as `{outside[0]}` (tied weights); "
                    "the copy would untie them: untie them first (give each module its own copy), or leave out the "
                    f"masks whose chains reach `{module_fqn}` (or prune with channel groups, which keep ties whole)"
                )


def _row_mask(mask: Tensor, tensor: Tensor) -> Tensor:
    return mask.reshape((-1,) + (1,) * (tensor.dim() - 1)).to(dtype=tensor.dtype, device=tensor.device)


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
    check_model(model, "masked_parameters")
    if matches is None:
        try:
            traced = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - reported as a PruneError
            raise PruneError(
                f"masked_parameters: with matches=None it traces the model, and torch.fx.symbolic_trace failed "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}); the model "
                "must be fx-traceable (no data-dependent control flow; mark such submodules as leaf modules), or pass "
                "matches found on a GraphModule you traced yourself"
            ) from None
        matches = match_patterns(traced, default_patterns())
    groups = _groups_only(matches, "masked_parameters")
    tensors = _check_masks(model, masks, _producer_dims(groups), tied_ok=groups is not None)
    if groups is not None:
        return masked_group_parameters(model, groups, masks)
    active = _coverage(model, masks, matches)  # type: ignore[arg-type]
    result: dict[str, Tensor] = dict(model.named_parameters())
    flags = prune_bias
    for match in active:
        prune_bias = _match_prune_bias(match, flags)
        producer = match.ops[0]
        assert isinstance(producer, ModuleOp)
        module = model.get_submodule(producer.fqn)
        if isinstance(module, nn.LSTM):
            for fqn in match.mask_fqns:
                if fqn not in masks:
                    continue
                layer = fqn.rpartition("_l")[2]
                for name in (f"weight_ih_l{layer}", f"weight_hh_l{layer}") + ((f"bias_ih_l{layer}", f"bias_hh_l{layer}") if prune_bias and module.bias else ()):
                    key = f"{producer.fqn}.{name}"
                    result[key] = result[key] * _row_mask(masks[fqn], tensors[key])
            if prune_bias and len(match.ops) == 4 and isinstance(match.ops[2], ModuleOp):
                last = f"{producer.fqn}.weight_ih_l{module.num_layers - 1}"
                hh = f"{producer.fqn}.weight_hh_l{module.num_layers - 1}"
                unit_mask = masks.get(last, masks.get(hh))
                if unit_mask is not None:
                    _zero_channels(result, model, match.ops[2].fqn, unit_mask[: module.hidden_size], ("weight", "bias"))
            continue
        mask = masks[match.weight_fqn]
        result[match.weight_fqn] = result[match.weight_fqn] * _row_mask(mask, tensors[match.weight_fqn])
        if prune_bias:
            _zero_channels(result, model, producer.fqn, mask, ("bias",))
            for op in match.ops[1:]:
                if isinstance(op, ModuleOp) and issubclass(op.type, _BatchNorm):
                    _zero_channels(result, model, op.fqn, mask, ("weight", "bias"))
    return result


def _zero_channels(result: dict[str, Tensor], model: nn.Module, module_fqn: str, mask: Tensor, names: tuple[str, ...]) -> None:
    module = model.get_submodule(module_fqn)
    for name in names:
        if isinstance(getattr(module, name, None), nn.Parameter):
            key = f"{module_fqn}.{name}"
            result[key] = result[key] * mask.to(dtype=result[key].dtype, device=result[key].device)
