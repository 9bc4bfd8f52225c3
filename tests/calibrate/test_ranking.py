"""group_masks' global ranking: ``"standardized"`` and ``"mean"`` give the per-group counts
worked out by hand on three groups with chosen scores; ``min_kept`` caps each group's loss
(through ``round_to`` and whole units too); bad values are refused; ``global_ranking=True``
is what it was, but for the floor of one channel per group."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

import fprune
from fprune.calibrate import GroupCriterion
from fprune.groups import ChannelGroup
from fprune.groups._scores import kept_at_level

from ..zoo import ZOO
from ..zoo_llama import llama

pytestmark = pytest.mark.usefixtures("one_thread")


class Three(nn.Module):
    """Three hidden layers side by side (4, 6 and 10 channels), summed at the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(5, 4), nn.Linear(4, 3)
        self.b1, self.b2 = nn.Linear(5, 6), nn.Linear(6, 3)
        self.c1, self.c2 = nn.Linear(5, 10), nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.a2(torch.relu(self.a1(x))) + self.b2(torch.relu(self.b1(x))) + self.c2(torch.relu(self.c1(x)))
        return out


@dataclass(frozen=True)
class Fixed(GroupCriterion):
    """Scores chosen by the test, by the group's first producer."""

    by_producer: Mapping[str, Sequence[float]]
    name: ClassVar[str] = "fixed"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        return torch.tensor(self.by_producer[group.producers[0]], dtype=torch.float32)


SCORES = Fixed(
    {
        "a1.weight": (1, 2, 3, 4),  # standardized: -1.162 -0.387 0.387 1.162; / mean: 0.4 0.8 1.2 1.6
        "b1.weight": (10, 11, 12, 13, 14, 100),  # standardized: -0.464 -0.436 -0.408 -0.380 -0.352 2.040; / mean: 0.375 0.4125 0.45 0.4875 0.525 3.75
        "c1.weight": tuple(range(10)),  # standardized: -1.486 -1.156 -0.826 -0.495 -0.165 ...; / mean: 0 0.222 0.444 0.667 0.889 ...
    }
)


def _three() -> tuple[Three, tuple[ChannelGroup, ...]]:
    torch.manual_seed(0)
    model = Three()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    assert sorted(g.size for g in groups if g.prunable and not g.reaches_output) == [4, 6, 10]
    return model, groups


def _kept(masks: Mapping[str, Tensor]) -> tuple[int, int, int]:
    assert set(masks) == {"a1.weight", "b1.weight", "c1.weight"}
    return int(masks["a1.weight"].sum()), int(masks["b1.weight"].sum()), int(masks["c1.weight"].sum())


def test_the_standardized_and_mean_rankings_by_hand() -> None:
    model, groups = _three()
    # 0.4 of 20 channels: 8 go. Standardized, lowest first: C0 -1.486, A0 -1.162, C1 -1.156, C2 -0.826,
    # C3 -0.495, B0 -0.464, B1 -0.436, B2 -0.408 (next: A1 -0.387): A loses 1, B 3, C 4.
    standardized = fprune.group_masks(model, groups, 0.4, criterion=SCORES, global_ranking="standardized")
    assert _kept(standardized) == (3, 3, 6)
    assert standardized["c1.weight"].tolist() == [False] * 4 + [True] * 6  # the lowest scores went
    # Divided by the mean: C0 0, C1 0.222, B0 0.375, A0 0.4, B1 0.4125, C2 0.444, B2 0.45, B3 0.4875: A 1, B 4, C 3.
    for mean in ("mean", True):
        assert _kept(fprune.group_masks(model, groups, 0.4, criterion=SCORES, global_ranking=mean)) == (3, 2, 7)
    assert _kept(fprune.group_masks(model, groups, 0.4, criterion=SCORES)) == (2, 3, 6)  # no ranking: floor(0.6 * size) of each


def test_min_kept_caps_each_groups_loss() -> None:
    model, groups = _three()
    # 0.6 of 20: 12 go. Standardized, after the 8 above: A1 -0.387, B3 -0.380, B4 -0.352, C4 -0.165: A 2, B 5, C 5.
    assert _kept(fprune.group_masks(model, groups, 0.6, criterion=SCORES, global_ranking="standardized")) == (2, 1, 5)
    # min_kept 0.5: A keeps 2, B 3, C 5 at least; only 2 + 3 + 5 = 10 channels may go, and all do.
    capped = fprune.group_masks(model, groups, 0.6, criterion=SCORES, global_ranking="standardized", min_kept=0.5)
    assert _kept(capped) == (2, 3, 5)
    # 0.4 by the mean with min_kept 0.5: B3 may not go, so C3 (0.667) does: A 1, B 3, C 4.
    assert _kept(fprune.group_masks(model, groups, 0.4, criterion=SCORES, global_ranking="mean", min_kept=0.5)) == (3, 3, 6)
    # min_kept 0.35: A keeps ceil(1.4) = 2, B ceil(2.1) = 3, C ceil(3.5) = 4.
    assert _kept(fprune.group_masks(model, groups, 0.9, criterion=SCORES, global_ranking="standardized", min_kept=0.35)) == (2, 3, 4)
    assert _kept(fprune.group_masks(model, groups, 0.9, criterion=SCORES, global_ranking="standardized", min_kept=1)) == (4, 6, 10)


def test_round_to_is_respected_and_rounds_up_to_min_kept() -> None:
    model, groups = _three()
    # 0.6 standardized keeps (2, 1, 5); to multiples of 4: A (4 channels, no multiple below) 2, B 1 -> 4, C 5 -> 4.
    rounded = fprune.group_masks(model, groups, 0.6, criterion=SCORES, global_ranking="standardized", round_to=4)
    assert _kept(rounded) == (2, 4, 4)
    # With min_kept 0.5, (2, 3, 5): B 3 -> 4; C 5 -> 4 would go below its 5, so 8.
    capped = fprune.group_masks(model, groups, 0.6, criterion=SCORES, global_ranking="standardized", round_to=4, min_kept=0.5)
    assert _kept(capped) == (2, 4, 8)
    for kept in _kept(fprune.group_masks(model, groups, 0.4, criterion=SCORES, global_ranking="mean", round_to=2)):
        assert kept % 2 == 0


def test_a_group_scored_lowest_everywhere_keeps_one_channel() -> None:
    model, groups = _three()
    lowest = Fixed({"a1.weight": (0, 0, 0, 0), "b1.weight": (5, 6, 7, 8, 9, 10), "c1.weight": tuple(range(10, 20))})
    # Divided by the mean, A's zeros are 0 and the others at least 0.5: before the floor of one channel, A lost all 4.
    assert _kept(fprune.group_masks(model, groups, 0.3, criterion=lowest, global_ranking=True)) == (1, 5, 8)


@pytest.mark.parametrize("min_kept", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_a_bad_min_kept_is_refused(min_kept: object) -> None:
    model, groups = _three()
    with pytest.raises(fprune.PruneError, match=r"^group_masks: `min_kept` must be a fraction in \[0, 1\]"):
        fprune.group_masks(model, groups, 0.5, global_ranking=True, min_kept=min_kept)  # type: ignore[arg-type]


def test_min_kept_without_global_ranking_is_refused() -> None:
    model, groups = _three()
    with pytest.raises(fprune.PruneError, match="^group_masks: `min_kept` bounds what global ranking takes"):
        fprune.group_masks(model, groups, 0.5, min_kept=0.5)
    masks, plain = fprune.group_masks(model, groups, 0.5, min_kept=0.0), fprune.group_masks(model, groups, 0.5)
    assert all(torch.equal(masks[k], plain[k]) for k in plain)


@pytest.mark.parametrize("ranking", ["std", "Mean", 1, 0, 0.0, None, 2.5])
def test_a_bad_global_ranking_is_refused(ranking: object) -> None:
    model, groups = _three()
    with pytest.raises(fprune.PruneError, match="^group_masks: `global_ranking` must be False, True, 'mean' or 'standardized'"):
        fprune.group_masks(model, groups, 0.5, global_ranking=ranking)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- whole units


def _channel_keep(group: ChannelGroup, masks: Mapping[str, Tensor]) -> Tensor:
    """The group's channels kept, read from its masks (one per producer of a head group)."""
    keep = torch.zeros(group.size, dtype=torch.bool)
    for member in group.members:
        if member.role == "producer" and member.fqn in masks:
            keep[list(member.channels)] = masks[member.fqn][list(member.positions)]
    return keep


@pytest.mark.parametrize("min_kept", [0.0, 0.3, 0.5])
def test_heads_stay_whole_under_global_ranking(min_kept: float) -> None:
    model, ids = llama("plain", dim=32, heads=8)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(ids,))
    attention = [g for g in groups if g.units]
    assert len(attention) == 2 and all(len(g.units) == 8 for g in attention)
    masks = fprune.group_masks(model, groups, 0.7, global_ranking="standardized", min_kept=min_kept)
    heads = []
    for group in attention:
        keep = _channel_keep(group, masks)
        whole = [bool(keep[list(unit)].all()) for unit in group.units]
        assert whole == [bool(keep[list(unit)].any()) for unit in group.units]  # each head all kept or all removed
        heads.append(sum(whole))
    assert min(heads) >= max(1, math.ceil(min_kept * 8))  # 0.3: 3 heads (29 channels of 96 would round to 2 heads)
    if not min_kept:
        assert min(heads) < 3  # min_kept is what keeps them


# --------------------------------------------------------------------------- True as it was


def _as_it_was(model: nn.Module, groups: Sequence[ChannelGroup], level: float) -> list[int]:
    """The kept counts of global_ranking=True before ``"standardized"`` and ``min_kept``
    (scores divided by their mean, ranked in float32, no floor)."""
    chosen = [g for g in groups if g.prunable and not g.reaches_output]
    scores = [fprune.group_scores(model, g) for g in chosen]
    normalized = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(chosen)])
    remove = normalized.numel() - kept_at_level(normalized.numel(), level)
    order = torch.sort(normalized, stable=True).indices[:remove]
    removed = torch.bincount(owner[order], minlength=len(chosen))
    return [g.size - int(r) for g, r in zip(chosen, removed)]


@pytest.mark.parametrize("name", ["resnet50", "vit"])
def test_global_ranking_true_is_what_it_was_without_units_and_exact_in_count_with_them(name: str) -> None:
    """Without units (resnet50) the kept counts are what they were; with heads (vit) each head
    is one item of the ranking, so the channels removed are `level` of all, to one head."""
    model, x = ZOO[name]()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, 0.5, global_ranking=True)
    chosen = [g for g in groups if g.prunable and not g.reaches_output]
    kept = [int(_channel_keep(group, masks).sum()) for group in chosen]
    if not any(g.units for g in chosen):
        expected = _as_it_was(model, groups, 0.5)
        assert min(expected) >= 1  # no group lost all its channels: the floor changes nothing here
        assert kept == expected
    else:
        total = sum(g.size for g in chosen)
        largest = max(len(u) for g in chosen for u in g.units)
        assert total - kept_at_level(total, 0.5) <= total - sum(kept) < total - kept_at_level(total, 0.5) + largest

# --------------------------------------------------------------------------- units as items


@dataclass(frozen=True)
class OneBadChannel(GroupCriterion):
    """MLP channels ramp up; every heads channel scores 1 but one channel of the first head, 0."""

    name: ClassVar[str] = "one bad channel"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        if not group.units:
            return torch.arange(1, group.size + 1, dtype=torch.float32)
        values = torch.ones(group.size)
        values[group.units[0][0]] = 0.0
        return values


@pytest.mark.parametrize("ranking", ["standardized", "mean"])
def test_a_head_goes_by_its_mean_score_not_by_its_worst_channel(ranking: str) -> None:
    """Ranked channel by channel, the one bad channel would take its whole head with it (and the
    head's other channels, which the ranking never chose). Ranked as items, the head's mean is
    what counts, and the channels removed are `level` of all."""
    model, ids = llama("plain", dim=32, heads=8)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(ids,))
    chosen = [g for g in groups if g.prunable and not g.reaches_output]
    assert any(g.units for g in chosen) and any(not g.units for g in chosen)
    masks = fprune.group_masks(model, groups, 0.05, criterion=OneBadChannel(), global_ranking=ranking)  # type: ignore[arg-type]
    for group in chosen:
        keep = _channel_keep(group, masks)
        if group.units:
            assert bool(keep[list(group.units[0])].all()), "the head with one bad channel stays: its mean is high"
    total = sum(g.size for g in chosen)
    removed = total - sum(int(_channel_keep(g, masks).sum()) for g in chosen)
    assert removed == total - kept_at_level(total, 0.05)  # only MLP channels go: exactly the level


def test_channels_no_scored_layer_reads_take_their_units_mean() -> None:
    """FLAP / Wanda-sp / activation score a heads group by o_proj's inputs (the values): the
    query and key channels take their head's mean instead of 0."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 8))
    groups = fprune.channel_groups(torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False))
    heads = next(g for g in groups if g.units)
    stats = fprune.collect_statistics(model, [ids], groups=groups)
    scores = fprune.group_scores(model, heads, criterion=fprune.calibrate.flap(stats))
    read = torch.zeros(heads.size, dtype=torch.bool)
    for member in heads.members:
        if member.role == "consumer":
            read[list(member.channels)] = True
    assert 0 < int(read.sum()) < heads.size and bool((scores > 0).all())
    for unit in heads.units:
        index = torch.tensor(unit)
        values, seen = scores[index], read[index]
        torch.testing.assert_close(values[~seen], values[seen].mean().expand(int((~seen).sum())))
