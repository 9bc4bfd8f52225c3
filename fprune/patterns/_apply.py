"""The pattern half of ``apply_prune`` and ``masked_parameters``: run each match's prune
function on a copy (consumers first, deferring a producer's row cut to one gather), check ties,
and the masked parameters a match's masks stand for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._errors import PruneError
from .._util.checks import names_by_tensor, trace
from .._util.copy import copy_module
from ._defaults import default_patterns
from ._functions import (
    CHAIN_FUNCTIONS,
    UnfoldableConstant,
    cut_pending_rows,
    deferred_rows,
    prune_deferring,
    rebuild_module,
)
from ._match import explain_unmatched
from ._records import (
    OUTPUT,
    Attr,
    Call,
    Match,
    ModuleOp,
    Op,
    Output,
    Pattern,
    PruneFunction,
)

ModelT = TypeVar("ModelT", bound=nn.Module)

Unshrunk = tuple[tuple[str, str], ...]
"""The producers ``unfoldable="keep"`` left full size: (weight FQN, why), in the order of the masks."""


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
        gm = trace(model, "apply_prune")
    except PruneError as error:  # any tracing failure only weakens the hint
        return f"the model could not be traced to find out why ({str(error).partition('symbolic_trace failed (')[2].partition(')')[0]})"
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


def _masked_in_place(
    model: nn.Module, masks: Mapping[str, Tensor], match: Match, prune_bias: bool, current: Mapping[str, nn.Module]
) -> tuple[nn.Module | None, ...]:
    """The replacements that leave `match` unshrunk but exact: each of its modules with the
    tensors :func:`masked_parameters` zeroes replaced by their masked values (the producer's
    removed rows; with `prune_bias` their bias and BatchNorm entries), None for the others."""
    keep = {fqn: masks[fqn] for fqn in match.mask_fqns if fqn in masks}
    masked = masked_match_parameters(model, keep, [match], prune_bias, dict(model.named_parameters(remove_duplicate=False)))
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
            raise PruneError(f"`{op.fqn}` was already rebuilt by another chain; cannot leave it unshrunk")
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


def _zero_channels(result: dict[str, Tensor], model: nn.Module, module_fqn: str, mask: Tensor, names: tuple[str, ...]) -> None:
    module = model.get_submodule(module_fqn)
    for name in names:
        if isinstance(getattr(module, name, None), nn.Parameter):
            key = f"{module_fqn}.{name}"
            result[key] = result[key] * mask.to(dtype=result[key].dtype, device=result[key].device)


def prune_matches(
    model: ModelT, masks: Mapping[str, Tensor], matches: Sequence[Match], *, prune_bias: bool | Mapping[str, bool], unfoldable: str
) -> tuple[ModelT, Unshrunk]:
    """The pattern half of ``apply_prune`` (model and masks already checked): the pruned copy
    and the producers ``unfoldable="keep"`` left unshrunk."""
    active = _coverage(model, masks, matches)
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


def masked_match_parameters(
    model: nn.Module, masks: Mapping[str, Tensor], matches: Sequence[Match], prune_bias: bool | Mapping[str, bool], tensors: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The pattern half of ``masked_parameters`` (model and masks already checked; `tensors`
    the model's tensors by FQN)."""
    active = _coverage(model, masks, matches)
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
