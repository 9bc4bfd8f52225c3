"""The calibration criteria: a group's scores equal a hand computation of the formulas in
fprune.calibrate._criteria's docstring (an MLP and a conv net through fx, a tiny HF Llama
through torch.export), from the layers' inputs seen by forward hooks and gradients from
autograd; a group with no statistics is refused by name; and a Llama pruned by each criterion
computes exactly what its masked model computes."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.calibrate import Batch, GroupCriterion, Statistics, activation, collect_statistics, flap, taylor, wanda_sp
from fprune.groups import ChannelGroup

from .shared import float_batches, layer_inputs, llama, next_token_loss, run, token_ids

requires_hf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

Formula = Callable[[Tensor, Tensor], Tensor]
"""(a consumer's input rows [positions, in], its weight as [out, in, ...]) -> a score per input channel."""

FORMULAS: dict[str, Formula] = {
    "activation": lambda x, w: x.pow(2).mean(0).sqrt(),
    "wanda_sp": lambda x, w: torch.linalg.vector_norm(x, dim=0) * w.abs().sum([d for d in range(w.dim()) if d != 1]),
    "flap": lambda x, w: x.var(0) * w.pow(2).sum([d for d in range(w.dim()) if d != 1]),
}
CRITERIA: dict[str, Callable[[Statistics], GroupCriterion]] = {"activation": activation, "wanda_sp": wanda_sp, "flap": flap}


def _gradients(model: nn.Module, batches: Sequence[Batch], loss: Callable[[object, Batch], Tensor]) -> dict[str, Tensor]:
    """Per parameter, the sum over the batches of dL/dw, by backward on a copy of `model`."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    for batch in batches:
        torch.autograd.backward(loss(run(model, batch), batch))
    return {fqn: p.grad.double() for fqn, p in model.named_parameters() if p.grad is not None}


def _consumer_inputs(model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch]) -> dict[str, Tensor]:
    """:func:`layer_inputs` of the modules of every consumer of `groups`."""
    modules = {m.fqn.rpartition(".")[0] for g in groups for m in g.members if m.role == "consumer"}
    return layer_inputs(model, sorted(modules), batches)


def _by_hand(model: nn.Module, group: ChannelGroup, seen: Mapping[str, Tensor], formula: Formula) -> Tensor:
    """The docstring's sum over the group's consumers m of formula(X_m, W_m) at channel j,
    each consumer read as a Linear / conv whose input column j is the group's channel j;
    `seen`: the consumers' inputs by module (:func:`_consumer_inputs`)."""
    consumers = [m for m in group.members if m.role == "consumer"]
    expected = torch.zeros(group.size, dtype=torch.float64)
    for member in consumers:
        assert member.dim == 1 and list(member.positions) == list(member.channels) == list(range(group.size))
        weight = model.get_parameter(member.fqn).detach().double()
        expected += formula(seen[member.fqn.rpartition(".")[0]], weight)
    return expected


def _taylor_by_hand(model: nn.Module, group: ChannelGroup, grads: Mapping[str, Tensor]) -> Tensor:
    """|sum over the group's parameter slices (producer rows, biases, norm weights, consumer
    columns) of w * dL/dw|, the gradients summed over the batches (:func:`_gradients`)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        if member.fqn not in grads:
            continue  # a buffer (BatchNorm statistics)
        product = model.get_parameter(member.fqn).detach().double() * grads[member.fqn]
        other = [d for d in range(product.dim()) if d != member.dim]
        per_slice = product.sum(other) if other else product
        total.index_add_(0, torch.tensor(list(member.channels)), per_slice[list(member.positions)])
    return total.abs()


def _sum_loss(output: object, batch: Batch) -> Tensor:
    assert isinstance(output, Tensor)
    return output.sin().sum()


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 5)).double()


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        out: Tensor = self.fc(h.mean((-2, -1)))
        return out


def _conv() -> tuple[ConvNet, list[Batch]]:
    torch.manual_seed(0)
    model = ConvNet().double().eval()
    mean, var = model.bn.running_mean, model.bn.running_var
    assert mean is not None and var is not None
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        mean.uniform_(-0.5, 0.5)
        var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(2)
    return model, [torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), torch.randn(1, 3, 5, 7, generator=g, dtype=torch.float64)]


def _group(groups: Sequence[ChannelGroup], producer: str) -> ChannelGroup:
    return next(g for g in groups if g.producers[0] == producer)


# --------------------------------------------------------------------------- 8. the formulas


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_mlp_scores_are_the_formula(name: str) -> None:
    model, batches = _mlp(), float_batches()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    statistics = collect_statistics(model, batches)
    for producer in ("0.weight", "2.weight"):
        group = _group(groups, producer)
        scores = CRITERIA[name](statistics).scores(dict(model.named_parameters()), group)
        assert scores.dtype == torch.float32 and scores.shape == (group.size,)
        expected = _by_hand(model, group, _consumer_inputs(model, [group], batches), FORMULAS[name])
        torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_conv_scores_are_the_formula_over_every_position(name: str) -> None:
    model, batches = _conv()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(batches[0],))
    statistics = collect_statistics(model, batches, groups=groups)
    for producer in ("conv1.weight", "conv2.weight"):  # read by a conv (N * H * W positions), by a Linear after a pool
        group = _group(groups, producer)
        expected = _by_hand(model, group, _consumer_inputs(model, [group], batches), FORMULAS[name]).float()
        torch.testing.assert_close(fprune.group_scores(model, group, CRITERIA[name](statistics)), expected, rtol=1e-5, atol=1e-7)


def test_taylor_scores_are_the_formula() -> None:
    model, batches = _conv()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(batches[0],))
    statistics = collect_statistics(model, batches, groups=groups, loss=_sum_loss)
    group = _group(groups, "conv1.weight")
    assert {m.fqn for m in group.members} >= {"conv1.bias", "bn.weight", "bn.running_mean", "conv2.weight"}
    expected = _taylor_by_hand(model, group, _gradients(model, batches, _sum_loss))
    torch.testing.assert_close(fprune.group_scores(model, group, taylor(statistics)), expected.float(), rtol=1e-5, atol=1e-7)
    mlp, mlp_batches = _mlp(), float_batches()
    mlp_groups = fprune.channel_groups(torch.fx.symbolic_trace(mlp))
    mlp_statistics = collect_statistics(mlp, mlp_batches, loss=_sum_loss)  # no groups: every parameter's dims 0 and 1
    for producer in ("0.weight", "2.weight"):
        group = _group(mlp_groups, producer)
        expected = _taylor_by_hand(mlp, group, _gradients(mlp, mlp_batches, _sum_loss))
        torch.testing.assert_close(fprune.group_scores(mlp, group, taylor(mlp_statistics)), expected.float(), rtol=1e-5, atol=1e-7)


def _llama_batches() -> list[Batch]:
    return [{"input_ids": token_ids(seed), "use_cache": False} for seed in (1, 2, 3)]


def _exported_groups(model: nn.Module) -> tuple[ChannelGroup, ...]:
    program = torch.export.export(model, (token_ids(0),), kwargs={"use_cache": False}, strict=False)
    return fprune.channel_groups(program)


@requires_hf
def test_llama_scores_are_the_formulas() -> None:
    model, batches = llama(), _llama_batches()
    groups = _exported_groups(model)
    statistics = collect_statistics(model, batches, groups=groups, loss=next_token_loss)
    mlp = _group(groups, "model.layers.0.mlp.gate_proj.weight")
    hidden = _group(groups, "model.embed_tokens.weight")  # read by q, k, v, gate, up of each layer and the head
    assert len([m for m in hidden.members if m.role == "consumer"]) == 11
    seen = _consumer_inputs(model, [mlp, hidden], batches)
    for name, formula in FORMULAS.items():
        for group in (mlp, hidden):
            expected = _by_hand(model, group, seen, formula).float()
            torch.testing.assert_close(fprune.group_scores(model, group, CRITERIA[name](statistics)), expected, rtol=1e-5, atol=1e-6)
    grads = _gradients(model, batches, next_token_loss)
    for group in (mlp, hidden):
        expected = _taylor_by_hand(model, group, grads).float()
        torch.testing.assert_close(fprune.group_scores(model, group, taylor(statistics)), expected, rtol=1e-5, atol=1e-8)


@requires_hf
def test_a_tied_weight_counts_once_in_taylor() -> None:
    model, batches = llama(tie=True, layers=1), _llama_batches()[:1]
    groups = _exported_groups(model)
    hidden = _group(groups, "model.embed_tokens.weight")
    assert {(m.fqn, m.dim) for m in hidden.members} >= {("model.embed_tokens.weight", 1), ("lm_head.weight", 1)}  # one tensor
    statistics = collect_statistics(model, batches, groups=groups, loss=next_token_loss)
    grads = _gradients(model, batches, next_token_loss)
    assert "lm_head.weight" not in grads  # named_parameters names the tied tensor once
    expected = torch.zeros(hidden.size, dtype=torch.float64)
    for member in hidden.members:
        if member.fqn in grads:  # the embedding's (and head's) slices, once
            product = model.get_parameter(member.fqn).detach() * grads[member.fqn]
            other = [d for d in range(product.dim()) if d != member.dim]
            expected += product.sum(other) if other else product
    torch.testing.assert_close(fprune.group_scores(model, hidden, taylor(statistics)), expected.abs().float(), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- refusals


def test_a_group_without_statistics_is_refused_by_name() -> None:
    model, batches = _mlp(), float_batches()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    first = _group(groups, "0.weight")
    statistics = collect_statistics(model, batches, groups=[first])  # counts 0.weight and 2.weight only
    second = _group(groups, "2.weight")  # read by 4.weight, never counted
    for make in (activation, wanda_sp, flap):
        with pytest.raises(fprune.PruneError, match=f"^the {make(statistics).name} criterion has no input statistics .* produced by 2.weight \\("):
            make(statistics).scores(dict(model.named_parameters()), second)
        with pytest.raises(fprune.PruneError, match=f"^group_scores: the {make(statistics).name} criterion .* produced by 2.weight \\("):
            fprune.group_scores(model, second, make(statistics))
        with pytest.raises(fprune.PruneError, match="^group_masks: .* produced by 2.weight \\("):
            fprune.group_masks(model, groups, 0.5, criterion=make(statistics))
    with pytest.raises(fprune.PruneError, match="^group_masks: the taylor criterion has no first-order terms .* produced by 0.weight;"):
        fprune.group_masks(model, groups, 0.5, criterion=taylor(statistics))  # collected without a loss
    masks = fprune.group_masks(model, [first], 0.5, criterion=flap(statistics))
    assert int(masks["0.weight"].sum()) == 4


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 4, 1, groups=2)  # reads conv1's channels 4 per conv group

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(torch.relu(self.conv1(x)))
        return out


def test_a_group_read_only_by_a_grouped_conv_is_refused_by_the_input_criteria() -> None:
    torch.manual_seed(0)
    model, x = GroupedConv().double(), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    group = _group(groups, "conv1.weight")
    statistics = collect_statistics(model, [x], groups=groups, loss=_sum_loss)
    assert statistics.inputs["conv2.weight"].total.shape == (8,)  # seen, but the weight has 4 input columns
    with pytest.raises(fprune.PruneError, match=r"^group_scores: the flap criterion .* produced by conv1.weight \(a grouped conv's input is not scored\)"):
        fprune.group_scores(model, group, flap(statistics))
    assert fprune.group_scores(model, group, taylor(statistics)).shape == (8,)  # Taylor reads every slice


def test_criteria_are_frozen_records_named_in_CRITERIA() -> None:
    statistics = Statistics({})
    assert set(fprune.calibrate.CRITERIA) == {"activation", "wanda_sp", "flap", "taylor"}
    for name, make in fprune.calibrate.CRITERIA.items():
        criterion = make(statistics)
        assert isinstance(criterion, GroupCriterion) and criterion.name == name
        assert criterion == make(statistics)


# --------------------------------------------------------------------------- 10. end to end


@requires_hf
@pytest.mark.parametrize("name", ["l2", "activation", "wanda_sp", "flap", "flap_standardized", "taylor"])
def test_a_llama_pruned_by_each_criterion_is_its_masked_model(name: str) -> None:
    model, batches = llama(), _llama_batches()
    groups = _exported_groups(model)
    statistics = collect_statistics(model, batches, groups=groups, loss=next_token_loss)
    criterion: fprune.Criterion | GroupCriterion = fprune.l2_norm
    if name != "l2":
        criterion = fprune.calibrate.CRITERIA[name.removesuffix("_standardized")](statistics)
    ranking: Literal["standardized"] | bool = "standardized" if name.endswith("_standardized") else False
    masks = fprune.group_masks(model, groups, 0.3, criterion=criterion, global_ranking=ranking)
    assert masks
    if name != "l2":  # the criterion chose other channels than the weights' norms
        l2 = fprune.group_masks(model, groups, 0.3, global_ranking=ranking)
        assert any(not torch.equal(masks[k], l2[k]) for k in masks)
    pruned = fprune.apply_prune(model, masks, groups)
    ids = token_ids(4)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,), {"use_cache": False})
        got = pruned(ids, use_cache=False)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-6, atol=1e-6)  # HF's RMSNorm computes in float32
