"""From the walk's ids to records: united ids become channels, channels linked by a producer
or a unit become groups, and each member's positions become ``ChannelSlice``s (vectorised)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .._errors import PruneError
from ._flow import Member
from ._records import Blocker, ChannelGroup, ChannelSlice, SizeLiteral
from ._walk import Analysis, roots


def _components(n: int, a: Tensor, b: Tensor) -> Tensor:
    """The smallest node of each node's connected component, for `n` nodes and edges a[i]-b[i]."""
    label = torch.arange(n)
    while True:
        low = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, low, "amin").scatter_reduce(0, b, low, "amin")
        new = roots(new)
        if torch.equal(new, label):
            return label
        label = new


def _compact(values: Tensor) -> Sequence[int]:
    """A range if `values` step evenly (by a nonzero step), else a tuple."""
    n = values.numel()
    if n == 1:
        first = int(values[0])
        return range(first, first + 1)
    if n > 1:
        steps = values[1:] - values[:-1]
        step = int(steps[0])
        if step != 0 and bool((steps == step).all()):
            first = int(values[0])
            return range(first, first + n * step, step)
    return tuple(values.tolist())


@dataclass(frozen=True)
class _IdsInfo:
    """Where the ids of one tuple went: their groups and channels, and the common case."""

    groups: Tensor  # group index of each id
    channels: Tensor  # channel index (within its group) of each id
    group: int  # the group of all ids, or -1 if they span several
    channel_range: range | None  # the channels, if one group and they step evenly


def _ids_infos(analysis: Analysis, id_group: Tensor, id_channel: Tensor) -> dict[int, _IdsInfo]:
    """_IdsInfo per distinct ids tuple of the members (by id()), computed in one vectorised pass."""
    tuples: dict[int, tuple[int, ...]] = {}
    for member in analysis.members:
        tuples.setdefault(id(member.axis.ids), member.axis.ids)
    keys = list(tuples)
    if not keys:
        return {}
    parts = [analysis.ids_tensor(tuples[k]) for k in keys]
    lengths = torch.tensor([p.numel() for p in parts])
    flat = torch.cat(parts)
    segment = torch.repeat_interleave(torch.arange(len(parts)), lengths)
    groups, channels = id_group[flat], id_channel[flat]
    count = len(parts)
    gmin = torch.full((count,), flat.numel() + 1).scatter_reduce(0, segment, groups, "amin")
    gmax = torch.full((count,), -1).scatter_reduce(0, segment, groups, "amax")
    starts = torch.cumsum(lengths, 0) - lengths
    first_channel = channels[starts]
    # the step of each segment: channel[1] - channel[0] (0 for one-id segments, marked regular)
    second = torch.where(lengths > 1, starts + 1, starts)
    step = channels[second] - first_channel
    inside = segment[1:] == segment[:-1]
    uneven = inside & ((channels[1:] - channels[:-1]) != step[segment[1:]])
    irregular = torch.zeros(count, dtype=torch.bool).index_put((segment[1:][uneven],), torch.tensor(True), accumulate=False)
    irregular |= (step == 0) & (lengths > 1)
    infos: dict[int, _IdsInfo] = {}
    split_groups = torch.split(groups, lengths.tolist())
    split_channels = torch.split(channels, lengths.tolist())
    rows = zip(keys, gmin.tolist(), gmax.tolist(), first_channel.tolist(), step.tolist(), lengths.tolist(), irregular.tolist())
    for k, (key, low, high, first, st, length, odd) in enumerate(rows):
        group = low if low == high else -1
        channel_range = None
        if group >= 0 and not odd:
            step_ = st if length > 1 else 1
            channel_range = range(first, first + length * step_, step_)
        infos[key] = _IdsInfo(split_groups[k], split_channels[k], group, channel_range)
    return infos


def _member_slices(member: Member, info: _IdsInfo) -> list[tuple[int, ChannelSlice]]:
    """The member's slices, one per group its positions fall in (in order of first position)."""
    axis = member.axis
    if axis.inner < 0:
        raise PruneError("the size of flattened channels is unknown; pass example_inputs")
    width = axis.width
    if info.group >= 0 and info.channel_range is not None and axis.inner == 1 and axis.outer == 1:
        return [(info.group, ChannelSlice(member.fqn, member.dim, member.role, range(width), info.channel_range))]
    count = len(axis.ids)
    positions = torch.arange(width)
    k = torch.div(positions, axis.inner, rounding_mode="floor") % count
    groups, channels = info.groups[k], info.channels[k]
    if info.group >= 0:
        return [(info.group, ChannelSlice(member.fqn, member.dim, member.role, range(width), _compact(channels)))]
    found, first = torch.unique(groups, return_inverse=True)
    first_position = torch.full((found.numel(),), width).scatter_reduce(0, first, positions, "amin")
    slices = []
    for g in found[torch.argsort(first_position)].tolist():
        chosen = groups == g
        slices.append((g, ChannelSlice(member.fqn, member.dim, member.role, _compact(positions[chosen]), _compact(channels[chosen]))))
    return slices


RecordT = TypeVar("RecordT")


def _by_group(records: Sequence[tuple[RecordT, tuple[int, ...]]], id_group: Tensor, count: int) -> list[list[RecordT]]:
    """Each record in every group that one of its ids belongs to (once per group, in order)."""
    found: list[list[RecordT]] = [[] for _ in range(count)]
    for record, ids in records:
        for g in sorted(set(id_group[torch.tensor(ids, dtype=torch.long)].tolist())):
            if record not in found[g]:
                found[g].append(record)
    return found


def _literal_spans_groups(node: str, groups: Tensor, blockers: list[list[Blocker]]) -> bool:
    """Block every group a size literal counts channels of, if it counts channels of several
    (``cat([a, b])[:, :k]`` with k past a's channels): one number cannot follow two groups'
    masks. True if it did."""
    found = sorted(set(groups.tolist()))
    if len(found) < 2:
        return False
    blocker = Blocker(node, f"`{node}` writes one number that counts channels of {len(found)} channel groups; pruning cannot keep it right")
    for g in found:
        if blocker not in blockers[g]:
            blockers[g].append(blocker)
    return True


def collect(analysis: Analysis) -> tuple[ChannelGroup, ...]:
    n = analysis.uf.count
    if n == 0:
        return ()
    # every id was made by a producer (or as fixed channels), in order: range k owns ids
    # starts[k] .. + counts[k]; the ids of one range are one group
    ranges = sorted([ids for _, ids in analysis.producers if ids] + [ids for ids in analysis.anonymous if ids], key=lambda ids: ids[0])
    counts = torch.tensor([len(ids) for ids in ranges], dtype=torch.long)
    starts = torch.tensor([ids[0] for ids in ranges], dtype=torch.long)
    # channels: classes of united ids, each named by its smallest id (so in first-seen order)
    cls = analysis.uf.roots()
    # groups: components of channel classes linked by a shared producer or a unit (a head)
    a_parts = [cls[torch.repeat_interleave(starts, counts)]]
    b_parts = [cls]
    if analysis.units:
        keys = torch.tensor(list(analysis.units.keys()), dtype=torch.long)
        unit_parent = torch.arange(n)
        unit_parent[keys] = torch.tensor(list(analysis.units.values()), dtype=torch.long)
        unit_root = roots(unit_parent)
        a_parts.append(cls[keys])
        b_parts.append(cls[unit_root[keys]])
    component = _components(n, torch.cat(a_parts), torch.cat(b_parts))
    # groups in the order of their first channel; channels numbered in id order within a group
    present = (cls == torch.arange(n)).nonzero().squeeze(1)
    group_labels, class_group = torch.unique(component[present], return_inverse=True)
    group_count = group_labels.numel()
    sizes = torch.bincount(class_group, minlength=group_count)
    order = torch.sort(class_group, stable=True).indices
    class_channel = torch.empty_like(class_group)
    class_channel[order] = torch.arange(present.numel()) - (torch.cumsum(sizes, 0) - sizes)[class_group[order]]
    id_group = torch.full((n,), -1)
    id_group[present] = class_group
    id_group = id_group[cls]
    id_channel = torch.full((n,), -1)
    id_channel[present] = class_channel
    id_channel = id_channel[cls]

    infos = _ids_infos(analysis, id_group, id_channel)
    by_group: list[list[ChannelSlice]] = [[] for _ in range(group_count)]
    for member in analysis.members:
        for g, piece in _member_slices(member, infos[id(member.axis.ids)]):
            by_group[g].append(piece)
    blockers: list[list[Blocker]] = [[] for _ in range(group_count)]
    if analysis.blocked:
        blocked_groups = id_group[torch.tensor(list(analysis.blocked.keys()), dtype=torch.long)].tolist()
        for g, blocker in zip(blocked_groups, analysis.blocked.values()):
            if blocker not in blockers[g]:
                blockers[g].append(blocker)
    returned = set(id_group[torch.tensor(sorted(analysis.returned), dtype=torch.long)].tolist()) if analysis.returned else set()
    producers: list[list[str]] = [[] for _ in range(group_count)]
    if analysis.producers:
        heads = id_group[torch.tensor([ids[0] for _, ids in analysis.producers], dtype=torch.long)].tolist()
        for g, (fqn, _) in zip(heads, analysis.producers):
            if fqn not in producers[g]:
                producers[g].append(fqn)
    units: list[dict[int, set[int]]] = [{} for _ in range(group_count)]
    if analysis.units:
        unit_ids = list(analysis.units.keys())
        index = torch.tensor(unit_ids, dtype=torch.long)
        # units over channels: ids united into one channel join their units (ties of two
        # grouped convs of different group counts on the channels of one residual stream)
        unit_label = _components(n, cls[index], cls[unit_root[index]])
        rows = zip(unit_ids, id_group[index].tolist(), id_channel[index].tolist(), unit_label[cls[index]].tolist())
        for _, g, j, root in rows:
            units[g].setdefault(root, set()).add(j)
    literals: list[list[SizeLiteral]] = [[] for _ in range(group_count)]
    for node, index_, value, heads_, factor, module in analysis.literals:
        head_index = torch.tensor(heads_, dtype=torch.long)
        g = int(id_group[head_index[0]])
        if _literal_spans_groups(node, id_group[head_index], blockers):
            continue
        literals[g].append(SizeLiteral(node, index_, value, tuple(id_channel[head_index].tolist()), factor, module))
    rescales = _by_group(analysis.rescales, id_group, group_count)
    inexact = _by_group(analysis.inexact, id_group, group_count)
    folds = _by_group(analysis.folds, id_group, group_count)
    return tuple(
        ChannelGroup(
            size=int(sizes[g]),
            producers=tuple(producers[g]),
            members=tuple(by_group[g]),
            blockers=tuple(blockers[g]),
            reaches_output=g in returned,
            units=tuple(sorted(tuple(sorted(u)) for u in units[g].values())),
            literals=tuple(literals[g]),
            rescales=tuple(rescales[g]),
            inexact=tuple(inexact[g]),
            folds=tuple(folds[g]),
            graph="export" if analysis.exported else "fx",
        )
        for g in range(group_count)
    )
