"""ConvNeXt reach: channels-last permutes, layer scale (a carrier of the channels it scales, in
every form), stochastic depth (a product with an untracked (B, 1, 1, 1) tensor keeps the
channels) in eval and in train mode, and LayerNorms as the residual stream's only blockers."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.func import functional_call

import fprune
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot
from ..zoo_convnext import ZOO, DropPath, StochasticDepth, drop_path

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER_NORM_MODELS = sorted(name for name in ZOO if "_bn" not in name)


def _train_mode_exactly(model: nn.Module, x: Tensor, level: float) -> tuple[nn.Module, tuple[ChannelGroup, ...]]:
    """`prune_exactly` for a model in train mode: each forward is seeded alike, so stochastic
    depth draws the same keep masks in the pruned and in the masked model (pruning must not
    change the number or the order of the random draws)."""
    model, x = copy.deepcopy(model).double().train(), x.double()
    groups = groups_with_shapes(model, x)
    masks = fprune.group_masks(model, groups, level)
    assert masks, fprune.explain(groups)
    pruned = fprune.apply_prune(model, masks, groups)
    assert pruned.training
    masked = fprune.masked_parameters(model, masks, groups)
    outputs = []
    with torch.no_grad():
        for seed in range(1, 4):
            torch.manual_seed(seed)
            outputs.append(pruned(x))
            torch.manual_seed(seed)
            torch.testing.assert_close(outputs[-1], functional_call(model, masked, (x,)), rtol=1e-9, atol=1e-10)
        plain = pruned.eval()(x)
    assert not all(torch.allclose(plain, out) for out in outputs), "stochastic depth dropped nothing: the check would not bite"
    return pruned.train(), groups


def _is_norm(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), nn.LayerNorm)
    return node.op == "call_function" and node.target is F.layer_norm


def _hidden_groups(groups: tuple[ChannelGroup, ...]) -> list[ChannelGroup]:
    """The groups of the MLPs' hidden width (4C), made by each block's fc1."""
    return [g for g in groups if any(m.fqn.endswith("mlp.fc1.weight") and m.role == "producer" for m in g.members)]


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_convnext_prunes_exactly_in_eval_mode(name: str, level: float) -> None:
    model, x = ZOO[name]()
    before = snapshot(model)
    pruned, groups = prune_exactly(model, x, level)
    hidden = _hidden_groups(groups)
    assert len(hidden) == 4 and all(g.prunable for g in hidden), fprune.explain(groups)
    if "_bn" in name:  # with BatchNorms, everything but the classifier's outputs
        assert all(g.prunable for g in groups), fprune.explain(groups)
    fc1 = pruned.get_submodule("stages.0.1.mlp.fc1")
    assert isinstance(fc1, nn.Linear) and fc1.out_features < 64
    assert_unchanged(model, before)


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_convnext_prunes_exactly_in_train_mode(name: str, level: float) -> None:
    """The train-mode graph multiplies the residual branch by a random keep mask of shape
    (B, 1, 1, 1) (``x.new_empty(shape).bernoulli_(p).div_(p)``, torchvision's ``torch.empty``):
    the channels pass through it; with BatchNorms the stream itself is pruned through it."""
    model, x = ZOO[name]()
    model.train()
    before = snapshot(model)
    _, groups = _train_mode_exactly(model, x, level)
    assert all(g.prunable for g in _hidden_groups(groups)), fprune.explain(groups)
    if "_bn" in name:
        assert all(g.prunable for g in groups), fprune.explain(groups)
    assert_unchanged(model, before)
    assert model.training


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", LAYER_NORM_MODELS)
def test_the_residual_streams_are_blocked_by_their_layer_norms_alone(name: str, train: bool) -> None:
    """One blocked group per stage (its residual stream: stem or downsample conv, depthwise convs,
    fc2 outputs, layer scales), and each blocker is a LayerNorm or an F.layer_norm (LayerNorm2d):
    nothing else in the way (not the permutes, the layer scale, nor stochastic depth's product)."""
    model, x = ZOO[name]()
    model.train(train)
    groups = groups_with_shapes(model, x)
    blocked = [g for g in groups if not g.prunable]
    assert sorted(g.size for g in blocked) == [16, 32]
    traced = fx.symbolic_trace(model)
    nodes = {n.name: n for n in traced.graph.nodes}
    for group in blocked:
        assert group.blockers
        for blocker in group.blockers:
            assert _is_norm(traced, nodes[blocker.node]), (blocker.node, blocker.reason)
    stage0 = next(g for g in blocked if g.size == 16)
    roles = {(m.fqn, m.role) for m in stage0.members}
    assert {("stem.0.weight", "producer"), ("stages.0.0.conv_dw.weight", "carrier"), ("stages.0.1.mlp.fc2.weight", "producer")} <= roles
    assert {b.node for b in stage0.blockers} >= {"layer_norm"}  # the stem's LayerNorm2d


@pytest.mark.parametrize("name", ["convnext_bn", "convnext_bn_tv"])
def test_layer_scale_is_sliced_with_its_channels(name: str) -> None:
    """gamma goes with the channels it scales, in every form: ``x.mul(gamma)`` and ``gamma * x`` on
    channels-last, ``gamma.view(1, -1, 1, 1) * x``, ``x * gamma[:, None, None]`` and a (C, 1, 1)
    parameter on channels-first."""
    model, x = ZOO[name]()
    pruned, groups = prune_exactly(model, x, 0.5)
    depth = len([m for m in model.modules() if m.__class__.__name__ == "ConvNeXtBlock"])
    for stage, blocks in ((0, (0, 1)), (1, (1, 2))):
        for block in blocks:
            prefix = f"stages.{stage}.{block}"
            stream = next(g for g in groups if any(m.fqn == f"{prefix}.conv_dw.weight" for m in g.members))
            assert (f"{prefix}.gamma", "carrier") in {(m.fqn, m.role) for m in stream.members}
            gamma = pruned.get_parameter(f"{prefix}.gamma")
            original = model.get_parameter(f"{prefix}.gamma").double()
            conv = pruned.get_submodule(f"{prefix}.conv_dw")
            assert isinstance(conv, nn.Conv2d) and gamma.shape[0] == conv.out_channels < original.shape[0]
            kept = [i for i in range(original.shape[0]) if any(torch.equal(original[i], g) for g in gamma)]
            assert len(kept) == gamma.shape[0]
    assert depth == 4


class _Branch(nn.Module):
    """conv -> conv -> (layer scale) -> stochastic depth -> + residual -> conv."""

    def __init__(self, drop: nn.Module, scale: str = "view") -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.shift: Tensor
        self.register_buffer("shift", torch.rand(8))
        self.drop = drop
        self.scale = scale
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        y = self.conv(x)
        if self.scale == "view":
            y = self.gamma.view(1, -1, 1, 1) * y
        elif self.scale == "unsqueeze":
            y = y * self.gamma.unsqueeze(-1).unsqueeze(-1)
        elif self.scale == "literal":
            y = self.gamma.view(1, 8, 1, 1) * y
        elif self.scale == "divide":
            y = y / self.gamma.view(1, -1, 1, 1)
        elif self.scale == "columns":  # along the width, not the channels
            y = y * self.gamma.view(1, 1, 1, 8)
        elif self.scale == "bias":
            y = y + self.gamma.reshape(-1, 1, 1)
        elif self.scale == "buffer":
            y = y + self.shift[:, None, None]
        elif self.scale == "untracked":
            y = y * x.new_ones((x.shape[0], 8, 1, 1))
        out: Tensor = self.conv_out(self.drop(y) + x)
        return out


DROPS: dict[str, Callable[[], nn.Module]] = {
    "timm": lambda: DropPath(0.5),
    "timm_unscaled": lambda: DropPath(0.5, scale_by_keep=False),
    "torchvision_row": lambda: StochasticDepth(0.5, "row"),
    "torchvision_batch": lambda: StochasticDepth(0.5, "batch"),
}


@pytest.mark.parametrize("scale", ["view", "unsqueeze", "bias"])
@pytest.mark.parametrize("drop", sorted(DROPS))
def test_stochastic_depth_forms_keep_the_channels(drop: str, scale: str) -> None:
    torch.manual_seed(0)
    model, x = _Branch(DROPS[drop](), scale), torch.randn(4, 3, 8, 8)
    for train in (False, True):
        model.train(train)
        groups = groups_with_shapes(model, x)
        assert all(g.prunable for g in groups), fprune.explain(groups)
        stream = next(g for g in groups if any(m.fqn == "conv.weight" for m in g.members))
        assert ("gamma", "carrier") in {(m.fqn, m.role) for m in stream.members}
    _train_mode_exactly(model, x, 0.5)
    prune_exactly(model.eval(), x, 0.5)


def _blocker_of(groups: tuple[ChannelGroup, ...], fqn: str) -> str:
    """The first blocker of the group that `fqn` produces."""
    group = next(g for g in groups if any(m.fqn == fqn and m.role == "producer" for m in g.members))
    assert not group.prunable
    return group.blockers[0].reason


def test_a_product_with_an_untracked_tensor_that_differs_along_the_channels_blocks() -> None:
    torch.manual_seed(0)
    model, x = _Branch(nn.Identity(), "untracked"), torch.randn(2, 3, 8, 8)
    reason = _blocker_of(groups_with_shapes(model, x), "conv.weight")
    assert "does not track, of shape (2, 8, 1, 1)" in reason and "slice it too" in reason


def test_without_example_inputs_a_product_with_an_untracked_tensor_blocks() -> None:
    """Its shape is unknown: it might differ along the channels."""
    torch.manual_seed(0)
    model = _Branch(DropPath(0.5)).train()
    groups = fprune.channel_groups(fx.symbolic_trace(model))
    reason = _blocker_of(groups, "conv.weight")
    assert "unknown shape; pass example_inputs" in reason


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ("literal", "with the sizes (1, 8, 1, 1)"),
        ("buffer", ", a buffer, to the channels"),  # fx bakes shift[...] in
        ("divide", "divides the channels by `gamma`, whose removed entries masked_parameters zeroes"),
    ],
)
def test_a_layer_scale_pruning_would_break_blocks(scale: str, message: str) -> None:
    """A view writing the channel count as a number would fail once pruned; a buffer added to the
    channels cannot be zeroed by masked_parameters; nor can a divisor (masked: 0 / 0)."""
    torch.manual_seed(0)
    model, x = _Branch(nn.Identity(), scale), torch.randn(2, 3, 8, 8)
    assert message in _blocker_of(groups_with_shapes(model, x), "conv.weight")


def test_drop_path_draws_the_same_numbers_after_pruning() -> None:
    """The keep mask has one entry per sample whatever the width: the same draws, in order."""
    x = torch.randn(3, 8, 4, 4)
    torch.manual_seed(5)
    wide = drop_path(x, 0.5, True)
    torch.manual_seed(5)
    narrow = drop_path(x[:, :3], 0.5, True)
    torch.testing.assert_close(wide[:, :3], narrow)


def test_a_model_tensor_viewed_along_other_dims_broadcasts_over_the_channels() -> None:
    """``y * gamma.view(1, 1, 1, 8)`` scales the columns: size 1 on the channels' dim, so the
    channels pass (gamma is no carrier of theirs), even though the view writes a size."""
    torch.manual_seed(0)
    model, x = _Branch(DropPath(0.5), "columns"), torch.randn(2, 3, 8, 8)
    _train_mode_exactly(model, x, 0.5)
    _, groups = prune_exactly(model.eval(), x, 0.5)
    assert all(g.prunable for g in groups), fprune.explain(groups)
    assert not any(m.fqn == "gamma" for g in groups for m in g.members)
