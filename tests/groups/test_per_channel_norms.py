"""Norms whose statistics are per channel (nn.InstanceNorm*, F.instance_norm, nn.GroupNorm with
one channel per group) are exact carriers, as BatchNorm is: no option needed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot


class _InstanceNormAct(nn.InstanceNorm2d):
    """A subclass that calls F.instance_norm itself (as timm's norm-act layers do)."""

    def forward(self, input: Tensor) -> Tensor:
        out = F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias, True, 0.1, self.eps)
        return torch.relu(out)


class _GroupNormAct(nn.GroupNorm):
    """A GroupNorm subclass that calls F.group_norm itself."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.relu(F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps))


class _Normed(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.out = nn.Conv2d(3, 8, 3, padding=1), norm, nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.out(torch.relu(self.norm(self.conv(x))))
        return result


NORMS: dict[str, Callable[[], nn.Module]] = {
    "instance": lambda: nn.InstanceNorm2d(8, affine=True),
    "instance with running statistics": lambda: nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
    "F.instance_norm in a subclass": lambda: _InstanceNormAct(8, affine=True),
    "group norm, one channel per group": lambda: nn.GroupNorm(8, 8),
    "F.group_norm in a subclass, one channel per group": lambda: _GroupNormAct(8, 8),
}


def _randomized(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, tensor in [*norm.named_parameters(), *norm.named_buffers()]:
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5) if name in ("weight", "running_var") else tensor.uniform_(-0.5, 0.5)
    return norm


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("kind", sorted(NORMS))
def test_per_channel_norms_carry_their_tensors_exactly(kind: str, level: float) -> None:
    torch.manual_seed(0)
    model, x = _Normed(_randomized(NORMS[kind]())).eval(), torch.randn(2, 3, 6, 6)
    before = snapshot(model)
    group = next(g for g in groups_with_shapes(model, x) if "conv.weight" in g.producers)
    assert group.prunable and group.exact, fprune.explain([group])
    assert {m.fqn for m in group.members if m.role == "carrier"} >= {"norm.weight", "norm.bias"}
    pruned, _ = prune_exactly(model, x, level)
    kept = pruned.get_parameter("conv.weight").shape[0]
    norm = pruned.get_submodule("norm")
    assert kept < 8 and pruned.get_parameter("norm.weight").shape == (kept,)
    if isinstance(norm, nn.GroupNorm):
        assert norm.num_groups == norm.num_channels == kept
    else:
        assert isinstance(norm, nn.InstanceNorm2d) and norm.num_features == kept
    assert_unchanged(model, before)


def test_without_affine_or_with_groups_of_several_channels_they_block() -> None:
    x = torch.randn(2, 3, 6, 6)
    plain = next(g for g in groups_with_shapes(_Normed(nn.InstanceNorm2d(8)), x) if "conv.weight" in g.producers)
    assert not plain.prunable and "no affine weight and bias" in plain.blockers[0].reason
    grouped = next(g for g in groups_with_shapes(_Normed(nn.GroupNorm(2, 8)), x) if "conv.weight" in g.producers)
    assert not grouped.prunable and 'norms="renormalize"' in grouped.blockers[0].reason


def test_a_per_channel_f_group_norm_in_a_traced_graph_gets_its_group_count_rewritten() -> None:
    torch.manual_seed(0)
    model, x = _Normed(_randomized(_GroupNormAct(8, 8))).eval(), torch.randn(2, 3, 6, 6)
    graph = torch.fx.symbolic_trace(model)
    groups = fprune.channel_groups(graph, example_inputs=(x,))
    masks = fprune.group_masks(graph, groups, 0.5)
    pruned = fprune.apply_prune(graph, masks, groups)
    (call,) = [n for n in pruned.graph.nodes if n.target is F.group_norm]
    assert call.args[1] == 4  # one group per kept channel
    with torch.no_grad():
        expected = torch.func.functional_call(graph, fprune.masked_parameters(graph, masks, groups), (x,))
        torch.testing.assert_close(pruned(x), expected)
