"""Reading and writing a group's slices of tensors: by FQN, along a dim, by channel index."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .._errors import PruneError
from ._records import ChannelGroup, ChannelSlice


def tensor_named(tensors: Mapping[str, Tensor], fqn: str) -> Tensor:
    tensor = tensors.get(fqn)
    if tensor is None:
        raise PruneError(f"the model has no tensor `{fqn}`; were the groups found on another model?")
    return tensor


def take_slice(values: Tensor, index: Sequence[int]) -> Tensor:
    """`values[index]` along dim 0: a view for an increasing range, else a gather."""
    if isinstance(index, range) and index.step > 0:
        return values[index.start : index.stop : index.step]
    return values[torch.tensor(index, dtype=torch.long, device=values.device)]


def put_slice(target: Tensor, index: Sequence[int], values: Tensor) -> None:
    """``target[index] = values`` along dim 0, in place (`target` is the caller's own tensor)."""
    if isinstance(index, range) and index.step > 0:
        target[index.start : index.stop : index.step] = values
    else:
        target[torch.tensor(index, dtype=torch.long, device=target.device)] = values


def removed_positions(size: int, keep: Tensor, members: Iterable[ChannelSlice]) -> Tensor:
    """Over a tensor dim of `size`, True at the positions where `members` (slices of one
    group, along that dim) hold a channel that `keep` removes."""
    removed = torch.zeros(size, dtype=torch.bool, device=keep.device)
    for member in members:
        put_slice(removed, member.positions, ~take_slice(keep, member.channels))
    return removed


def covers(index: Sequence[int], size: int) -> bool:
    return isinstance(index, range) and index == range(size)



def covering_producers(group: ChannelGroup) -> list[str]:
    """Producers whose masks together decide every channel: one whose rows hold the whole
    group if there is one (the first such), else enough branches (a concat's parts)."""
    covered = torch.zeros(group.size, dtype=torch.bool)
    chosen: list[str] = []
    for producer in group.producers:
        channels = producer_member(group, producer).channels
        if covers(channels, group.size) or set(channels) >= set(range(group.size)):
            return [producer]
    for producer in group.producers:
        index = channel_index(producer_member(group, producer).channels, covered.device)
        if not bool(covered[index].all()):
            covered[index] = True
            chosen.append(producer)
    return chosen


# --- applying group masks ---------------------------------------------------------------------


def channel_index(channels: Sequence[int], device: torch.device) -> Tensor:
    if isinstance(channels, range):
        return torch.arange(channels.start, channels.stop, channels.step, device=device)
    return torch.tensor(channels, dtype=torch.long, device=device)


def producer_member(group: ChannelGroup, fqn: str) -> ChannelSlice:
    return next(m for m in group.members if m.fqn == fqn and m.role == "producer")

