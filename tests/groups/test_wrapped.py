"""Rules keyed by a function's qualified name: functions ``torch.fx.wrap`` keeps whole, here a copy
of torchvision's ``stochastic_depth`` (torchvision itself cannot be imported on our machines)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import fprune

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision.ops.stochastic_depth, as torchvision writes it."""
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # what the traced target reports
torch.fx.wrap("stochastic_depth")  # as torchvision does: one call_function node in the graph


class _Block(nn.Module):
    def __init__(self, gate: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        branch = torch.relu(self.bn(self.conv(h)))
        if self.gate:
            branch = torch.sigmoid(branch)
        h = h + stochastic_depth(branch, 0.5, "row", self.training)
        out: Tensor = self.head(h.mean((2, 3)))
        return out


@pytest.mark.parametrize("train", [False, True])
def test_torchvision_stochastic_depth_keeps_the_channels_exactly(train: bool) -> None:
    torch.manual_seed(0)
    model, x = _Block().train(train), torch.randn(4, 3, 6, 6)
    before = snapshot(model)
    graph = torch.fx.symbolic_trace(model)
    assert any(n.op == "call_function" and n.target is stochastic_depth for n in graph.graph.nodes)
    group = next(g for g in groups_with_shapes(model, x) if "stem.weight" in g.producers)
    assert group.prunable and "conv.weight" in group.producers, fprune.explain([group])
    if not train:
        prune_exactly(model, x, 0.5)
    else:  # the same random draws in the masked model and the copy
        model64, x64 = copy.deepcopy(model).double(), x.double()
        groups = groups_with_shapes(model64, x64)
        masks = fprune.group_masks(model64, groups, 0.5)
        pruned = fprune.apply_prune(model64, masks, groups)
        torch.manual_seed(1)
        got = pruned(x64)
        torch.manual_seed(1)
        expected = torch.func.functional_call(model64, fprune.masked_parameters(model64, masks, groups), (x64,))
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
        torch.manual_seed(1)
        assert not torch.allclose(model64.eval()(x64), expected)  # the noise dropped something
    assert_unchanged(model, before)


def test_without_the_rule_or_with_non_zero_removed_channels_it_blocks() -> None:
    torch.manual_seed(0)
    model, x = _Block().train(), torch.randn(4, 3, 6, 6)
    rules = fprune.groups.default_flow_rules()
    del rules["torchvision.ops.stochastic_depth.stochastic_depth"]
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,), rules=rules)
    assert not next(g for g in groups if "stem.weight" in g.producers).prunable
    gated = groups_with_shapes(_Block(gate=True).train(), x)
    blocked = next(g for g in gated if "conv.weight" in g.producers)
    assert not blocked.prunable and "sigmoid" in blocked.blockers[0].reason
