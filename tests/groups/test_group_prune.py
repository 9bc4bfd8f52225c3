"""Group scores, masks and pruning on real architecture families: exact, smaller, pure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

import fprune

from ..purity import assert_unchanged, snapshot
from ..zoo import ZOO

CNNS = ["resnet18", "resnet50", "mobilenetv2", "densenet"]


def flops(model: nn.Module, x: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("level", [0.3, 0.5])
def test_zoo_models_prune_exactly_and_shrink(name: str, level: float) -> None:
    model, x = ZOO[name]()
    before = snapshot(model)
    gm = torch.fx.symbolic_trace(model)
    groups = fprune.channel_groups(gm, example_inputs=(x,))
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
        got = pruned(x)
    assert got.shape == expected.shape == model(x).shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    params = sum(p.numel() for p in model.parameters())
    pruned_params = sum(p.numel() for p in pruned.parameters())
    if name in CNNS:
        assert len(masks) == sum(g.prunable and not g.reaches_output for g in groups)
        # weights shrink on both sides of most groups: close to (1 - level)^2; depthwise convs
        # and BatchNorms only linearly
        assert pruned_params < params * (1 - level) ** 1.4
        assert flops(pruned, x) < flops(model, x) * (1 - level) ** 1.4
    elif name == "lstm_lm":
        assert set(masks) == {"embedding.weight", "lstm.weight_ih_l0", "lstm.weight_ih_l1"}
        lstm = pruned.get_submodule("lstm")
        assert isinstance(lstm, nn.LSTM) and lstm.hidden_size == math.floor(32 * (1 - level))
    else:  # transformers: MLP widths and (Llama, at 50%) attention heads
        assert masks and pruned_params < params
        assert flops(pruned, x) < flops(model, x)
    assert_unchanged(model, before)
    assert type(pruned) is type(model)


def test_group_masks_round_kept_counts_and_ignore() -> None:
    model, x = ZOO["resnet18"]()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, 0.3, round_to=8)
    assert all(int(m.sum()) % 8 == 0 for m in masks.values())
    assert int(masks["conv1.weight"].sum()) == 8  # floor(0.7 * 16) = 11 -> the nearest multiple of 8
    assert int(masks["layer2.0.conv1.weight"].sum()) == 24  # floor(0.7 * 32) = 22 -> 24
    ignored = fprune.group_masks(model, groups, 0.3, ignore={"layer1.0.conv1"})
    assert "layer1.0.conv1.weight" not in ignored and "layer1.1.conv1.weight" in ignored
    with_head = fprune.group_masks(model, groups, 0.3, ignore=())
    assert "fc.weight" in with_head and "fc.weight" not in masks


def test_global_ranking_prunes_the_same_total_unevenly() -> None:
    model, x = ZOO["resnet50"]()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    even = fprune.group_masks(model, groups, 0.5)
    ranked = fprune.group_masks(model, groups, 0.5, global_ranking=True)
    assert even.keys() == ranked.keys()
    kept_even = sum(int(m.sum()) for m in even.values())
    kept_ranked = sum(int(m.sum()) for m in ranked.values())
    assert abs(kept_even - kept_ranked) <= len(even)
    assert any(int(even[k].sum()) != int(ranked[k].sum()) for k in even)


def test_group_scores_sum_weight_members() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    group = next(g for g in groups if g.producers == ("0.weight",))
    w0, w2 = model.get_parameter("0.weight"), model.get_parameter("2.weight")
    expected = w0.detach().norm(dim=1) + w2.detach().norm(dim=0)
    torch.testing.assert_close(fprune.group_scores(model, group), expected)
    torch.testing.assert_close(fprune.group_scores(model, group, fprune.l1_norm), w0.detach().abs().sum(1) + w2.detach().abs().sum(0))


def test_any_function_of_one_tensor_is_a_criterion() -> None:
    """``Criterion`` is a Protocol: a plain function (any parameter name) or a lambda type checks
    and scores, in group_scores, group_masks and prune_channels."""

    def peak(weights: Tensor) -> Tensor:
        return weights.abs().amax(1)

    criteria: list[fprune.Criterion] = [peak, lambda rows: rows.pow(2).sum(1), fprune.l1_norm]
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    group = next(g for g in groups if g.producers == ("0.weight",))
    w0, w2 = model.get_parameter("0.weight").detach(), model.get_parameter("2.weight").detach()
    torch.testing.assert_close(fprune.group_scores(model, group, criteria[0]), w0.abs().amax(1) + w2.abs().amax(0))
    torch.testing.assert_close(fprune.group_scores(model, group, criteria[1]), w0.pow(2).sum(1) + w2.pow(2).sum(0))
    keep = fprune.group_masks(model, groups, 0.5, criterion=peak)["0.weight"]
    assert keep.tolist() == (w0.abs().amax(1) + w2.abs().amax(0)).argsort(descending=True).argsort().lt(2).tolist()
    assert fprune.prune_channels(model, 0.5, criterion=peak)[0].out_features == 2


def test_prune_channels_in_one_call() -> None:
    model, x = ZOO["mobilenetv2"]()
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,), round_to=4)
    assert pruned(x).shape == model(x).shape
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 2)
        self.norm_fc = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.twice = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.fc1(x)
        h = h + torch.relu(self.fc2(h))
        return self.twice(self.twice(self.fc3(h))), self.norm(self.norm_fc(x))


def test_group_mask_errors_name_the_tensor() -> None:
    model = _Residual()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    keep = torch.tensor([True, False, True, True, False, True])
    with pytest.raises(fprune.PruneError, match=r"masks for `fc2.weight` and `fc1.weight` disagree, but they prune one channel group"):
        fprune.apply_prune(model, {"fc1.weight": keep, "fc2.weight": ~keep | torch.tensor([True] + [False] * 5)}, groups)
    with pytest.raises(fprune.PruneError, match=r"mask for `norm_fc.weight`: its channel group cannot be pruned: `norm`: LayerNorm normalizes"):
        fprune.apply_prune(model, {"norm_fc.weight": keep}, groups)
    with pytest.raises(fprune.PruneError, match=r"mask for `fc3.weight`: its channel group cannot be pruned: `twice`: module `twice` is called 2 times"):
        fprune.apply_prune(model, {"fc3.weight": torch.tensor([True, False])}, groups)
    with pytest.raises(fprune.PruneError, match=r"channel groups always prune biases"):
        fprune.apply_prune(model, {"fc1.weight": keep}, groups, prune_bias=False)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    both = fprune.match_patterns(torch.fx.symbolic_trace(mlp), fprune.default_patterns())
    assert both
    with pytest.raises(fprune.PruneError, match=r"pass either pattern matches or channel groups, not both"):
        fprune.apply_prune(model, {}, [*both, *groups])  # type: ignore[list-item]
    pruned = fprune.apply_prune(model, {"fc2.weight": keep}, groups)  # the residual group, keyed by any producer
    assert pruned.get_submodule("fc1").get_parameter("weight").shape == (4, 4)
    assert pruned.get_submodule("fc3").get_parameter("weight").shape == (2, 4)


@pytest.mark.parametrize("level", [1.0, -0.1, float("nan")])
def test_group_masks_reject_bad_levels(level: float) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    with pytest.raises(fprune.PruneError, match=r"group_masks: `level` must be in \[0, 1\)"):
        fprune.group_masks(model, groups, level)


def test_lstm_layers_must_keep_the_same_number_of_units() -> None:
    model, x = ZOO["lstm_lm"]()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    keep_a = torch.tensor([True, False] * 16).repeat(4)
    keep_b = torch.tensor([True] * 20 + [False] * 12).repeat(4)
    with pytest.raises(fprune.PruneError, match=r"nn.LSTM has one hidden_size for all layers, but the masks keep \[16, 20\] units"):
        fprune.apply_prune(model, {"lstm.weight_ih_l0": keep_a, "lstm.weight_ih_l1": keep_b}, groups)


class _Conv1dTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3)
        self.c2 = nn.Conv1d(8, 6, 3)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.c3 = nn.Conv2d(6, 2, 3)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.c2(torch.relu(self.c1(x))), self.c3(torch.relu(self.up(y)))


def test_conv1d_and_conv_transpose_groups_prune_exactly() -> None:
    torch.manual_seed(0)
    model = _Conv1dTranspose().eval()
    x, y = torch.randn(2, 3, 12), torch.randn(2, 4, 5, 5)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x, y))
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"c1.weight", "up.weight"}
    assert masks["up.weight"].shape == (6,)  # a transposed conv's output channels are its weight's dim 1
    pruned = fprune.apply_prune(model, masks, groups)
    up = pruned.get_submodule("up")
    assert isinstance(up, nn.ConvTranspose2d) and up.out_channels == 3 and up.weight.shape == (4, 3, 2, 2)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x, y))
        got = pruned(x, y)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_slices_cut_alike_share_one_index_tensor() -> None:
    """A conv's rows, its BatchNorm's four vectors and the next conv's columns are cut by one
    group alike: apply_prune builds one index tensor for all of them, not one each."""
    from fprune._util.checks import named_tensors as _tensors
    from fprune.groups._apply import group_keeps
    from fprune.groups._apply import kept_indices as _kept_indices

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    masks = fprune.group_masks(model, groups, 0.5)
    kept = _kept_indices(groups, group_keeps(groups, masks), _tensors(model))
    rows = [kept[f"1.{name}"][0] for name in ("weight", "bias", "running_mean", "running_var")] + [kept["0.weight"][0], kept["0.bias"][0]]
    assert all(index is rows[0] for index in rows)
    assert torch.equal(kept["3.weight"][1], rows[0]) and rows[0].tolist() == masks["0.weight"].nonzero().squeeze(1).tolist()
