"""Grouped convolutions (RegNet, ResNeXt): pruned by in-group position, as Torch-Pruning does.

Position j of every group is one unit: each group keeps the same positions, ``groups`` stays,
and the pruned copy computes what the masked model computes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

import fprune
from fprune.groups import ChannelGroup
from tests.exact import groups_with_shapes, prune_exactly
from tests.purity import assert_unchanged, snapshot
from tests.zoo_grouped import ZOO


def _by_producer(groups: tuple[ChannelGroup, ...], fqn: str) -> ChannelGroup:
    return next(g for g in groups if fqn in g.producers)


def _grouped_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}


def _check_groups_kept(model: nn.Module, pruned: nn.Module) -> None:
    """Every grouped conv keeps its `groups`, with a multiple of it as in / out channels."""
    for name, conv in _grouped_convs(model).items():
        after = pruned.get_submodule(name)
        assert isinstance(after, nn.Conv2d)
        assert after.groups == conv.groups
        assert after.in_channels % conv.groups == 0 and after.out_channels % conv.groups == 0
        assert after.weight.shape == (after.out_channels, after.in_channels // conv.groups, *conv.kernel_size)


def _same_positions(keep: Tensor, groups: int) -> bool:
    """The keep vector over a grouped conv's channels keeps the same positions in every group."""
    rows = keep.reshape(groups, -1)
    return bool((rows == rows[0]).all())


# The fraction of parameters group_masks keeps (benchmarks/reach.py --zoo tests.zoo_grouped):
# Torch-Pruning 1.6.1's MagnitudePruner keeps the same (every layer the same shape at 0.3).
KEPT = {("regnety", 0.3): 0.470, ("regnety", 0.5): 0.260, ("resnext", 0.3): 0.433, ("resnext", 0.5): 0.267}


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_prune_exactly_and_keep_groups(name: str, level: float) -> None:
    model, x = ZOO[name]()
    before = snapshot(model)
    pruned, groups = prune_exactly(model, x, level)
    assert_unchanged(model, before)
    assert all(g.prunable or g.reaches_output for g in groups), fprune.explain(groups)
    _check_groups_kept(model, pruned)
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert abs(kept - KEPT[name, level]) < 0.005
    assert all(pruned.get_submodule(n).out_channels < c.out_channels for n, c in _grouped_convs(model).items())  # type: ignore[operator]


def test_every_group_keeps_the_same_positions() -> None:
    model, x = ZOO["resnext"]()
    groups = groups_with_shapes(model, x)
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    for name, conv in _grouped_convs(model).items():
        rows = masks[f"{name}.weight"]  # the grouped conv is the producer of its outputs
        assert _same_positions(rows, conv.groups) and not bool(rows.all())
        # its input: the 1x1 conv before it (conv1.0 -> conv2.0 in each block)
        columns = masks[f"{name.replace('conv2', 'conv1')}.weight"]
        assert _same_positions(columns, conv.groups) and not bool(columns.all())
        per_in = conv.in_channels // conv.groups
        expected = conv.weight.detach()[rows][:, columns[:per_in]]
        torch.testing.assert_close(pruned.get_submodule(name).get_parameter("weight"), expected, rtol=0, atol=0)


class _Residual(nn.Module):
    """A grouped conv reading a residual stream, then a second one with other groups."""

    def __init__(self, first: int, second: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, groups=first), nn.BatchNorm2d(24), nn.ReLU())
        self.again = nn.Conv2d(24, 16, 3, padding=1, groups=second)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.body(h))
        out: Tensor = self.head(torch.relu(self.again(self.grouped(h)) + h))
        return out


class _TwoGroupCounts(nn.Module):
    """Two grouped convs of different group counts whose outputs are added: their ties meet
    on the channels of one residual stream and must make one set of units."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.a = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        out: Tensor = self.head(torch.relu(self.a(h) + self.b(h)))
        return out


class _AfterConcat(nn.Module):
    """A grouped conv (2 groups) reading a concat of two branches: position j of one branch is
    tied to position j of the other."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(16, 12, 3, padding=1, groups=2, bias=False)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1)
        out: Tensor = self.head(torch.relu(self.grouped(h)))
        return out


def _chain(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), *layers, nn.Conv2d(16, 4, 1))


SMALL: dict[str, nn.Module] = {
    "groups=2": _chain(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU()),
    "groups=4": _chain(nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(32, 16, 1), nn.ReLU()),
    "two in a row": _chain(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU()),
    "residual stream": _Residual(4, 2),
    "residual stream, groups 2 then 4": _Residual(2, 4),
    "two group counts added": _TwoGroupCounts(),
    "after a concat": _AfterConcat(),
}


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_cases_prune_exactly(name: str, level: float) -> None:
    torch.manual_seed(0)
    model, x = SMALL[name].eval(), torch.randn(2, 3, 8, 8)
    pruned, groups = prune_exactly(model, x, level)
    _check_groups_kept(model, pruned)
    assert all(pruned.get_submodule(n).in_channels < c.in_channels for n, c in _grouped_convs(model).items())  # type: ignore[operator]
    for group in groups:  # units never overlap: each channel is in one at most
        flat = [c for unit in group.units for c in unit]
        assert len(flat) == len(set(flat))


def test_ties_of_two_group_counts_make_one_set_of_units() -> None:
    groups = groups_with_shapes(_TwoGroupCounts(), torch.randn(1, 3, 8, 8))
    stream = _by_producer(groups, "a.weight")
    assert set(stream.producers) == {"a.weight", "b.weight"}
    assert stream.units == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert "grouped-conv positions" in str(stream)


def test_after_a_concat_the_branches_are_tied_by_position() -> None:
    groups = groups_with_shapes(_AfterConcat(), torch.randn(1, 3, 8, 8))
    group = _by_producer(groups, "left.weight")
    assert set(group.producers) == {"left.weight", "right.weight"} and len(group.units) == 8
    assert ("grouped.weight", 1, "consumer") in {(m.fqn, m.dim, m.role) for m in group.members}


def test_a_mask_removing_a_position_in_one_group_only_is_refused() -> None:
    model = _chain(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU())
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    keep = torch.ones(16, dtype=torch.bool)
    keep[5] = False  # position 1 of group 1 (input channels 1, 5, 9, 13 are one unit)
    message = (
        "apply_prune: mask for `0.weight` removes part of a unit (an attention head, or one in-group position "
        "of a grouped conv): its 4 channels (group channels 1, 5, 9, 13)"
    )
    with pytest.raises(fprune.PruneError, match=re.escape(message)):
        fprune.apply_prune(model, {"0.weight": keep}, groups)
    keep[torch.tensor([1, 9, 13])] = False  # the whole unit: fine
    pruned = fprune.apply_prune(model, {"0.weight": keep}, groups)
    assert pruned.get_submodule("2").in_channels == 12


def test_output_positions_are_units_too() -> None:
    model = _chain(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU())
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    keep = torch.ones(16, dtype=torch.bool)
    keep[6] = False
    with pytest.raises(fprune.PruneError, match=r"removes part of a unit .* \(group channels 2, 6, 10, 14\)"):
        fprune.apply_prune(model, {"2.weight": keep}, groups)


def test_grouped_conv_transpose_is_blocked() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    group = _by_producer(groups, "0.weight")
    assert not group.prunable
    assert group.blockers[0].reason == (
        "grouped ConvTranspose `2` (groups=2) is not supported: only non-transposed grouped convs are pruned by in-group position"
    )


def test_depthwise_multiplier_input_is_blocked_its_outputs_are_not() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 12, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(12, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    groups = groups_with_shapes(model, x)
    inputs = _by_producer(groups, "0.weight")
    assert not inputs.prunable
    assert inputs.blockers[0].reason.startswith(
        "grouped conv `2` (groups=4, 4 -> 12 channels) reads one input channel per group: removing one would remove "
        "its whole group, which changes `groups`"
    )
    outputs = _by_producer(groups, "2.weight")
    assert outputs.prunable and outputs.units == ((0, 3, 6, 9), (1, 4, 7, 10), (2, 5, 8, 11))
    pruned, _ = prune_exactly(model, x, 0.5)
    assert pruned.get_submodule("2").out_channels == 4 and pruned.get_submodule("2").groups == 4


def test_one_output_per_group_is_blocked() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    outputs = _by_producer(groups, "2.weight")
    assert not outputs.prunable
    assert "makes one output channel per group" in outputs.blockers[0].reason
    inputs = _by_producer(groups, "0.weight")
    assert inputs.prunable and inputs.units == ((0, 2, 4, 6), (1, 3, 5, 7))


class _FromFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.grouped = nn.Conv1d(32, 8, 3, groups=4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.grouped(torch.relu(self.conv(x)).flatten(1, 2))
        return out


def test_grouped_conv_reading_flattened_channels_is_blocked() -> None:
    model, x = _FromFlatten(), torch.randn(2, 3, 8, 8)
    groups = groups_with_shapes(model, x)
    group = _by_producer(groups, "conv.weight")
    assert not group.prunable and "`grouped` reads channels on dim -2" in group.blockers[0].reason
