"""Reach on CNNs whose channels pass through layout ops (tests/zoo_cnn_layout.py): ShuffleNetV2's
channel shuffle written with view / transpose / view, GhostNet's ``out[:, :self.oup]`` and
YOLOv8's C2f chunk / split are pruned exactly; the variants fprune cannot keep right block,
with their reasons."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import fprune
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot
from ..zoo_cnn_layout import (
    ZOO,
    C2f,
    GhostModule,
    channel_shuffle,
    channel_shuffle_flat,
)


def _group_of(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    return next(g for g in groups if producer in g.producers)


def _kept(pruned: nn.Module, model: nn.Module) -> float:
    return sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_layout_families_prune_every_group_exactly(name: str, level: float) -> None:
    """Every group is prunable (before: the shuffles and the ghost slices blocked the channels of
    every block output) and the copy equals the masked model in float64."""
    model, x = ZOO[name]()
    before = snapshot(model)
    groups = groups_with_shapes(model, x)
    assert all(g.prunable for g in groups if not g.reaches_output), fprune.explain(groups)
    pruned, _ = prune_exactly(model, x, level)
    assert _kept(pruned, model) < 1 - level + 0.1  # the block outputs went too, not only the insides
    assert_unchanged(model, before)


# --- channel shuffle: view / transpose / view ------------------------------------------------------


class _Shuffled(nn.Module):
    """conv (8 channels) -> a channel shuffle written in one of several forms -> conv."""

    def __init__(self, form: str, groups: int = 2) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(4 if form in ("then sum", "count reused") else 8, 5, 1)
        self.form, self.groups = form, groups

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        b, c, height, width = h.size()
        if self.form == "torchvision":
            h = channel_shuffle(h, self.groups)
        elif self.form == "flat":
            h = channel_shuffle_flat(h, self.groups)
        elif self.form == "reshape, -1":  # reshape, .transpose method, no contiguous
            h = h.reshape(b, self.groups, -1, height, width).transpose(2, 1).reshape(b, -1, height, width)
        elif self.form == "then sum":  # the split channels summed over the groups: mixes channels
            h = h.view(b, self.groups, -1, height, width).sum(1)
        elif self.form == "permute":  # the same shuffle as a permute: not the recognised pattern
            h = h.view(b, self.groups, -1, height, width).permute(0, 2, 1, 3, 4).reshape(b, -1, height, width)
        elif self.form == "literal size":  # C / g written as a number: pruning would not change it
            h = torch.transpose(h.view(b, self.groups, 4, height, width), 1, 2).contiguous().view(b, -1, height, width)
        elif self.form == "count reused":  # C // g also used for something else
            per = c // self.groups
            h = torch.transpose(h.view(b, self.groups, per, height, width), 1, 2).contiguous().view(b, -1, height, width)
            h = h[:, :per]
        out: Tensor = self.conv2(h)
        return out


@pytest.mark.parametrize("form", ["torchvision", "flat", "reshape, -1"])
def test_a_view_transpose_view_shuffle_ties_in_group_positions(form: str) -> None:
    """Channel a * 4 + b moves to b * 2 + a: the two channels of each b are one unit, and conv2
    reads them in the shuffled order."""
    torch.manual_seed(0)
    model, x = _Shuffled(form).eval(), torch.randn(2, 3, 4, 4)
    groups = groups_with_shapes(model, x)
    group = _group_of(groups, "conv1.weight")
    assert group.prunable and group.units == ((0, 4), (1, 5), (2, 6), (3, 7))
    consumer = next(m for m in group.members if m.fqn == "conv2.weight")
    assert list(consumer.channels) == [0, 4, 1, 5, 2, 6, 3, 7]
    pruned, _ = prune_exactly(model, x, 0.5)
    conv1 = pruned.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d) and conv1.out_channels == 4


def test_a_shuffle_in_three_groups_ties_three_channels() -> None:
    torch.manual_seed(0)
    model = _Shuffled("torchvision", groups=3)
    model.conv1, model.conv2 = nn.Conv2d(3, 9, 1), nn.Conv2d(9, 5, 1)
    x = torch.randn(2, 3, 4, 4)
    group = _group_of(groups_with_shapes(model.eval(), x), "conv1.weight")
    assert group.units == ((0, 3, 6), (1, 4, 7), (2, 5, 8))
    prune_exactly(model, x, 0.5)


@pytest.mark.parametrize(
    ("form", "node", "reason"),
    [
        ("then sum", "view", "a view / reshape of channels that are not on the last dim"),
        ("permute", "view", "a view / reshape of channels that are not on the last dim"),
        ("literal size", "view", "splits the channels into 2 groups of `4`, a size that pruning would not change"),
        ("count reused", "floordiv", "reads a size of these channels from a tensor's shape"),
    ],
)
def test_other_views_that_split_the_channels_block(form: str, node: str, reason: str) -> None:
    torch.manual_seed(0)
    model, x = _Shuffled(form).eval(), torch.randn(2, 3, 4, 4)
    group = _group_of(groups_with_shapes(model, x), "conv1.weight")
    assert not group.prunable
    assert any(b.node == node and reason in b.reason for b in group.blockers), group.blockers


def test_a_shufflenet_stage_ties_the_chunk_halves_and_the_shuffle() -> None:
    """In a stride-1 unit, ``x.chunk(2)`` must keep equal halves: position j of each half is one
    unit with j of the other, and the shuffle ties each in-group position, so the units of a
    stage grow with its units (here 12 units of 6 channels for stage 2)."""
    model, x = ZOO["shufflenetv2"]()
    groups = groups_with_shapes(model, x)
    stage = _group_of(groups, "stage2.0.branch1.2.weight")
    assert stage.prunable and stage.size == 72
    assert len(stage.units) == 12 and {len(u) for u in stage.units} == {6}
    assert {"stage2.0.branch2.5.weight", "stage2.1.branch2.5.weight"} <= set(stage.producers)


# --- GhostNet: out[:, :self.oup] ---------------------------------------------------------------


class _Ghost(nn.Module):
    def __init__(self, oup: int) -> None:
        super().__init__()
        self.ghost = GhostModule(3, oup)
        self.conv = nn.Conv2d(oup, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(self.ghost(x))
        return out


@pytest.mark.parametrize(("keep", "oup"), [([True, False, False, True], 3), ([True, True, False, False], 4), ([False, False, True, True], 3)])
def test_a_ghost_slice_rewrites_oup_to_the_kept_channels_among_the_first_k(keep: list[bool], oup: int) -> None:
    """GhostModule(3, 7): 4 primary channels, 4 cheap copies, cut to 7 (the last cheap one goes).
    The slice end is a literal of the group; the pruned copy's ``oup`` counts the kept channels
    among the first 7 positions (c0 c1 c2 c3 c0 c1 c2)."""
    torch.manual_seed(0)
    model, x = _Ghost(7).double().eval(), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    groups = groups_with_shapes(model, x)
    group = _group_of(groups, "ghost.primary_conv.0.weight")
    assert group.prunable and group.size == 4
    (literal,) = group.literals
    assert (literal.value, literal.module, literal.heads) == (7, "ghost", (0, 1, 2, 3, 0, 1, 2))
    masks = {"ghost.primary_conv.0.weight": torch.tensor(keep)}
    pruned = fprune.apply_prune(model, masks, groups)
    assert pruned.get_submodule("ghost").oup == oup and model.ghost.oup == 7
    expected = torch.func.functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
    torch.testing.assert_close(pruned(x), expected, rtol=1e-9, atol=1e-10)


def test_a_ghost_slice_to_the_whole_width_needs_no_rewrite() -> None:
    torch.manual_seed(0)
    model, x = _Ghost(8).eval(), torch.randn(2, 3, 4, 4)
    group = _group_of(groups_with_shapes(model, x), "ghost.primary_conv.0.weight")
    assert group.prunable and not group.literals
    pruned, _ = prune_exactly(model, x, 0.5)
    assert pruned.get_submodule("ghost").oup == 8  # past the pruned width: still every channel


class _Sliced(nn.Module):
    """conv (8 channels) -> a slice of the channels -> conv."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)
        width = {"step": 4, "start": 6, "from the end": 7, "two groups": 10}[form]
        self.conv3 = nn.Conv2d(width, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x)
        if self.form == "step":
            h = h[:, ::2]
        elif self.form == "start":
            h = h[:, 2:]
        elif self.form == "from the end":
            h = h[:, :-1]
        else:  # past the first group's channels: one number would count two groups
            h = torch.cat([h, self.conv2(x)], 1)[:, :10]
        out: Tensor = self.conv3(h)
        return out


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ("step", "`getitem` slices the channels with step 2"),
        ("start", "`getitem` slices the channels from position 2"),
        ("from the end", "slices the channels up to -1"),
        ("two groups", "`getitem` writes one number that counts channels of 2 channel groups"),
    ],
)
def test_other_channel_slices_block(form: str, reason: str) -> None:
    torch.manual_seed(0)
    model, x = _Sliced(form).eval(), torch.randn(2, 3, 4, 4)
    groups = groups_with_shapes(model, x)
    group = _group_of(groups, "conv1.weight")
    assert not group.prunable
    assert any(reason in b.reason for b in group.blockers), group.blockers
    if form == "two groups":
        assert not _group_of(groups, "conv2.weight").prunable


# --- YOLOv8 C2f: chunk / split --------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_c2f_ties_the_halves_and_rewrites_c(split: bool) -> None:
    """cv1's halves lose the same positions (chunk and split need equal pieces); with
    ``split((self.c, self.c), 1)`` the pruned copy's ``self.c`` is the kept half."""
    torch.manual_seed(0)
    model, x = C2f(8, 8, n=2, split=split).eval(), torch.randn(2, 8, 6, 6)
    groups = groups_with_shapes(model, x)
    group = _group_of(groups, "cv1.conv.weight")
    assert group.prunable and group.units == tuple((j, 4 + j) for j in range(4))
    assert [(lit.node, lit.index, lit.value) for lit in group.literals] == ([("split", 0, 4), ("split", 1, 4)] if split else [])
    pruned, _ = prune_exactly(model, x, 0.5)
    assert isinstance(pruned, C2f) and pruned.cv1.conv.out_channels == 4
    assert pruned.c == (2 if split else 4) and model.c == 4


class _Chunk(nn.Module):
    def __init__(self, width: int, pieces: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 1), nn.Conv2d(width, 4, 1)
        self.pieces = pieces

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x)
        out: Tensor = self.conv2(torch.cat(h.chunk(self.pieces, 1), 1))
        return out


def test_a_chunk_into_unequal_pieces_blocks() -> None:
    torch.manual_seed(0)
    model, x = _Chunk(7, 2).eval(), torch.randn(2, 3, 4, 4)
    group = _group_of(groups_with_shapes(model, x), "conv1.weight")
    assert not group.prunable
    assert any("a split into pieces of unequal sizes [4, 3]" in b.reason for b in group.blockers)


class _NarrowSlice(nn.Module):
    """Six channels, a concat with their depthwise copies, cut to the first `k` (regression: the
    fuzzer's ghost-depthwise block with oup=1, whose only counted channel group_masks removed)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(3, 6, 1)
        self.cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Conv2d(k, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        out: Tensor = self.head(torch.cat([y, self.cheap(y)], dim=1)[:, : self.k])
        return out


def test_a_slice_keeps_at_least_one_channel_and_a_mask_that_empties_it_is_refused() -> None:
    torch.manual_seed(0)
    model, x = _NarrowSlice(1).eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        model.conv.weight[0].mul_(1e-3)  # channel 0, the only one the slice keeps, scores lowest
    pruned, groups = prune_exactly(model, x, 0.5)
    conv = pruned.get_submodule("conv")
    assert getattr(pruned, "k") == 1 and isinstance(conv, nn.Conv2d) and conv.out_channels < 6
    masks = {"conv.weight": torch.tensor([False, True, True, True, True, True])}
    with pytest.raises(fprune.PruneError, match=r"removes every channel that the number 1 at `getitem\w*` counts"):
        fprune.apply_prune(model, masks, groups)
