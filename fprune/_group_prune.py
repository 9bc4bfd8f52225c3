"""Scores, keep-masks and physical pruning for channel groups; all pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ._checks import check_model, names_by_tensor
from ._copy import copy_module
from ._errors import PruneError
from ._gather import take
from ._groups import ChannelGroup, ChannelSlice, SizeLiteral, channel_groups, with_sizes
from ._mha import HeadPrunedMultiheadAttention
from ._norms import Scratch, dim_norms, lp_rows, row_column_norms

__all__ = ["Criterion", "group_masks", "group_scores", "l1_norm", "l2_norm", "prune_channels"]

ModelT = TypeVar("ModelT", bound=nn.Module)

Criterion = Callable[[Tensor], Tensor]
"""Scores rows: takes ``[entries, features]`` (one row per channel position of a weight),
returns ``[entries]``. Higher means more important."""


def l2_norm(rows: Tensor) -> Tensor:
    """The L2 norm of each row (the default criterion)."""
    out: Tensor = torch.linalg.vector_norm(rows, ord=2, dim=1)
    return out


def l1_norm(rows: Tensor) -> Tensor:
    """The L1 norm of each row."""
    return lp_rows(rows, 1)


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return tensors


def _tensor(tensors: Mapping[str, Tensor], fqn: str) -> Tensor:
    tensor = tensors.get(fqn)
    if tensor is None:
        raise PruneError(f"the model has no tensor `{fqn}`; were the groups found on another model?")
    return tensor


def _take(values: Tensor, index: Sequence[int]) -> Tensor:
    """`values[index]` along dim 0: a view for an increasing range, else a gather."""
    if isinstance(index, range) and index.step > 0:
        return values[index.start : index.stop : index.step]
    return values[torch.tensor(index, dtype=torch.long, device=values.device)]


def _put(target: Tensor, index: Sequence[int], values: Tensor) -> None:
    """``target[index] = values`` along dim 0, in place (`target` is the caller's own tensor)."""
    if isinstance(index, range) and index.step > 0:
        target[index.start : index.stop : index.step] = values
    else:
        target[torch.tensor(index, dtype=torch.long, device=target.device)] = values


def _covers(index: Sequence[int], size: int) -> bool:
    return isinstance(index, range) and index == range(size)


_Norms = dict[tuple[str, int], Tensor]
"""Slice norms already computed in one scoring call, by (tensor FQN, dim)."""


def _norm_both_dims(tensors: Mapping[str, Tensor], groups: Sequence[ChannelGroup], p: int, cache: _Norms, scratch: Scratch) -> None:
    """Fill `cache` for each weight scored along both dim 0 and dim 1 by `groups` (a layer
    that is one group's producer and the next one's consumer), reading it once for both."""
    dims: dict[str, set[int]] = {}
    for group in groups:
        for member in group.members:
            if member.role != "carrier":
                dims.setdefault(member.fqn, set()).add(member.dim)
    for fqn, wanted in dims.items():
        tensor = _tensor(tensors, fqn).detach()
        if wanted == {0, 1} and tensor.dim() >= 2 and tensor.device.type != "meta" and (fqn, 0) not in cache:
            cache[(fqn, 0)], cache[(fqn, 1)] = row_column_norms(tensor, p, scratch)


def _member_scores(
    tensor: Tensor, fqn: str, dim: int, positions: Sequence[int], criterion: Criterion, cache: _Norms, scratch: Scratch
) -> Tensor:
    """The criterion of each row ``tensor.select(dim, position)``, for `positions`."""
    if criterion is l2_norm or criterion is l1_norm:
        norms = cache.get((fqn, dim))
        if norms is None:
            norms = cache[(fqn, dim)] = dim_norms(tensor, dim, 2 if criterion is l2_norm else 1, scratch)
        return _take(norms, positions)
    rows = tensor.movedim(dim, 0)
    rows = rows if _covers(positions, rows.shape[0]) else _take(rows, positions)
    return criterion(rows.reshape(len(positions), -1).to(torch.float32)).to(torch.float32)


def group_scores(model: nn.Module, group: ChannelGroup, criterion: Criterion = l2_norm) -> Tensor:
    """Per-channel importance of `group`: shape ``[group.size]``; `model` is unchanged.

    Each weight member (producer rows, consumer columns) is scored row by row with
    `criterion` over its channel positions; a channel's score sums its positions' scores over
    all weight members. Biases, BatchNorm entries and other carriers do not count.
    """
    return _scores(_tensors(model), group, criterion, {}, {})


def _scores(tensors: Mapping[str, Tensor], group: ChannelGroup, criterion: Criterion, cache: _Norms, scratch: Scratch) -> Tensor:
    scores: Tensor | None = None
    for member in group.members:
        if member.role == "carrier":
            continue
        tensor = _tensor(tensors, member.fqn).detach()
        if tensor.dim() < 2:
            continue
        if tensor.device.type == "meta":
            raise PruneError(
                f"`{member.fqn}` is on the meta device and has no values to score; load the weights, or "
                "write keep-masks yourself (CPU torch.bool tensors keyed by each group's producers[0])"
            )
        values = _member_scores(tensor, member.fqn, member.dim, member.positions, criterion, cache, scratch)
        if scores is None:
            scores = torch.zeros(group.size, dtype=torch.float32, device=tensor.device)
        if _covers(member.channels, group.size):
            scores += values
        elif isinstance(member.channels, range) and member.channels.step > 0:
            scores[member.channels.start : member.channels.stop : member.channels.step] += values
        else:
            scores = scores.index_add(0, torch.tensor(member.channels, dtype=torch.long, device=tensor.device), values)
    if scores is None:
        raise PruneError(f"group produced by {', '.join(group.producers) or '(none)'} has no weight to score")
    return scores


def _check_ignore(model: nn.Module, tensors: Mapping[str, Tensor], ignore: Collection[str] | None) -> None:
    if ignore is None:
        return
    if isinstance(ignore, str):
        raise PruneError(f"group_masks: `ignore` must be a collection of FQNs, got the string {ignore!r}; write {{{ignore!r}}}")
    modules = {fqn for fqn, _ in model.named_modules(remove_duplicate=False)}
    for entry in ignore:
        if entry not in tensors and entry not in modules:
            close = [name for name in sorted(tensors) if name.rpartition(".")[0] == entry.rpartition(".")[0]][:3]
            hint = f" (tensors there: {', '.join(close)})" if close else ""
            raise PruneError(f"group_masks: `ignore` names `{entry}`, which is neither a tensor nor a module of the model{hint}")


def _ignored(group: ChannelGroup, ignore: Collection[str] | None) -> bool:
    if ignore is None:
        return group.reaches_output
    for member in group.members:
        module = member.fqn.rpartition(".")[0]
        if member.fqn in ignore or module in ignore:
            return True
    return False


def _round_kept(kept: int, size: int, round_to: int) -> int:
    if round_to <= 1 or size <= round_to:
        return max(1, min(size, kept))
    rounded = int(math.floor(kept / round_to + 0.5)) * round_to
    return max(round_to, min(size, rounded))


def _producer_mask(group: ChannelGroup, keep: Tensor, producer: str) -> Tensor:
    """The keep-mask over `producer`'s rows that keeps the channels `keep` keeps."""
    member = _producer_member(group, producer)
    positions = member.positions
    rows = max(positions[0], positions[-1]) + 1 if isinstance(positions, range) else max(positions) + 1
    mask = torch.ones(rows, dtype=torch.bool, device=keep.device)
    _put(mask, positions, _take(keep, member.channels))
    return mask


def group_masks(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    level: float,
    *,
    ignore: Collection[str] | None = None,
    round_to: int = 1,
    criterion: Criterion = l2_norm,
    global_ranking: bool = False,
) -> dict[str, Tensor]:
    """Keep-masks removing a fraction `level` of the channels of each prunable group.

    Args:
        model: the model the groups were found in; left unchanged.
        groups: from :func:`channel_groups`; groups that are not prunable are skipped.
        level: fraction of channels removed, in [0, 1).
        ignore: tensor or module FQNs never pruned: a group with any member among them is
            skipped. None (the default) skips the groups that forward returns (the
            classifier's outputs).
        round_to: kept counts are rounded to the nearest multiple of it, ties up (at least
            one multiple). Groups pruned in whole units (attention heads) count units instead:
            ``int(units * level)`` are removed, at least one is kept.
        criterion: scores the rows of each weight member (see :func:`group_scores`).
        global_ranking: rank channels across all groups (scores normalized by each group's
            mean) instead of removing `level` of every group.

    Returns:
        Bool keep-masks for :func:`apply_prune`, each over a producer weight's channel dim
        (dim 0; dim 1 for an Embedding), keyed by its FQN: per pruned group, its first producer
        whose rows hold the whole group, or, where none does (the branches of a concat), one
        mask per branch. Every producer keeps at least one channel.
    """
    check_model(model, "group_masks")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or math.isnan(level) or not 0 <= level < 1:
        raise PruneError(f"group_masks: `level` must be in [0, 1), got {level!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"group_masks: `round_to` must be a positive int, got {round_to!r}")
    tensors = _tensors(model)  # once: per group it would make scoring quadratic in depth
    _check_ignore(model, tensors, ignore)
    chosen = [g for g in groups if g.prunable and not _ignored(g, ignore)]
    cache: _Norms = {}  # a tensor read by several groups (a concat's consumer) is scored once
    scratch: Scratch = {}
    if criterion is l2_norm or criterion is l1_norm:
        _norm_both_dims(tensors, chosen, 2 if criterion is l2_norm else 1, cache, scratch)
    scores = [_scores(tensors, g, criterion, cache, scratch) for g in chosen]
    del scratch
    for group, score in zip(chosen, scores):
        if bool(torch.isnan(score).any()):
            bad = [m.fqn for m in group.members if m.role != "carrier" and not bool(torch.isfinite(_tensor(tensors, m.fqn)).all())]
            raise PruneError(
                f"group_masks: the scores of the channels produced by {', '.join(group.producers)} contain NaN: "
                f"{', '.join(f'`{b}`' for b in bad) or 'a weight'} holds NaN or inf; fix the weights, or leave the group out with `ignore`"
            )
    kept_counts: list[int]
    if global_ranking and chosen:
        normalized = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
        owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(chosen)])
        remove = int(normalized.numel() * level)
        order = torch.sort(normalized, stable=True).indices[:remove]
        removed_per = torch.bincount(owner[order.cpu()], minlength=len(chosen))
        kept_counts = [g.size - int(r) for g, r in zip(chosen, removed_per)]
    else:
        kept_counts = [g.size - int(g.size * level) for g in chosen]
    masks: dict[str, Tensor] = {}
    for group, score, kept in zip(chosen, scores, kept_counts):
        keep = torch.zeros(group.size, dtype=torch.bool, device=score.device)
        if group.units:  # whole heads: rank units by their channels' summed score
            units = [torch.tensor(u, device=score.device) for u in group.units]
            unit_scores = torch.stack([score[u].sum() for u in units])
            kept_units = max(1, len(units) - int(len(units) * (1 - kept / group.size) + 1e-9))
            for u in torch.sort(unit_scores, descending=True, stable=True).indices[:kept_units].tolist():
                keep[units[u]] = True
        else:
            kept = _round_kept(kept, group.size, round_to)
            keep[torch.sort(score, descending=True, stable=True).indices[:kept]] = True
        for producer in group.producers:  # no layer may lose all its outputs (a concat branch)
            channels = _channel_index(_producer_member(group, producer).channels, keep.device)
            if not bool(keep[channels].any()):
                keep[channels[torch.argmax(score[channels])]] = True
        for producer in _covering_producers(group):
            masks[producer] = _producer_mask(group, keep, producer)
    return masks


def _covering_producers(group: ChannelGroup) -> list[str]:
    """Producers whose masks together decide every channel: one whose rows hold the whole
    group if there is one (the first such), else enough branches (a concat's parts)."""
    covered = torch.zeros(group.size, dtype=torch.bool)
    chosen: list[str] = []
    for producer in group.producers:
        channels = _producer_member(group, producer).channels
        if _covers(channels, group.size) or set(channels) >= set(range(group.size)):
            return [producer]
    for producer in group.producers:
        index = _channel_index(_producer_member(group, producer).channels, covered.device)
        if not bool(covered[index].all()):
            covered[index] = True
            chosen.append(producer)
    return chosen


# --- applying group masks ---------------------------------------------------------------------


def _channel_index(channels: Sequence[int], device: torch.device) -> Tensor:
    if isinstance(channels, range):
        return torch.arange(channels.start, channels.stop, channels.step, device=device)
    return torch.tensor(channels, dtype=torch.long, device=device)


def _producer_member(group: ChannelGroup, fqn: str) -> ChannelSlice:
    return next(m for m in group.members if m.fqn == fqn and m.role == "producer")


def group_keeps(groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[int, Tensor]:
    """Each masked group's keep vector over its channels (by index in `groups`), checked.

    A group is decided by the masks of its producers together: each mask decides the channels
    its weight's rows hold (all of them, or a concat branch's part), and masks that decide a
    channel twice must agree.
    """
    where: dict[str, int] = {}
    for index, group in enumerate(groups):
        for producer in group.producers:
            where[producer] = index
    partial: dict[int, tuple[Tensor, Tensor, list[str]]] = {}  # keep, decided, masks given
    for fqn, mask in masks.items():
        found = where.get(fqn)
        if found is None:
            roles = [(m.role, i) for i, g in enumerate(groups) for m in g.members if m.fqn == fqn]
            if roles:
                owners = sorted({p for _, i in roles for p in groups[i].producers})
                raise PruneError(
                    f"mask for `{fqn}`: it is not a producer of a group; key the mask by a producer "
                    f"weight of its group ({', '.join(owners) or 'the group has none'})"
                )
            raise PruneError(f"mask for `{fqn}`: no channel group has it as a producer")
        index = found
        group = groups[index]
        if not group.prunable:
            reasons = "; ".join(f"`{b.node}`: {b.reason}" for b in group.blockers) or "it has no producer"
            raise PruneError(f"mask for `{fqn}`: its channel group cannot be pruned: {reasons}")
        member = _producer_member(group, fqn)
        values = _take(mask, member.positions)
        if index not in partial:
            partial[index] = (
                torch.ones(group.size, dtype=torch.bool, device=mask.device),
                torch.zeros(group.size, dtype=torch.bool, device=mask.device),
                [],
            )
        keep, known, given = partial[index]
        if not given and _covers(member.channels, group.size):  # each channel once, in order
            keep.copy_(values)
            known.fill_(True)
        else:
            channels = _channel_index(member.channels, mask.device)
            if bool((known[channels] & (keep[channels] != values)).any()):
                raise PruneError(
                    f"masks for `{fqn}` and `{given[0]}` disagree, but they prune one channel group; give one of them"
                )
            keep[channels] = values
            known[channels] = True
            if not bool((keep[channels] == values).all()):
                raise PruneError(f"mask for `{fqn}`: rows that are one channel of the group disagree")
        given.append(fqn)
    keeps: dict[int, Tensor] = {}
    for index, (keep, known, given) in partial.items():
        group = groups[index]
        named = ", ".join(f"`{g}`" for g in given)
        for unit in group.units:
            u = torch.tensor(unit, device=keep.device)
            unit_values = keep[u][known[u]]
            if unit_values.numel() and not bool((unit_values == unit_values[0]).all()):
                raise PruneError(
                    f"mask for {named} removes part of an attention head ({len(unit)} channels with its "
                    "key / value dims); heads are pruned whole: keep or remove all rows of a head"
                )
            if unit_values.numel():
                keep[u] = unit_values[0]
                known[u] = True
        if not bool(known.all()):
            others = [p for p in group.producers if p not in given]
            raise PruneError(
                f"mask for {named} does not decide every channel of its group (its rows hold only part of it, "
                f"e.g. one branch of a concat); add masks for other producers of the group: {', '.join(others)}"
            )
        if not bool(keep.any()):
            raise PruneError(f"mask for {named} removes every channel of its group; keep at least one")
        for producer in group.producers:
            member = _producer_member(group, producer)
            if not bool(_take(keep, member.channels).any()):
                raise PruneError(
                    f"mask for {named} removes every channel that `{producer}` produces (its part of the group, "
                    "e.g. one branch of a concat), which would leave a layer with no outputs; keep at least one of them"
                )
        keeps[index] = keep
    return keeps


def _kept_indices(
    groups: Sequence[ChannelGroup], keeps: Mapping[int, Tensor], tensors: Mapping[str, Tensor]
) -> dict[str, dict[int, Tensor]]:
    """Per tensor FQN and dim, the indices the pruned tensor keeps (only where some go).

    Slices cut alike (a layer's rows, its bias and the next BatchNorm's four vectors) share
    one index tensor: on a small model the int64 indices would otherwise rival the pruned
    vectors they select."""
    cuts: dict[str, dict[int, list[tuple[int, Sequence[int], Sequence[int]]]]] = {}
    for index, keep in keeps.items():
        if bool(keep.all()):
            continue
        for member in groups[index].members:
            cuts.setdefault(member.fqn, {}).setdefault(member.dim, []).append((index, member.positions, member.channels))
    shared: dict[tuple[object, ...], Tensor] = {}
    kept: dict[str, dict[int, Tensor]] = {}
    for fqn, dims in cuts.items():
        tensor = _tensor(tensors, fqn)
        for dim, parts in dims.items():
            key = (tensor.shape[dim], *((i, _hashable(p), _hashable(c)) for i, p, c in parts))
            found = shared.get(key)
            if found is None:
                vector = torch.ones(tensor.shape[dim], dtype=torch.bool, device=keeps[parts[0][0]].device)
                for i, positions, channels in parts:
                    _put(vector, positions, _take(keeps[i], channels))
                found = shared[key] = vector.nonzero().squeeze(1)
            kept.setdefault(fqn, {})[dim] = found
    return kept


def _hashable(index: Sequence[int]) -> object:
    return index if isinstance(index, (range, tuple)) else tuple(index)


def _check_ties(tensors: Mapping[str, Tensor], kept: Mapping[str, Mapping[int, Tensor]]) -> None:
    """PruneError unless every name of a tied tensor is sliced alike (channel_groups unites
    such names' channels, so this holds for its groups; groups from elsewhere may break it)."""
    names = names_by_tensor(tensors.items())
    for fqn, index in kept.items():
        for alias in names[id(tensors[fqn])]:
            other = kept.get(alias, {})
            if alias != fqn and (other.keys() != index.keys() or not all(torch.equal(other[d], index[d]) for d in index)):
                raise PruneError(
                    f"`{fqn}` and `{alias}` are one tensor (tied weights), but the masks slice them differently, "
                    "which would untie them; find the groups with channel_groups on this model, or untie them first"
                )


def _resize(module: nn.Module, tensors: Mapping[str, Tensor]) -> dict[str, object]:
    """New size attributes of a module of a known type, from its new tensors."""
    weight = tensors.get("weight")
    if isinstance(module, nn.Linear) and weight is not None:
        return {"in_features": weight.shape[1], "out_features": weight.shape[0]}
    if isinstance(module, _ConvNd) and weight is not None:
        if module.transposed:
            return {"in_channels": weight.shape[0], "out_channels": weight.shape[1] * module.groups}
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return {"in_channels": weight.shape[0], "out_channels": weight.shape[0], "groups": weight.shape[0]}
        return {"in_channels": weight.shape[1] * module.groups, "out_channels": weight.shape[0]}
    if isinstance(module, _BatchNorm):
        stat = tensors.get("running_mean", weight)
        return {"num_features": stat.shape[0]} if stat is not None else {}
    if isinstance(module, nn.PReLU) and weight is not None:
        return {"num_parameters": weight.shape[0]}
    if isinstance(module, nn.Embedding) and weight is not None:
        return {"embedding_dim": weight.shape[1]}
    if isinstance(module, nn.LSTM):
        sizes = set()
        for layer in range(module.num_layers):
            hh = tensors.get(f"weight_hh_l{layer}", getattr(module, f"weight_hh_l{layer}"))
            sizes.add(hh.shape[1])
        if len(sizes) > 1:
            raise PruneError(
                f"nn.LSTM has one hidden_size for all layers, but the masks keep {sorted(sizes)} units in its layers; "
                "keep the same number of units in every layer"
            )
        ih = tensors.get("weight_ih_l0", getattr(module, "weight_ih_l0"))
        return {"hidden_size": sizes.pop(), "input_size": ih.shape[1]}
    return {}


def _resize_attention(module: nn.MultiheadAttention) -> None:
    """A pruned nn.MultiheadAttention (of the copy) becomes a HeadPrunedMultiheadAttention."""
    rows = module.in_proj_weight
    assert rows is not None
    module.__class__ = HeadPrunedMultiheadAttention
    module.num_heads = rows.shape[0] // 3 // module.head_dim
    module.embed_dim = module.out_proj.out_features
    module.kdim = module.vdim = rows.shape[1]


def apply_groups(model: ModelT, groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> ModelT:
    """The physically pruned copy for group masks (see :func:`fprune.apply_prune`)."""
    keeps = group_keeps(groups, masks)
    tensors = _tensors(model)
    new_tensors: dict[str, Tensor] = {}
    kept = _kept_indices(groups, keeps, tensors)
    _check_ties(tensors, kept)
    with torch.no_grad():
        for fqn in list(kept):
            new_tensors[fqn] = take(tensors[fqn].detach(), kept.pop(fqn))  # indices go when done
    memo: dict[int, object] = {}
    for fqn, value in new_tensors.items():
        old = tensors[fqn]
        memo[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    pruned = copy_module(model, memo)
    by_module: dict[str, dict[str, Tensor]] = {}
    for fqn, value in new_tensors.items():
        owner, _, name = fqn.rpartition(".")
        by_module.setdefault(owner, {})[name] = value
    for owner, changed in by_module.items():
        module = pruned.get_submodule(owner) if owner else pruned
        for key, attribute in _resize(model.get_submodule(owner) if owner else model, changed).items():
            setattr(module, key, attribute)
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    for fqn, module in pruned.named_modules():
        if isinstance(module, nn.MultiheadAttention) and any(k == fqn or k.startswith(f"{fqn}.") for k in by_module):
            _resize_attention(module)
    updates = {
        (literal.node, literal.index): (literal, sum(bool(keeps[index][c]) for c in literal.heads) * literal.factor)
        for index in keeps
        for literal in groups[index].literals
    }
    updates = {key: value for key, value in updates.items() if value[1] != value[0].value}
    if updates:
        _update_head_counts(model, pruned, {k: v[1] for k, v in updates.items()}, [v[0] for v in updates.values()])
    shapes = next((g.example_shapes for g in groups if g.example_shapes is not None), None)
    if shapes is not None:  # the safety net: the copy runs once on meta tensors of the example shapes
        from ._verify import check_pruned

        cut = [index for index, keep in keeps.items() if not bool(keep.all())]
        if cut:
            check_pruned("apply_prune", model, pruned, groups, cut, shapes)
    return pruned


def _update_head_counts(
    model: nn.Module, pruned: nn.Module, new: Mapping[tuple[str, int], int], literals: Sequence[SizeLiteral]
) -> None:
    """Make the pruned copy's forward compute the new head counts, and check that it does.

    A GraphModule gets the numbers in its graph replaced. Any other model gets the integer
    attributes of the modules that wrote them (``self.num_heads``) set to the new counts; then
    both models are traced and their graphs must be the same but for exactly those numbers.
    """
    if isinstance(pruned, fx.GraphModule):
        nodes = {n.name: n for n in pruned.graph.nodes}
        for (name, index), value in new.items():
            _set_size(nodes[name], index, value)
        pruned.recompile()
        return
    candidates: dict[tuple[str, str], int] = {}  # (module, attribute) -> its new value (-1: ambiguous)
    for literal in literals:
        owner = pruned.get_submodule(literal.module) if literal.module else pruned
        for attr, value in vars(owner).items():
            if attr.startswith("_") or isinstance(value, bool) or not isinstance(value, int) or value != literal.value:
                continue
            target = new[(literal.node, literal.index)]
            if candidates.setdefault((literal.module, attr), target) != target:
                candidates[(literal.module, attr)] = -1  # two different new values
    usable = {key: value for key, value in candidates.items() if value >= 0}
    about_heads = {k: v for k, v in usable.items() if "head" in k[1].lower() and "dim" not in k[1].lower() and "size" not in k[1].lower()}
    # every matching attribute; those named for heads; then each alone (an equal `dim` must stay)
    attempts = [usable, about_heads] + [{key: value} for key, value in usable.items()]
    problem: str | None = "no integer attribute of the module holds the number"
    for changes in attempts:
        if not changes:
            continue
        originals: dict[tuple[str, str], object] = {}
        for (module_fqn, attr), value in changes.items():
            owner = pruned.get_submodule(module_fqn) if module_fqn else pruned
            originals[(module_fqn, attr)] = getattr(owner, attr)
            setattr(owner, attr, value)
        problem = _verify_graph(model, pruned, new)
        if problem is None:
            return
        for (module_fqn, attr), old_value in originals.items():
            setattr(pruned.get_submodule(module_fqn) if module_fqn else pruned, attr, old_value)
    raise PruneError(
        f"apply_prune: pruning changes counts that forward writes into a view / reshape / split ({problem}); "
        "fprune could not find the module attributes they come from. Compute them from an attribute such as "
        "`self.num_heads` or `self.c` (fprune updates it), use -1 in a view, or `ignore` the group"
    )


def _set_size(node: fx.Node, index: int, value: int) -> None:
    node.args, node.kwargs = with_sizes(node, {index: value})


class _LeafTracer(fx.Tracer):
    """fx's tracer, with HeadPrunedMultiheadAttention a leaf like the nn.MultiheadAttention it
    stands in for (fx only keeps classes of torch.nn as leaves)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, HeadPrunedMultiheadAttention) or super().is_leaf_module(m, module_qualified_name)


def _verify_graph(
    model: nn.Module, pruned: nn.Module, new: Mapping[tuple[str, int], int]
) -> str | None:
    """None if the pruned copy traces to the original graph but for the `new` numbers."""
    try:
        before, after = _LeafTracer().trace(model), _LeafTracer().trace(pruned)
    except Exception as error:  # noqa: BLE001 - reported as the problem
        return f"the models could not be traced again to check ({type(error).__name__})"
    old_nodes = list(before.nodes)
    new_nodes = list(after.nodes)
    if [(n.name, n.op, n.target) for n in old_nodes] != [(n.name, n.op, n.target) for n in new_nodes]:
        return "the pruned model's forward has a different structure"
    for old, fresh in zip(old_nodes, new_nodes):
        sizes = {index: value for (name, index), value in new.items() if name == old.name}
        expected, expected_kwargs = with_sizes(old, sizes) if sizes else (old.args, dict(old.kwargs))
        if _names(fresh.args) != _names(expected) or _names(fresh.kwargs) != _names(expected_kwargs):
            if sizes:
                return (
                    f"`{old.name}` has arguments {_names(fresh.args)} {_names(fresh.kwargs)}, "
                    f"expected {_names(expected)} {_names(expected_kwargs)}"
                )
            return f"`{old.name}` changed its arguments"
    return None


def _names(value: object) -> object:
    """Arguments with nodes replaced by their names, for comparison."""
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, (list, tuple)):
        return [_names(v) for v in value]
    if isinstance(value, dict):
        return {k: _names(v) for k, v in value.items()}
    return value


def masked_group_parameters(model: nn.Module, groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every parameter, with the groups' removed producer rows and carrier entries zeroed."""
    keeps = group_keeps(groups, masks)
    params: dict[str, Tensor] = dict(model.named_parameters())
    for index, keep in keeps.items():
        for member in groups[index].members:
            if member.role == "consumer" or member.fqn not in params:
                continue
            tensor = params[member.fqn]
            factor = torch.ones(tensor.shape[member.dim], dtype=tensor.dtype, device=keep.device)
            _put(factor, member.positions, _take(keep, member.channels).to(tensor.dtype))
            shape = [1] * tensor.dim()
            shape[member.dim] = -1
            params[member.fqn] = tensor * factor.to(tensor.device).reshape(shape)
    return params


if TYPE_CHECKING:
    from ._groups import FlowRule, RuleKey


def prune_channels(
    model: ModelT,
    level: float,
    *,
    example_inputs: Sequence[object] | None = None,
    ignore: Collection[str] | None = None,
    round_to: int = 1,
    criterion: Criterion = l2_norm,
    global_ranking: bool = False,
    rules: Mapping[RuleKey, FlowRule] | None = None,
) -> ModelT:
    """Model to pruned copy in one call: trace, :func:`channel_groups`, :func:`group_masks`,
    :func:`fprune.apply_prune`. `model` is left unchanged; arguments as in those functions.

    With `example_inputs`, the pruned copy runs once on meta tensors of their shapes before it
    is returned (it must run and return what `model` returns, less the pruned output channels);
    see "Pruning in one call" in the README.

    Raises:
        PruneError: `model` cannot be traced by ``torch.fx.symbolic_trace``; `level` > 0
            removes no channel (the message says why: no layer fprune knows, every group
            blocked or skipped, or a level too small for the groups' sizes); or the pruned copy
            fails on, or returns other shapes for, the example inputs (the message names the
            node and the groups, and says what to pass to `ignore`).
    """
    from ._apply import apply_prune  # the public entry: its checks on the model and masks apply
    from ._groups import find_groups
    from ._noop import nothing_removed
    from ._verify import check_pruned, example_shapes

    check_model(model, "prune_channels")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - reported as a PruneError
        raise PruneError(
            f"prune_channels: torch.fx.symbolic_trace failed ({type(error).__name__}: {error}); the model "
            "must be fx-traceable (no data-dependent control flow; mark such submodules as leaf modules)"
        ) from None
    if rules is None:
        from ._flow_rules import default_flow_rules

        rules = default_flow_rules()
    groups = find_groups(gm, example_inputs=example_inputs, rules=rules)
    masks = group_masks(model, groups, level, ignore=ignore, round_to=round_to, criterion=criterion, global_ranking=global_ranking)
    cut = [i for i, g in enumerate(groups) if any(p in masks and not bool(masks[p].all()) for p in g.producers)]
    if level > 0 and not cut:
        why = nothing_removed(gm, groups, level, ignore=ignore, round_to=round_to, global_ranking=global_ranking, rules=rules)
        raise PruneError(f"prune_channels: nothing to prune, the copy would equal the model: {why}")
    pruned = apply_prune(model, masks, groups)
    if example_inputs is not None and cut:
        check_pruned("prune_channels", model, pruned, groups, cut, example_shapes(example_inputs), example_inputs)
    return pruned

