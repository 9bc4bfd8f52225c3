"""Scoring and selection: each channel's score summed over its group's slices (``group_scores``),
and the keep-masks at a level, per group or ranked globally (``group_masks``)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._errors import PruneError, prefixed
from .._masks import Criterion, l1_norm, l2_norm
from .._util.checks import check_model, named_tensors
from .._util.norms import Scratch, dim_norms, row_column_norms
from ._records import ChannelGroup, GroupCriterion
from ._slices import (
    channel_index,
    covering_producers,
    covers,
    producer_member,
    put_slice,
    take_slice,
    tensor_named,
)

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
        tensor = tensor_named(tensors, fqn).detach()
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
        return take_slice(norms, positions)
    rows = tensor.movedim(dim, 0)
    rows = rows if covers(positions, rows.shape[0]) else take_slice(rows, positions)
    return criterion(rows.reshape(len(positions), -1).to(torch.float32)).to(torch.float32)


def group_scores(model: nn.Module, group: ChannelGroup, criterion: Criterion | GroupCriterion = l2_norm) -> Tensor:
    """Per-channel importance of `group`: shape ``[group.size]``; `model` is unchanged.

    Each weight member (producer rows, consumer columns) is scored row by row with
    `criterion` over its channel positions; a channel's score sums its positions' scores over
    all weight members. Biases, BatchNorm entries and other carriers do not count. A
    :class:`GroupCriterion` (the calibration criteria of :mod:`fprune.calibrate`) scores the
    group itself.
    """
    try:
        return _scores(named_tensors(model), group, criterion, {}, {})
    except PruneError as error:
        raise prefixed("group_scores", error) from None


def _scores(
    tensors: Mapping[str, Tensor], group: ChannelGroup, criterion: Criterion | GroupCriterion, cache: _Norms, scratch: Scratch
) -> Tensor:
    if isinstance(criterion, GroupCriterion):
        return criterion.scores(tensors, group)
    scores: Tensor | None = None
    for member in group.members:
        if member.role == "carrier":
            continue
        norms = cache.get((member.fqn, member.dim)) if criterion is l2_norm or criterion is l1_norm else None
        if norms is not None:  # scored before (a 2+-dim tensor with values): not read again
            values = take_slice(norms, member.positions)
        else:
            tensor = tensor_named(tensors, member.fqn).detach()
            if tensor.dim() < 2:
                continue
            if tensor.device.type == "meta":
                raise PruneError(
                    f"`{member.fqn}` is on the meta device and has no values to score; load the weights (or score "
                    "them from a checkpoint: group_masks(..., weights=fprune.plan.checkpoint_weights(path))), or "
                    "write keep-masks yourself (CPU torch.bool tensors keyed by each group's producers[0])"
                )
            values = _member_scores(tensor, member.fqn, member.dim, member.positions, criterion, cache, scratch)
        if scores is None:
            scores = torch.zeros(group.size, dtype=torch.float32, device=values.device)
        if covers(member.channels, group.size):
            scores += values
        elif isinstance(member.channels, range) and member.channels.step > 0:
            scores[member.channels.start : member.channels.stop : member.channels.step] += values
        else:
            scores = scores.index_add(0, torch.tensor(member.channels, dtype=torch.long, device=values.device), values)
    if scores is None:
        raise PruneError(f"group produced by {', '.join(group.producers) or '(none)'} has no weight to score")
    return scores


def _check_ignore(model: nn.Module, tensors: Mapping[str, Tensor], ignore: Collection[str] | None, caller: str) -> None:
    if ignore is None:
        return
    if isinstance(ignore, str):
        raise PruneError(f"{caller}: `ignore` must be a collection of FQNs, got the string {ignore!r}; write {{{ignore!r}}}")
    modules = {fqn for fqn, _ in model.named_modules(remove_duplicate=False)}
    for entry in ignore:
        if entry not in tensors and entry not in modules:
            close = [name for name in sorted(tensors) if name.rpartition(".")[0] == entry.rpartition(".")[0]][:3]
            hint = f" (tensors there: {', '.join(close)})" if close else ""
            raise PruneError(f"{caller}: `ignore` names `{entry}`, which is neither a tensor nor a module of the model{hint}")


def ignored(group: ChannelGroup, ignore: Collection[str] | None) -> bool:
    if ignore is None:
        return group.reaches_output
    for member in group.members:
        module = member.fqn.rpartition(".")[0]
        if member.fqn in ignore or module in ignore:
            return True
    return False


def kept_at_level(size: int, level: float) -> int:
    """How many of `size` channels (or units) stay when a fraction `level` goes: the removed
    count is rounded up, as Torch-Pruning does (``floor((1 - level) * size)`` stay; 0.3 of
    10 removes 3, of 16 removes 5)."""
    return math.floor((1 - level) * size + 1e-9)


def unit_count(group: ChannelGroup) -> int:
    """The number of units :func:`group_masks` ranks in `group`: its units, and each channel
    in none of them."""
    return len(group.units) + group.size - sum(len(u) for u in group.units)


def _all_units(group: ChannelGroup, device: torch.device) -> list[Tensor]:
    """The group's units, and each channel in none of them as a unit of its own."""
    covered = torch.zeros(group.size, dtype=torch.bool)
    units = []
    for unit in group.units:
        covered[list(unit)] = True
        units.append(torch.tensor(unit, device=device))
    units.extend(c.to(device) for c in (~covered).nonzero())
    return units


GlobalRanking = bool | Literal["mean", "standardized"]
"""How :func:`group_masks` ranks channels across groups (False: it does not)."""


def _globally_kept(
    groups: Sequence[ChannelGroup],
    scores: Sequence[Tensor],
    level: float,
    ranking: Literal["mean", "standardized"],
    min_kept: float,
    read: Sequence[Tensor | None] = (),
) -> list[int]:
    """How many channels each group keeps when a fraction `level` of all their channels goes.

    Each group's channel scores are normalized (divided by their mean, or standardized); the
    items ranked are the group's units (heads: scored by their channels' mean normalized score,
    removed whole) and its other channels. Items go lowest first, across all groups, until
    `level` of all channels is gone (the last item may take a little more); each group keeps
    at least `min_kept` of its items, and at least one. The mean and spread are those of the
    channels the criterion measured (`read`, per group; None: all)."""
    item_scores: list[Tensor] = []
    item_sizes: list[Tensor] = []
    item_owner: list[Tensor] = []
    may_go: list[Tensor] = []
    for index, (group, score) in enumerate(zip(groups, scores)):
        values = score.to(torch.float64).cpu()
        mask = read[index] if index < len(read) else None
        measured = values[mask.cpu()] if mask is not None and bool(mask.any()) else values
        if ranking == "standardized":
            spread = measured.std() if measured.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
            values = (values - measured.mean()) / (spread if float(spread) > 1e-12 else 1.0)
        else:
            values = values / measured.mean().clamp_min(1e-12)
        in_unit = torch.zeros(group.size, dtype=torch.bool)
        unit_scores = []
        for unit in group.units:
            positions = torch.tensor(unit, dtype=torch.long)
            in_unit[positions] = True
            unit_scores.append(values[positions].mean())
        singles = values[~in_unit]
        scored = torch.cat([torch.stack(unit_scores) if unit_scores else torch.zeros(0, dtype=torch.float64), singles])
        sizes = torch.cat([torch.tensor([len(u) for u in group.units], dtype=torch.long), torch.ones(singles.numel(), dtype=torch.long)])
        floor = kept_floor(scored.numel(), min_kept)
        rank = torch.empty(scored.numel(), dtype=torch.long)
        rank[torch.sort(scored, stable=True).indices] = torch.arange(scored.numel())
        item_scores.append(scored)
        item_sizes.append(sizes)
        item_owner.append(torch.full((scored.numel(),), index))
        may_go.append(rank < scored.numel() - floor)  # the group's lowest items but its floor
    flat, sizes, owner, allowed = torch.cat(item_scores), torch.cat(item_sizes), torch.cat(item_owner), torch.cat(may_go)
    total = sum(g.size for g in groups)
    remove = total - kept_at_level(total, level)
    candidates = allowed.nonzero().squeeze(1)
    order = candidates[torch.sort(flat[candidates], stable=True).indices]
    before = torch.cumsum(sizes[order], 0) - sizes[order]  # channels gone before each item
    chosen = order[before < remove]
    removed_per = torch.zeros(len(groups), dtype=torch.long).index_add(0, owner[chosen], sizes[chosen])
    return [g.size - int(r) for g, r in zip(groups, removed_per)]


def kept_floor(size: int, min_kept: float) -> int:
    """The fewest of `size` channels (or units) a group keeps under `min_kept`: at least one."""
    return max(1, math.ceil(min_kept * size - 1e-9))


def round_kept(kept: int, size: int, round_to: int) -> int:
    if round_to <= 1 or size <= round_to:
        return max(1, min(size, kept))
    rounded = int(math.floor(kept / round_to + 0.5)) * round_to
    return max(round_to, min(size, rounded))


def _producer_mask(group: ChannelGroup, keep: Tensor, producer: str) -> Tensor:
    """The keep-mask over `producer`'s rows that keeps the channels `keep` keeps."""
    member = producer_member(group, producer)
    positions = member.positions
    rows = max(positions[0], positions[-1]) + 1 if isinstance(positions, range) else max(positions) + 1
    mask = torch.ones(rows, dtype=torch.bool, device=keep.device)
    put_slice(mask, positions, take_slice(keep, member.channels))
    return mask


def group_masks(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    level: float,
    *,
    ignore: Collection[str] | None = None,
    round_to: int = 1,
    criterion: Criterion | GroupCriterion = l2_norm,
    global_ranking: GlobalRanking = False,
    min_kept: float = 0.0,
    weights: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks removing a fraction `level` of the channels of each prunable group.

    Args:
        model: the model the groups were found in; left unchanged.
        groups: from :func:`channel_groups`; groups that are not prunable are skipped.
        level: fraction of channels removed, in [0, 1), rounded up as Torch-Pruning does:
            ``floor((1 - level) * size)`` channels of a group stay (0.3 of 16 removes 5).
        ignore: tensor or module FQNs never pruned: a group with any member among them is
            skipped. None (the default) skips the groups that forward returns (the
            classifier's outputs).
        round_to: kept counts are rounded to the nearest multiple of it, ties up (at least
            one multiple). Groups pruned in whole units (attention heads, the in-group
            positions of a grouped conv) count units instead, ranked by their channels' mean
            score: ``floor((1 - level) * units)`` stay, at least one.
        criterion: scores the rows of each weight member (see :func:`group_scores`), or a
            :class:`GroupCriterion` that scores whole groups (``fprune.calibrate.flap(stats)``
            and the other calibration criteria).
        global_ranking: rank channels across all groups instead of removing `level` of every
            group, so each group keeps the width its scores justify (non-uniform widths):
            ``True`` or ``"mean"`` divides each group's scores by their mean,
            ``"standardized"`` standardizes them (minus the mean, over the standard
            deviation, as FLAP does) before one ranking. A unit (an attention head, a GQA
            unit) is one item of that ranking, scored by its channels' mean. `level` is then
            the fraction of all the chosen groups' channels removed (the last item may take a
            few more); `round_to` still applies.
        min_kept: with global ranking, the fraction of each group's channels (of its units,
            for a group pruned in whole units) that always stays, rounding to `round_to`
            upward where nearest would go below it; at least one channel stays anyway. 0.5
            caps every group's loss at half. Without global ranking it must stay 0.
        weights: the tensors to score, by FQN, instead of the model's own: for a model built
            on the meta device (too large to load),
            ``fprune.plan.checkpoint_weights(path)`` reads each from its checkpoint when it
            is scored (a few tensors in memory at a time).

    Returns:
        Bool keep-masks for :func:`apply_prune`, each over a producer weight's channel dim
        (dim 0; dim 1 for an Embedding), keyed by its FQN: per pruned group, its first producer
        whose rows hold the whole group, or, where none does (the branches of a concat), one
        mask per branch. Every producer keeps at least one channel.
    """
    return masks_at_level(
        model, groups, level, ignore=ignore, round_to=round_to, criterion=criterion, global_ranking=global_ranking,
        min_kept=min_kept, caller="group_masks", weights=weights,
    )


def masks_at_level(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    level: float,
    *,
    ignore: Collection[str] | None,
    round_to: int,
    criterion: Criterion | GroupCriterion,
    global_ranking: GlobalRanking,
    caller: str,
    min_kept: float = 0.0,
    weights: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """:func:`group_masks`, its refusals named after `caller` (the public function)."""
    check_model(model, caller)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or math.isnan(level) or not 0 <= level < 1:
        raise PruneError(f"{caller}: `level` must be in [0, 1), got {level!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise PruneError(f"{caller}: `round_to` must be a positive int, got {round_to!r}")
    if not (isinstance(global_ranking, bool) or (isinstance(global_ranking, str) and global_ranking in ("mean", "standardized"))):
        raise PruneError(f"{caller}: `global_ranking` must be False, True, 'mean' or 'standardized', got {global_ranking!r}")
    if isinstance(min_kept, bool) or not isinstance(min_kept, (int, float)) or not 0 <= min_kept <= 1:
        raise PruneError(f"{caller}: `min_kept` must be a fraction in [0, 1], got {min_kept!r}")
    if min_kept and not global_ranking:
        raise PruneError(
            f"{caller}: `min_kept` bounds what global ranking takes from each group; without `global_ranking` every "
            f"group loses the fraction `level` ({level!r}), so leave `min_kept` at 0"
        )
    if weights is not None and not isinstance(weights, Mapping):
        raise PruneError(f"{caller}: `weights` must map tensor FQNs to tensors (or be None), got {type(weights).__name__}")
    tensors = named_tensors(model) if weights is None else weights  # once: per group it would be quadratic in depth
    _check_ignore(model, tensors, ignore, caller)
    chosen = [g for g in groups if g.prunable and not ignored(g, ignore)]
    cache: _Norms = {}  # a tensor read by several groups (a concat's consumer) is scored once
    scratch: Scratch = {}
    try:
        if criterion is l2_norm or criterion is l1_norm:
            _norm_both_dims(tensors, chosen, 2 if criterion is l2_norm else 1, cache, scratch)
        scores = [_scores(tensors, g, criterion, cache, scratch) for g in chosen]
    except PruneError as error:  # a meta weight, or groups found on another model
        raise prefixed(caller, error) from None
    del scratch
    for group, score in zip(chosen, scores):
        if bool(torch.isnan(score).any()):
            bad = [m.fqn for m in group.members if m.role != "carrier" and not bool(torch.isfinite(tensor_named(tensors, m.fqn)).all())]
            raise PruneError(
                f"{caller}: the scores of the channels produced by {', '.join(group.producers)} contain NaN: "
                f"{', '.join(f'`{b}`' for b in bad) or 'a weight'} holds NaN or inf; fix the weights, or leave the group out with `ignore`"
            )
    kept_counts: list[int]
    if global_ranking and chosen:
        read = [criterion.read(tensors, g) if isinstance(criterion, GroupCriterion) else None for g in chosen]
        ranking: Literal["mean", "standardized"] = "standardized" if global_ranking == "standardized" else "mean"
        kept_counts = _globally_kept(chosen, scores, level, ranking, min_kept, read)
    else:
        kept_counts = [kept_at_level(g.size, level) for g in chosen]
    masks: dict[str, Tensor] = {}
    for group, score, kept in zip(chosen, scores, kept_counts):
        keep = torch.zeros(group.size, dtype=torch.bool, device=score.device)
        if group.units:  # whole units (heads, in-group positions): rank them by mean score
            units = _all_units(group, score.device)
            unit_scores = torch.stack([score[u].mean() for u in units])
            kept_units = max(kept_floor(len(units), min_kept), kept_at_level(len(units), 1 - kept / group.size))
            for u in torch.sort(unit_scores, descending=True, stable=True).indices[:kept_units].tolist():
                keep[units[u]] = True
        else:
            kept = round_kept(kept, group.size, round_to)
            if kept < kept_floor(group.size, min_kept):  # rounded below `min_kept`: the next multiple up
                kept = min(group.size, math.ceil(kept_floor(group.size, min_kept) / round_to) * round_to)
            keep[torch.sort(score, descending=True, stable=True).indices[:kept]] = True
        for producer in group.producers:  # no layer may lose all its outputs (a concat branch)
            channels = channel_index(producer_member(group, producer).channels, keep.device)
            if not bool(keep[channels].any()):
                keep[channels[torch.argmax(score[channels])]] = True
        for literal in group.literals:  # nor a count in forward (a slice x[:, :k]) drop to 0
            counted = torch.tensor(literal.heads, device=keep.device)
            if not bool(keep[counted].any()):
                best = int(counted[torch.argmax(score[counted])])
                unit = next((u for u in group.units if best in u), (best,))
                keep[torch.tensor(unit, device=keep.device)] = True
        for producer in covering_producers(group):
            masks[producer] = _producer_mask(group, keep, producer)
    return masks
