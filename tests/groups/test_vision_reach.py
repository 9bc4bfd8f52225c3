"""Reach on vision families (issue 13): squeeze-and-excitation gates are exact through the
product, a constant that removed channels carry into the next layer folds into its bias (see
also test_bias_fold.py), and every other use of channels that are not zero where removed is
refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot
from ..vision_zoo import VISION_ZOO


def _exact(model: nn.Module, x: Tensor, level: float) -> nn.Module:
    return prune_exactly(model, x, level)[0]


def _kept(pruned: nn.Module, model: nn.Module) -> float:
    return sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())


# The fraction of parameters prune_channels keeps at 0.3 / 0.5 (benchmarks/reach.py; Torch-Pruning
# 1.6.1 keeps 0.515 / 0.302 of EfficientNet and 0.509 / 0.283 of MobileNetV3). Before SE gates were
# followed: 0.746 / 0.551 and 0.640 / 0.429; with int(level * size) removed (before TP's rounding):
# 0.552 / 0.302 and 0.525 / 0.283.
KEPT = {("efficientnet", 0.3): 0.515, ("efficientnet", 0.5): 0.302, ("mobilenetv3", 0.3): 0.509, ("mobilenetv3", 0.5): 0.283}


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(VISION_ZOO))
def test_se_families_prune_every_group_exactly(name: str, level: float) -> None:
    model, x = VISION_ZOO[name]()
    before = snapshot(model)
    groups = groups_with_shapes(model, x)
    assert all(g.prunable for g in groups if not g.reaches_output), fprune.explain(groups)
    pruned = _exact(model, x, level)
    assert abs(_kept(pruned, model) - KEPT[name, level]) < 0.005
    assert_unchanged(model, before)


def test_an_se_gate_joins_the_channels_it_scales() -> None:
    """The gate's expand conv produces the same channels as the block's expand conv: one group,
    with the depthwise conv, both BatchNorms and the SE reduce conv's input columns; the SE's
    own reduced width is a group of its own."""
    model, x = VISION_ZOO["efficientnet"]()
    groups = groups_with_shapes(model, x)
    block = _groups_of(groups, "blocks.1.conv_pw.weight")
    members = {(m.fqn, m.role) for m in block.members}
    assert {
        ("blocks.1.conv_pw.weight", "producer"),
        ("blocks.1.se.conv_expand.weight", "producer"),
        ("blocks.1.se.conv_expand.bias", "carrier"),
        ("blocks.1.conv_dw.weight", "carrier"),
        ("blocks.1.bn2.weight", "carrier"),
        ("blocks.1.se.conv_reduce.weight", "consumer"),
        ("blocks.1.conv_pwl.weight", "consumer"),
    } <= members
    reduced = _groups_of(groups, "blocks.1.se.conv_reduce.weight")
    assert reduced.prunable and reduced is not block


def _groups_of(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    return next(g for g in groups if producer in g.producers)


class _Gated(nn.Module):
    """A Linear's channels combined with a sigmoid gate in several ways."""

    def __init__(self, combine: str) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.combine = combine

    def forward(self, x: Tensor) -> Tensor:
        h, raw = self.fc1(x), self.gate(x)
        g = torch.sigmoid(raw)
        if self.combine == "product":
            out = h * g
        elif self.combine == "sum":
            out = h + g
        elif self.combine == "quotient":
            out = h / g
        elif self.combine == "gate alone":
            out = g
        elif self.combine == "written hard sigmoid":  # GhostNet's gate: relu6(g + 3) / 6
            out = h * (F.relu6(raw + 3.0) / 6.0)
        elif self.combine == "shifted":  # the constant reaches fc2
            out = F.relu6(raw + 3.0) / 6.0
        else:  # the product of two gates: still non-zero where removed
            out = g * F.hardsigmoid(h)
        result: Tensor = self.fc2(out)
        return result


def test_channels_not_zero_where_removed_block_where_they_divide_with_the_reason() -> None:
    model = _Gated("quotient")
    groups = groups_with_shapes(model, torch.randn(2, 6))
    group = _groups_of(groups, "gate.weight")
    assert not group.prunable
    reasons = " ".join(b.reason for b in group.blockers)
    assert "divides channels whose removed entries are not zero" in reasons


@pytest.mark.parametrize(("combine", "value"), [("sum", 0.5), ("gate alone", 0.5), ("two gates", 0.25), ("shifted", 0.5)])
def test_a_constant_that_reaches_the_next_layer_folds_into_its_bias(combine: str, value: float) -> None:
    torch.manual_seed(0)
    model = _Gated(combine)
    groups = groups_with_shapes(model, torch.randn(2, 6))
    group = _groups_of(groups, "gate.weight")
    assert group.prunable and [(f.bias, f.value) for f in group.folds] == [("fc2.bias", value)]
    _exact(model, torch.randn(4, 6), 0.5)


@pytest.mark.parametrize("combine", ["product", "written hard sigmoid"])
def test_a_product_gate_is_exact_on_linear_layers_too(combine: str) -> None:
    torch.manual_seed(0)
    model = _Gated(combine)
    groups = groups_with_shapes(model, torch.randn(2, 6))
    group = _groups_of(groups, "gate.weight")
    assert group.prunable and "fc1.weight" in group.producers
    _exact(model, torch.randn(4, 6), 0.5)


def test_a_user_rule_sees_a_non_zero_axis_only_when_it_says_it_handles_it() -> None:
    """An op whose rule is not marked ``handles_nonzero`` blocks the channels that reach it not
    zero where removed; marked, the rule gets them and says what its output carries."""

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.rand(8) + 0.5)

        def forward(self, x: Tensor) -> Tensor:
            return x * self.scale

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.gate, self.fc2, self.s = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3), Scale()

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.fc2(self.fc1(x) * self.s(torch.sigmoid(self.gate(x))))
            return out

    class Leaf(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return isinstance(m, Scale) or super().is_leaf_module(m, module_qualified_name)

    def scale_rule(ctx: fprune.groups.FlowContext) -> fprune.groups.Flow:
        axis = ctx.input(0)
        assert isinstance(axis, fprune.groups.Axis)
        ctx.carry("scale", 0, fprune.groups.Axis(0, axis.ids))
        return axis  # a per-channel scale keeps non-zero values non-zero: the axis as it came

    model = Model()
    gm = torch.fx.GraphModule(model, Leaf().trace(model))
    rules = fprune.groups.default_flow_rules()
    rules[Scale] = scale_rule
    unmarked = _groups_of(fprune.channel_groups(gm, rules=rules), "gate.weight")
    assert not unmarked.prunable and "module `s` (Scale) would pass it on" in unmarked.blockers[0].reason
    rules[Scale] = fprune.groups.handles_nonzero(scale_rule)
    marked = _groups_of(fprune.channel_groups(gm, rules=rules), "gate.weight")
    assert marked.prunable and "fc1.weight" in marked.producers
    keep = torch.tensor([True, False] * 4)
    pruned = fprune.apply_prune(model, {"fc1.weight": keep}, fprune.channel_groups(gm, rules=rules))
    x = torch.randn(3, 6)
    expected = functional_call(model, fprune.masked_parameters(model, {"fc1.weight": keep}, fprune.channel_groups(gm, rules=rules)), (x,))
    torch.testing.assert_close(pruned(x), expected)



class _FunctionalNorm(nn.Module):
    """conv -> F.batch_norm with the model's tensors (or without affine ones) -> conv."""

    def __init__(self, affine: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.norm = nn.BatchNorm2d(8, affine=affine)
        self.affine = affine

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        h = F.batch_norm(self.conv1(x), n.running_mean, n.running_var, n.weight, n.bias, False, 0.1, n.eps)
        out: Tensor = self.conv2(h)
        return out


def test_functional_batch_norm_carries_the_model_tensors_and_refuses_without_affine_ones() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    model = _FunctionalNorm(affine=True).eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
    group = _groups_of(groups_with_shapes(model, x), "conv1.weight")
    assert group.prunable and {"norm.running_mean", "norm.running_var", "norm.weight", "norm.bias"} <= {m.fqn for m in group.members}
    pruned = _exact(model, x, 0.5)
    assert pruned.get_submodule("norm").num_features == 4
    bare = _groups_of(groups_with_shapes(_FunctionalNorm(affine=False).eval(), x), "conv1.weight")
    assert not bare.prunable and "no affine weight and bias" in bare.blockers[0].reason


class _ClassicSE(nn.Module):
    """SENet's gate: Linear layers on ``pool(x).view(b, c)``, back with ``.view(b, c, 1, 1)`` and
    ``x * y.expand_as(x)``; `sizes` says how the views write the channel count."""

    def __init__(self, sizes: str) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 8), nn.Sigmoid())
        self.sizes = sizes

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        b, c, _, _ = x.size()
        if self.sizes == "read":
            y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        elif self.sizes == "-1":
            y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, -1)).view(b, -1, 1, 1)
        else:  # the count written as a number: pruning would change it
            y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, 8)).view(b, 8, 1, 1)
        out: Tensor = self.out(x * y.expand_as(x))
        return out


@pytest.mark.parametrize("sizes", ["read", "-1"])
def test_a_classic_se_gate_with_views_and_expand_as_is_exact(sizes: str) -> None:
    torch.manual_seed(0)
    model, x = _ClassicSE(sizes), torch.randn(2, 3, 5, 5)
    group = _groups_of(groups_with_shapes(model, x), "conv.weight")
    assert group.prunable and "fc.2.weight" in group.producers
    pruned = _exact(model, x, 0.5)
    assert pruned.get_submodule("fc.0").in_features == 4


def test_a_classic_se_gate_with_the_count_written_as_a_number_blocks() -> None:
    group = _groups_of(groups_with_shapes(_ClassicSE("literal"), torch.randn(2, 3, 5, 5)), "conv.weight")
    assert not group.prunable and any("writes the channel count as the number 8" in b.reason for b in group.blockers)
