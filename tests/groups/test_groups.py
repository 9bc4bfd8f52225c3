"""channel_groups: which slices are pruned together, and what blocks a group."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune
from fprune import ChannelGroup

from ..zoo import ZOO


def _groups(model: nn.Module, x: Tensor | None = None) -> tuple[ChannelGroup, ...]:
    return fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=None if x is None else (x,))


def _by_producer(groups: tuple[ChannelGroup, ...], fqn: str) -> ChannelGroup:
    return next(g for g in groups if fqn in g.producers)


def _members(group: ChannelGroup) -> set[tuple[str, int, str]]:
    return {(m.fqn, m.dim, m.role) for m in group.members}


def test_resnet_residual_stream_is_one_group_with_every_block_output() -> None:
    model, x = ZOO["resnet18"]()
    groups = _groups(model, x)
    stream = _by_producer(groups, "layer2.0.conv2.weight")
    assert stream.producers == ("layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer2.1.conv2.weight")
    assert stream.size == 32 and stream.prunable and not stream.reaches_output
    members = _members(stream)
    assert ("layer2.0.downsample.1.weight", 0, "carrier") in members
    assert ("layer2.1.conv1.weight", 1, "consumer") in members
    assert ("layer3.0.downsample.0.weight", 1, "consumer") in members
    inner = _by_producer(groups, "layer2.0.conv1.weight")
    assert _members(inner) == {
        ("layer2.0.conv1.weight", 0, "producer"),
        ("layer2.0.bn1.weight", 0, "carrier"),
        ("layer2.0.bn1.bias", 0, "carrier"),
        ("layer2.0.bn1.running_mean", 0, "carrier"),
        ("layer2.0.bn1.running_var", 0, "carrier"),
        ("layer2.0.conv2.weight", 1, "consumer"),
    }


def test_classifier_outputs_reach_the_output_and_features_flatten_into_its_columns() -> None:
    model, x = ZOO["resnet18"]()
    groups = _groups(model, x)
    head = _by_producer(groups, "fc.weight")
    assert head.reaches_output and head.size == 10
    last = _by_producer(groups, "layer4.1.conv2.weight")
    fc = next(m for m in last.members if m.fqn == "fc.weight")
    assert fc.role == "consumer" and fc.dim == 1 and fc.positions == range(128) and fc.channels == range(128)


def test_densenet_concat_offsets_each_producer_into_the_consumer_columns() -> None:
    model, x = ZOO["densenet"]()
    groups = _groups(model, x)
    stem = _by_producer(groups, "conv0.weight")
    first_new = _by_producer(groups, "block1.0.conv2.weight")
    consumer = "block1.2.conv1.weight"
    stem_cols = next(m for m in stem.members if m.fqn == consumer)
    new_cols = next(m for m in first_new.members if m.fqn == consumer)
    assert stem_cols.positions == range(16)
    assert new_cols.positions == range(16, 24)
    assert stem.size == 16 and first_new.size == 8


def test_depthwise_conv_carries_its_input_channels() -> None:
    model, x = ZOO["mobilenetv2"]()
    expand = _by_producer(_groups(model, x), "features.2.conv.0.0.weight")
    assert expand.size == 48 and expand.prunable
    assert _members(expand) == {
        ("features.2.conv.0.0.weight", 0, "producer"),
        *{(f"features.2.conv.0.1.{n}", 0, "carrier") for n in ("weight", "bias", "running_mean", "running_var")},
        ("features.2.conv.1.0.weight", 0, "carrier"),  # the depthwise filters go with their channels
        *{(f"features.2.conv.1.1.{n}", 0, "carrier") for n in ("weight", "bias", "running_mean", "running_var")},
        ("features.2.conv.2.weight", 1, "consumer"),
    }


class _WithNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 2, bias=False)  # no bias to fold sigmoid's 0.5 into

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(self.norm(self.fc1(x)))
        out: Tensor = self.fc3(torch.sigmoid(h))
        return out


def test_normalization_and_non_zero_preserving_ops_block_their_groups_with_reasons() -> None:
    groups = _groups(_WithNorm())
    normed = _by_producer(groups, "fc1.weight")
    assert not normed.prunable
    assert normed.blockers[0].node == "norm" and "normalizes across the channels" in normed.blockers[0].reason
    sig = _by_producer(groups, "fc2.weight")
    assert not sig.prunable and "maps 0 to 0.5" in sig.blockers[0].reason
    text = fprune.explain(groups)
    assert "3 channel groups, 1 prunable" in text  # fc3: the output group
    assert "blocked at `norm`" in text and "NOT prunable" in text


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.cumsum(self.fc1(x), dim=-1))
        return out


class _Scale(nn.Module):
    """A user module: multiplies each channel by a learned scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class _Leaf(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _Scale) or super().is_leaf_module(m, module_qualified_name)


class _WithScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.scale = _Scale(8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(F.relu(self.scale(self.fc1(x))))
        return out


def _scale_rule(ctx: fprune.groups.FlowContext) -> fprune.groups.Axis | None:
    axis = ctx.input(0)
    if isinstance(axis, fprune.groups.Axis):
        ctx.carry("scale", 0, fprune.groups.Axis(0, axis.ids))
        return axis
    return None


def test_unknown_ops_block_and_user_rules_teach_new_modules() -> None:
    unknown = _by_producer(_groups(_Unknown()), "fc1.weight")
    assert not unknown.prunable and "function cumsum is not understood" in unknown.blockers[0].reason

    model = _WithScale()
    gm = torch.fx.GraphModule(model, _Leaf().trace(model))
    blocked = _by_producer(fprune.channel_groups(gm), "fc1.weight")
    assert not blocked.prunable and "module `scale` (_Scale)" in blocked.blockers[0].reason
    rules = fprune.groups.default_flow_rules()
    rules[_Scale] = _scale_rule
    group = _by_producer(fprune.channel_groups(gm, rules=rules), "fc1.weight")
    assert group.prunable and ("scale.scale", 0, "carrier") in _members(group)
    keep = torch.tensor([True, False] * 4)
    pruned = fprune.apply_prune(model, {"fc1.weight": keep}, fprune.channel_groups(gm, rules=rules))
    assert pruned.get_submodule("scale").get_parameter("scale").shape == (4,)
    x = torch.randn(3, 4)
    expected = torch.func.functional_call(model, fprune.masked_parameters(model, {"fc1.weight": keep}, fprune.channel_groups(gm, rules=rules)), (x,))
    torch.testing.assert_close(pruned(x), expected)


def test_grouped_conv_ties_in_group_positions_on_both_sides() -> None:
    # more in tests/groups/test_grouped_conv.py
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    groups = _groups(model)
    inputs, outputs = _by_producer(groups, "0.weight"), _by_producer(groups, "2.weight")
    assert inputs.prunable and inputs.units == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert ("2.weight", 1, "consumer") in _members(inputs)
    assert outputs.prunable and outputs.units == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert _by_producer(groups, "4.weight").reaches_output


def test_records_are_frozen_and_analysis_leaves_the_graph_alone() -> None:
    model, x = ZOO["resnet18"]()
    gm = torch.fx.symbolic_trace(model)
    code = gm.code
    metas = [dict(n.meta) for n in gm.graph.nodes]
    groups = fprune.channel_groups(gm, example_inputs=(x,))
    assert gm.code == code and [dict(n.meta) for n in gm.graph.nodes] == metas
    with pytest.raises(dataclasses.FrozenInstanceError):
        groups[0].size = 3  # type: ignore[misc]
    assert groups == fprune.channel_groups(gm, example_inputs=(x,))


def test_channel_groups_needs_a_graph_module() -> None:
    with pytest.raises(fprune.PruneError, match=r"^channel_groups: expects a torch.fx.GraphModule, got Sequential"):
        fprune.channel_groups(nn.Sequential())  # type: ignore[arg-type]


class _SplitMerge(nn.Module):
    """chunk / split / sub / mul / torch.add / mean over space: every op a channel can pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3)
        self.left = nn.Conv2d(6, 6, 1)
        self.right = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 5)
        self.gate = nn.Linear(6, 5)
        self.out = nn.Linear(5, 2)
        self.piece = 3

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.chunk(F.relu(self.conv(x)), 2, dim=1)
        c, d = self.left(a).split(self.piece, dim=1)
        e = torch.cat([d, c], dim=1)
        r = self.right(b)
        h = torch.add(e, r) - e * r
        pooled = h.mean((2, 3))
        out: Tensor = self.out(self.fc(pooled) * torch.tanh(self.gate(pooled)))
        return out


def test_split_chunk_sub_mul_and_mean_are_followed_exactly() -> None:
    torch.manual_seed(3)
    model = _SplitMerge().eval()
    x = torch.randn(2, 3, 7, 7)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    conv = _by_producer(groups, "conv.weight")
    assert conv.prunable and conv.size == 12
    mixed = _by_producer(groups, "left.weight")
    assert mixed.producers == ("left.weight", "right.weight") and mixed.size == 6
    left = next(m for m in mixed.members if m.fqn == "left.weight" and m.role == "producer")
    right = next(m for m in mixed.members if m.fqn == "right.weight" and m.role == "producer")
    # cat([d, c]) swaps the halves of `left` before the add with `right`: channel j of right is
    # channel (j + 3) % 6 of left
    assert [left.channels[(j + 3) % 6] for j in range(6)] == list(right.channels)
    gated = _by_producer(groups, "fc.weight")
    assert gated.producers == ("fc.weight", "gate.weight")
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"conv.weight", "left.weight", "fc.weight"}
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = torch.func.functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
    torch.testing.assert_close(pruned(x), expected)
    assert pruned.get_submodule("right").get_parameter("weight").shape == (2, 3, 1, 1)  # left/right: units of 2, one kept
    assert getattr(pruned, "piece") == 1 and getattr(model, "piece") == 3  # the split size follows
    assert mixed.units == ((0, 3), (1, 4), (2, 5))  # split pieces lose the same positions
    assert conv.units == tuple((j, j + 6) for j in range(6))  # and so do chunks


class _LiteralSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        left, right = self.conv(x).split(3, dim=1)
        out: Tensor = self.a(left) + self.b(right)
        return out


def test_a_split_size_written_as_a_literal_is_refused() -> None:
    model = _LiteralSplit()
    x = torch.randn(1, 3, 4, 4)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    conv = _by_producer(groups, "conv.weight")
    assert len(conv.units) == 3 and conv.literals[0].value == 3
    with pytest.raises(fprune.PruneError, match=r"apply_prune: pruning changes counts that forward writes into a view / reshape / split"):
        fprune.apply_prune(model, fprune.group_masks(model, groups, 0.4), groups)


class _AddsConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        self.fc3 = nn.Linear(4, 6)
        self.fc4 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        added = self.fc2(torch.relu(self.fc1(x)) + 1.0)
        scaled = self.fc4(torch.relu(self.fc3(x)) * 2.0 - 0)
        return added, scaled


def test_a_value_added_to_channels_folds_into_the_next_bias_and_scaling_keeps_zeros() -> None:
    groups = _groups(_AddsConstant(), torch.randn(3, 4))
    added = _by_producer(groups, "fc1.weight")
    assert added.prunable and [(f.bias, f.value) for f in added.folds] == [("fc2.bias", 1.0)]  # exact: tests/groups/test_bias_fold.py
    scaled = _by_producer(groups, "fc3.weight")
    assert scaled.prunable and not scaled.folds


def test_example_inputs_that_do_not_fit_the_model_raise_when_shapes_are_needed() -> None:
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 16)
            self.out = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(x).view(x.shape[0], 4, 4)  # a view needs shapes: the forward runs
            out: Tensor = self.out(h.reshape(x.shape[0], -1))
            return out

    gm = torch.fx.symbolic_trace(Heads())
    with pytest.raises(fprune.PruneError, match=r"running example_inputs through the model failed \(RuntimeError: mat1 and mat2"):
        fprune.channel_groups(gm, example_inputs=(torch.randn(2, 9),))
    groups = fprune.channel_groups(gm, example_inputs=(torch.randn(2, 8),))
    assert [g.producers for g in groups] == [("proj.weight",), ("out.weight",)]


def test_one_activation_kind_is_run_on_zeros_once_but_each_different_one_is_checked() -> None:
    """A module kind found to keep 0 at 0 is not run again for its other instances; a module
    of the same class with other attributes, or with a hook of its own, is checked itself."""

    def shift(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return out + 1

    hooked = nn.Hardtanh(-1.0, 1.0)
    hooked.register_forward_hook(shift)
    acts = [nn.Hardtanh(-1.0, 1.0), nn.Hardtanh(-1.0, 1.0), nn.Hardtanh(0.25, 1.0), hooked]
    model = nn.Sequential(*(m for act in acts for m in (nn.Linear(4, 4), act)), nn.Linear(4, 2))
    groups = {g.producers[0]: g for g in _groups(model)}
    assert groups["0.weight"].prunable and groups["2.weight"].prunable
    assert groups["4.weight"].prunable and [f.value for f in groups["4.weight"].folds] == [0.25]  # folds into 6.bias
    assert not groups["6.weight"].prunable and "maps 0 to 1" in groups["6.weight"].blockers[0].reason  # the hook: unknown


def test_a_user_rule_does_per_kind_work_once_with_ctx_once_and_a_failed_check_is_not_remembered() -> None:
    """FlowContext.once is the public way for a rule to check something once per analysis: it
    runs for the first node of a key, not again after it passed; a check that raised runs (and
    raises, blocking that node's channels) again for the next node."""
    calls: list[str] = []

    def rule(ctx: fprune.groups.FlowContext) -> fprune.groups.Flow:
        module = ctx.module
        assert isinstance(module, _Scale)

        def check() -> None:
            calls.append(ctx.node.name)
            if len(calls) == 1:
                raise fprune.PruneError("the first check fails")

        ctx.once(("scale-check", type(module)), check)
        axis = ctx.input(0)
        assert isinstance(axis, fprune.groups.Axis)
        ctx.carry("scale", 0, fprune.groups.Axis(0, axis.ids))
        return axis

    class Three(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
            self.s = nn.ModuleList(_Scale(4) for _ in range(3))

        def forward(self, x: Tensor) -> Tensor:
            for fc, s in zip(self.fc, self.s):
                x = s(fc(x))
            return cast(Tensor, self.fc[3](x))

    model = Three()
    gm = torch.fx.GraphModule(model, _Leaf().trace(model))
    rules = fprune.groups.default_flow_rules()
    rules[_Scale] = rule
    groups = {g.producers[0]: g for g in fprune.channel_groups(gm, rules=rules)}
    assert calls == ["s_0", "s_1"]  # failed at s_0, passed at s_1, not run at s_2
    assert not groups["fc.0.weight"].prunable and "the first check fails" in groups["fc.0.weight"].blockers[0].reason
    assert groups["fc.1.weight"].prunable and groups["fc.2.weight"].prunable
    calls.clear()
    fprune.channel_groups(gm, rules=rules)
    assert calls == ["s_0", "s_1"]  # a new analysis checks anew


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(6), nn.PReLU(6)], ids=["BatchNorm1d", "PReLU"])
def test_per_channel_layers_on_tokens_whose_count_equals_the_width_block(layer: nn.Module) -> None:
    """BatchNorm1d and PReLU act on dim 1. On a Linear's token output ``[batch, 6 tokens, 6
    features]`` they run (6 == 6) but act on the tokens: slicing them with the features would be
    wrong. With example inputs the rank is known, and the group is blocked."""
    model = nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 3)).double().eval()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    (hidden, _) = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    assert not hidden.prunable and "dim 1, but the channels are on dim -1" in hidden.blockers[0].reason
    (flat, _) = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(torch.randn(2, 4, dtype=torch.float64),))
    assert flat.prunable


def test_recording_shapes_fires_no_hook_and_leaves_the_model_alone() -> None:
    """channel_groups runs the example inputs once (on shapes alone) when a rule needs shapes;
    that run is not the user's forward: a hook that records activations must not see it."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Flatten(0), nn.Linear(12, 2)).eval()
    seen: list[str] = []
    model[0].register_forward_hook(lambda module, args, out: seen.append("forward"))
    model[3].register_forward_pre_hook(lambda module, args: seen.append("pre"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(torch.randn(2, 4),))
    assert groups[0].prunable and seen == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model(torch.randn(2, 4))
    assert seen == ["forward", "pre"]  # the hooks are still registered


class _CatWithInput(nn.Module):
    """A concat of the model input with computed channels, BatchNorm in train mode."""

    def __init__(self, read_value: bool) -> None:
        super().__init__()
        self.fc, self.bn, self.head = nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(7, 2)
        self.read_value = read_value

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.fc(x)))
        if self.read_value:  # a value read in forward: no run on shapes alone is possible
            h = h * (x.abs().sum() > -1).float().item()
        out: Tensor = self.head(torch.flatten(torch.cat([x, h], dim=-1), 1))
        return out


@pytest.mark.parametrize("read_value", [False, True], ids=["on-shapes", "on-values"])
def test_recording_shapes_of_a_train_mode_model_leaves_its_statistics_alone(read_value: bool) -> None:
    """Regressions from the fuzzer: a list argument of a traced call (fx's immutable_list) kept
    its real tensors in the shape-only run, which then failed; the fallback run on the real
    inputs updated train-mode BatchNorm statistics in the user's model."""
    model = _CatWithInput(read_value).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(torch.randn(5, 4),))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
