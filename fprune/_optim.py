"""Carry an optimizer's state over to a pruned model (``prune_optimizer_state``); pure."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._apply import prune_reporting_unshrunk, split_records
from ._errors import PruneError
from ._util.checks import named_tensors, names_by_tensor
from ._util.copy import copy_module
from ._util.gather import take
from .groups._apply import group_keeps, kept_indices
from .groups._records import ChannelGroup
from .patterns._records import Match


def prune_optimizer_state(
    optimizer: torch.optim.Optimizer | Mapping[str, object],
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    prune_bias: bool | Mapping[str, bool] = True,
    param_fqns: Sequence[str] | None = None,
) -> dict[str, object]:
    """A new optimizer state dict for the pruned copy ``apply_prune(model, masks, matches, ...)``.

    Load it into an optimizer of the same class built the same way over the pruned copy's
    parameters (same param groups, same order: ``Adam(pruned.parameters())`` for
    ``Adam(model.parameters())``) and training continues where it stopped, without
    restarting the optimizer: a step on the pruned copy changes each kept entry exactly as a
    step on the masked model (``masked_parameters``) changes it (but for weight decay on a bias
    that ``apply_prune`` folded a constant into: the decay sees the folded value; and for the
    weight of an RMSNorm that ``apply_prune`` rescales, ``ChannelGroup.rescales``, and of the
    query / key projections rescaled with a per-head norm's eps (Qwen3): its entries are
    the masked ones times ``sqrt(size / kept)``, so its gradient is divided by that factor and a
    step moves it differently, though the outputs stay equal; its state is sliced as it is).

    Per parameter, every state tensor with the parameter's shape (Adam's ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``; ...) is cut to the entries
    the pruned parameter keeps, by the same slicing ``apply_prune`` does (a consumer's bias
    that ``apply_prune`` folds a constant into keeps its state entries, sliced). Scalars
    (``step``) and other values are copied; hyperparameters are kept. Parameters outside the
    optimizer stay outside; a parameter without state keeps none. A parameter pruning adds
    (the bias ``prune_bias=False`` folds into a consumer that had none) gets no state, and
    joins the param group of its module's other parameters, right after them, as
    ``pruned.parameters()`` lists it; it is left out if none of them is in the optimizer.
    Tied parameters have one entry, as in the optimizer.

    Args:
        optimizer: the optimizer over `model`'s parameters, or its ``state_dict()``. A state
            dict names its parameters by index: pass `param_fqns`, or build the optimizer over
            ``model.named_parameters()`` so its param groups carry ``param_names``.
        model, masks, matches, prune_bias: exactly what was (or will be) passed to
            :func:`apply_prune`.
        param_fqns: for a state dict, the model FQN of each parameter index, in index order
            (``[n for n, _ in model.named_parameters()]`` for ``Adam(model.parameters())``).

    Returns:
        ``{"state": ..., "param_groups": ...}`` for ``Optimizer.load_state_dict``. It shares no
        tensor with the input; the optimizer, its state and `model` are left unchanged.

    Cost: with channel groups, one ``apply_prune`` and the sliced state: the kept entries
    come from the groups themselves. With pattern matches, ``apply_prune`` runs three times,
    twice on float64 copies of the model's parameters (about four times the model's size in
    extra memory while it runs): those copies hold each entry's own index, so the slicing
    found is the prune functions' own, whichever they are.

    Raises:
        PruneError: an optimizer parameter that is not one of `model`'s, parameter names that
            are missing or unknown, a state tensor of a pruned parameter that is neither its
            shape nor a scalar, tied parameters that pruning would separate, or anything
            :func:`apply_prune` refuses.
    """
    state_dict, names = _indexed(optimizer, model, param_fqns)
    originals = dict(model.named_parameters())
    canonical = _canonical_names(model)
    pruned, _ = prune_reporting_unshrunk(model, masks, matches, prune_bias=prune_bias, caller="prune_optimizer_state")
    _check_ties(model, pruned)
    every_name = set(canonical)
    added = [fqn for fqn, _ in pruned.named_parameters() if fqn not in every_name]
    groups, _ = split_records(matches, "prune_optimizer_state")
    index_maps: Mapping[str, Tensor | Mapping[int, Tensor]]
    if groups is not None:  # apply_prune's own slicing of each tensor, read off the groups
        index_maps = kept_indices(groups, group_keeps(groups, masks), named_tensors(model))
    else:
        index_maps = _index_maps(model, masks, matches)

    raw_state = state_dict["state"]
    raw_groups = state_dict["param_groups"]
    assert isinstance(raw_state, Mapping) and isinstance(raw_groups, Sequence)
    placed: set[str] = set()
    new_groups: list[dict[str, object]] = []
    new_state: dict[int, dict[str, object]] = {}
    next_index = 0
    for group in raw_groups:
        assert isinstance(group, Mapping)
        indices = _indices(group)
        entries: list[tuple[str, str, int | None]] = [(names[i], canonical[names[i]], i) for i in indices]
        for fqn in added:
            owner = fqn.rpartition(".")[0]
            same = [k for k, (_, c, _) in enumerate(entries) if c.rpartition(".")[0] == owner]
            if same and fqn not in placed:
                placed.add(fqn)
                entries.insert(same[-1] + 1, (fqn, fqn, None))
        new_indices: list[int] = []
        for given, fqn, old in entries:
            new_indices.append(next_index)
            values = raw_state.get(old) if old is not None else None
            if values is not None:
                if not isinstance(values, Mapping):
                    raise PruneError(f"prune_optimizer_state: optimizer state of `{given}` is a {type(values).__name__}; expected a dict")
                new_state[next_index] = {
                    str(key): _slice(value, originals[fqn], index_maps.get(fqn), given, str(key))
                    for key, value in values.items()
                }
            next_index += 1
        packed: dict[str, object] = {k: copy.deepcopy(v) for k, v in group.items() if k not in ("params", "param_names")}
        packed["params"] = new_indices
        if "param_names" in group:
            packed["param_names"] = [given for given, _, _ in entries]
        new_groups.append(packed)
    return {"state": new_state, "param_groups": new_groups}


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Every parameter FQN (tied ones too) -> the first FQN of the same tensor."""
    first: dict[int, str] = {}
    names: dict[str, str] = {}
    for fqn, param in model.named_parameters(remove_duplicate=False):
        names[fqn] = first.setdefault(id(param), fqn)
    return names


def _indices(group: Mapping[str, object]) -> list[int]:
    params = group.get("params")
    if not isinstance(params, Sequence) or not all(isinstance(i, int) for i in params):
        raise PruneError("prune_optimizer_state: an optimizer state dict's param group must list its parameters as ints under 'params'")
    return [i for i in params if isinstance(i, int)]


def _indexed(
    optimizer: torch.optim.Optimizer | Mapping[str, object], model: nn.Module, param_fqns: Sequence[str] | None
) -> tuple[Mapping[str, object], dict[int, str]]:
    """The optimizer's state dict and the model FQN of each of its parameter indices."""
    canonical = _canonical_names(model)
    names: dict[int, str] = {}
    if isinstance(optimizer, torch.optim.Optimizer):
        state_dict: Mapping[str, object] = optimizer.state_dict()
        fqn_of = {id(p): fqn for fqn, p in model.named_parameters()}
        packed_groups = state_dict["param_groups"]
        assert isinstance(packed_groups, list)
        for g, (group, packed) in enumerate(zip(optimizer.param_groups, packed_groups)):
            for param, index in zip(group["params"], packed["params"]):
                fqn = fqn_of.get(id(param))
                if fqn is None:
                    raise PruneError(
                        f"prune_optimizer_state: optimizer parameter {index} (param group {g}, shape {tuple(param.shape)}) is not a "
                        f"parameter of the {type(model).__name__} given; pass the model the optimizer was built over"
                    )
                names[index] = fqn
    else:
        if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("state"), Mapping) or not isinstance(optimizer.get("param_groups"), list):
            raise PruneError(
                "prune_optimizer_state: expects a torch.optim.Optimizer or its state_dict() "
                f"(a dict with 'state' and 'param_groups'), got {type(optimizer).__name__}"
            )
        state_dict = optimizer
        groups = optimizer["param_groups"]
        assert isinstance(groups, list)
        given: list[str] = []
        if param_fqns is not None:
            given = list(param_fqns)
        for g, group in enumerate(groups):
            if not isinstance(group, Mapping):
                raise PruneError(f"prune_optimizer_state: param group {g} of the optimizer state dict is a {type(group).__name__}; expected a dict")
            indices = _indices(group)
            group_names = group.get("param_names")
            for k, index in enumerate(indices):
                if param_fqns is not None:
                    if index >= len(given):
                        raise PruneError(
                            f"prune_optimizer_state: param_fqns names {len(given)} parameters, but the optimizer state dict has parameter "
                            f"index {index}; give one FQN per parameter index, in index order"
                        )
                    names[index] = given[index]
                elif isinstance(group_names, list) and k < len(group_names) and isinstance(group_names[k], str):
                    names[index] = group_names[k]
                else:
                    raise PruneError(
                        "prune_optimizer_state: the optimizer state dict does not name its parameters; pass the optimizer itself, or "
                        "param_fqns (the model FQN of each parameter index), or build the optimizer over "
                        "model.named_parameters()"
                    )
        if param_fqns is not None and len(given) != len(names):
            raise PruneError(
                f"prune_optimizer_state: param_fqns names {len(given)} parameters, but the optimizer state dict has {len(names)}; "
                "give one FQN per parameter index, in index order"
            )
        state = optimizer["state"]
        assert isinstance(state, Mapping)
        for index in state:
            if index not in names:
                raise PruneError(f"prune_optimizer_state: the optimizer state dict has state for parameter index {index!r}, which no param group lists")
    for index, fqn in names.items():
        if fqn not in canonical:
            close = [n for n in canonical if n.endswith(fqn.rpartition(".")[2])][:3]
            hint = f"; parameters with that name: {', '.join(close)}" if close else ""
            raise PruneError(f"prune_optimizer_state: optimizer parameter {index} is named `{fqn}`, which is not a parameter of the model{hint}")
    return state_dict, names


def _check_ties(model: nn.Module, pruned: nn.Module) -> None:
    """Tied parameters must stay one tensor in the pruned copy, or no state can follow them."""
    for names in names_by_tensor(model.named_parameters(remove_duplicate=False)).values():
        if len(names) > 1 and len({id(pruned.get_parameter(n)) for n in names}) > 1:
            raise PruneError(
                f"prune_optimizer_state: pruning separates the tied parameters {', '.join(f'`{n}`' for n in names)} (one of them is sliced, "
                "the others are not), so no optimizer state can follow them; untie them, or prune neither"
            )


def _coded(model: nn.Module, coded: bool) -> nn.Module:
    """A copy of `model` whose parameters hold their flat entry indices (float64, exact up to
    2**53) where ``(p.dim() >= 2) == coded``, and zeros elsewhere; buffers are shared."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        if (param.dim() >= 2) == coded:
            values = torch.arange(param.numel(), dtype=torch.float64, device=param.device).reshape(param.shape)
        else:
            values = torch.zeros(param.shape, dtype=torch.float64, device=param.device)
        memo[id(param)] = nn.Parameter(values, requires_grad=param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    return copy_module(model, memo)


def _index_maps(
    model: nn.Module, masks: Mapping[str, Tensor], matches: Sequence[Match] | Sequence[ChannelGroup]
) -> dict[str, Tensor]:
    """Per pruned parameter FQN, the flat index in the original of each entry it keeps.

    apply_prune itself is run on copies of the model whose parameters hold their entry
    indices, so the maps are its own slicing. It only ever adds into a bias (the constant
    folded from removed channels, a product with the consumer's weight), so weights are read
    from a copy with zero biases and biases from a copy with zero weights: nothing is added.
    """
    weights, _ = prune_reporting_unshrunk(_coded(model, True), masks, matches, prune_bias=True, caller="prune_optimizer_state")
    others, _ = prune_reporting_unshrunk(_coded(model, False), masks, matches, prune_bias=True, caller="prune_optimizer_state")
    maps: dict[str, Tensor] = {}
    for fqn, param in model.named_parameters():
        codes = (weights if param.dim() >= 2 else others).get_parameter(fqn).detach()
        if codes.shape == param.shape and torch.equal(codes.reshape(-1), torch.arange(param.numel(), dtype=codes.dtype, device=codes.device)):
            continue
        valid = (codes >= 0) & (codes < param.numel()) & (codes == codes.round())
        if codes.dim() != param.dim() or not bool(valid.all()):
            raise PruneError(f"prune_optimizer_state: could not find which entries of `{fqn}` pruning keeps; its optimizer state cannot be sliced")
        maps[fqn] = codes.to(torch.long)
    return maps


def _slice(value: object, param: Tensor, index: Tensor | Mapping[int, Tensor] | None, fqn: str, key: str) -> object:
    """One state value of `param`, for the pruned parameter (`index`: the flat index of each
    kept entry, or the kept indices per dim, or None when nothing is cut)."""
    if not isinstance(value, Tensor):
        return copy.deepcopy(value)
    if index is None or value.dim() == 0:
        return value.detach().clone()
    if value.shape != param.shape:
        raise PruneError(
            f"prune_optimizer_state: optimizer state `{key}` of `{fqn}` has shape {tuple(value.shape)}, neither the parameter's shape "
            f"{tuple(param.shape)} nor a scalar, so it cannot be cut to the kept channels; reset it after pruning"
        )
    if isinstance(index, Mapping):
        return take(value.detach(), index)
    return value.detach().reshape(-1)[index.reshape(-1).to(value.device)].reshape(index.shape)
