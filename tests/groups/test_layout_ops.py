"""Ops that keep each channel's values together (issue 13): copies and casts, resampling,
reductions over other dims, unsqueeze, and the channel shuffle, each exact against the masked
model and each refused where it would mix channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune

from ..exact import groups_with_shapes, prune_exactly


class _Keeps(nn.Module):
    """conv -> op -> conv, the op one of the ones that keep channels in place."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        op = self.op
        if op == "clone":
            h = h.clone()
        elif op == "torch.clone":
            h = torch.clone(h)
        elif op == "detach":
            h = h.detach()
        elif op == "to":
            h = h.to(torch.float64)
        elif op == "double":
            h = h.double()
        elif op == "interpolate":
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        elif op == "Upsample":
            h = self.up(h)
        elif op == "amax":
            h = h + h.amax(dim=(2, 3), keepdim=True)  # x + (reduction of x): the same channels
        elif op == "sum":
            h = h * h.sum(dim=(2, 3), keepdim=True)
        elif op == "unsqueeze":
            h = h.mean((2, 3)).unsqueeze(-1).unsqueeze(-1)
        out: Tensor = self.conv2(h)
        return out


OPS = ["clone", "torch.clone", "detach", "to", "double", "interpolate", "Upsample", "amax", "sum", "unsqueeze"]


@pytest.mark.parametrize("op", OPS)
def test_ops_that_keep_channels_in_placeprune_exactly(op: str) -> None:
    torch.manual_seed(0)
    model = _Keeps(op)
    x = torch.randn(2, 3, 6, 6)
    pruned, groups = prune_exactly(model, x)
    group = next(g for g in groups if "conv1.weight" in g.producers)
    assert group.prunable and pruned.get_submodule("conv2").in_channels == 4


class _Mixes(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # [B, T, 8]: the channels are on the last dim
        if self.op == "interpolate":
            h = F.interpolate(h, scale_factor=2.0)  # resamples the last dim: the channels
        elif self.op == "sum":
            h = h * h.sum(-1, keepdim=True)  # a sum over the channels
        else:
            h = F.channel_shuffle(h, 2)  # shuffles dim 1: tokens, not channels
        out: Tensor = self.fc2(h[..., :8])
        return out


@pytest.mark.parametrize("op", ["interpolate", "sum", "channel_shuffle"])
def test_the_same_ops_along_the_channels_block(op: str) -> None:
    groups = groups_with_shapes(_Mixes(op), torch.randn(2, 6, 4))
    group = next(g for g in groups if "fc1.weight" in g.producers)
    assert not group.prunable


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (stride 1): split the channels in two, transform one half, concat, shuffle."""

    def __init__(self, channels: int, form: str) -> None:
        super().__init__()
        half = channels // 2
        self.stem = nn.Conv2d(3, channels, 1)
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
        )  # fmt: skip
        self.shuffle = nn.ChannelShuffle(2)
        self.form = form
        self.head = nn.Conv2d(channels, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        x1, x2 = h.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        out = self.shuffle(out) if self.form == "module" else F.channel_shuffle(out, 2)
        result: Tensor = self.head(out)
        return result


@pytest.mark.parametrize("form", ["module", "function"])
def test_a_shufflenet_unit_prunes_exactly_by_units_of_one_channel_per_group(form: str) -> None:
    torch.manual_seed(0)
    model = _ShuffleUnit(8, form).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5)
    pruned, groups = prune_exactly(model, x)
    stream = next(g for g in groups if "stem.weight" in g.producers)
    assert stream.prunable and "branch.5.weight" in stream.producers  # the two halves, tied by the shuffle
    # a unit: stem channel b of the first half, its twin b of the second half (the chunk keeps the
    # halves equal) and the branch's channel b (the shuffle puts it next to the first)
    assert stream.units == ((0, 4, 8), (1, 5, 9), (2, 6, 10), (3, 7, 11))
    assert pruned.get_submodule("head").in_channels == 4


class _PartialConcat(nn.Module):
    """A concat along the channels of a tracked tensor and one fprune does not track (the model
    input, or a tensor made from nothing it follows)."""

    def __init__(self, other: str) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8 + 3, 4, 1)
        self.other = other

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        extra = x if self.other == "input" else torch.ones_like(x) * 0.5
        out: Tensor = self.conv2(torch.cat((extra, h), dim=1))
        return out


@pytest.mark.parametrize("other", ["input", "constant"])
def test_a_concat_with_an_untracked_tensor_fixes_only_its_positions(other: str) -> None:
    torch.manual_seed(0)
    model = _PartialConcat(other)
    x = torch.randn(2, 3, 4, 4)
    pruned, groups = prune_exactly(model, x)
    assert next(g for g in groups if "conv1.weight" in g.producers).prunable
    fixed = next(g for g in groups if not g.producers)
    assert not fixed.prunable and "does not track" in fixed.blockers[0].reason and fixed.size == 3
    assert pruned.get_submodule("conv2").in_channels == 3 + 4
    without_shapes = fprune.channel_groups(torch.fx.symbolic_trace(model))  # the untracked width is unknown
    assert not next(g for g in without_shapes if "conv1.weight" in g.producers).prunable
