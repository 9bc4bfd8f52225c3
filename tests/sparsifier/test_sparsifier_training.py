"""prepare -> train -> prune: the normal ``fprune.sparsifier`` workflow, for every layer type.

Each case prepares a model (float64), trains it for a few steps (``step()``, a forward and
backward pass and an optimizer step, the optimizer built after ``prepare``), runs one more
forward with autograd on, and only then calls ``prune()`` (in eval mode: with
``prune_bias=False`` the constant a removed channel carries through a BatchNorm is folded as
the model is set to run, so a model pruned in train mode matches the masked one in train mode). Training leaves computed (masked)
tensors in module caches: an ``nn.LSTM`` keeps its masked weights in ``_flat_weights``,
which ``prune()`` used to fail to copy ("Only Tensors created explicitly by the user (graph
leaves) support the deepcopy protocol"). The pruned model must then compute what the
prepared (masked) model computes, be trainable itself, and leave the prepared model usable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.testing._internal.common_pruning import (
    Conv2dActivation,
    Conv2dPadBias,
    Conv2dPoolFlatten,
    LinearActivationFunctional,
    LinearBias,
    LSTMLayerNormLinearModel,
    LSTMLinearModel,
    SimpleConv2d,
    SimpleLinear,
)

from fprune.sparsifier import BaseStructuredSparsifier, FPGMPruner, LSTMSaliencyPruner, SaliencyPruner

from ..models import ConvBNNet

Config = list[dict[str, object]]


class LinearBNDropout(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear -> Tanh -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.bn = nn.BatchNorm1d(12)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(12, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.tanh(self.fc2(self.drop(self.relu(self.bn(self.fc1(x)))))))
        return out


# How to compare one output of the masked model with the pruned model's:
# ("all", "", 0) whole; ("mask", fqn, dim) the kept channels of `fqn`; ("units", lstm, dim) the
# LSTM's last layer's kept units; ("layer-units", lstm, dim) each layer's kept units (an (h, c)
# state, layers along dim 0); ("shape", "", 0) the shape only.
Compare = tuple[str, str, int]
ALL: Compare = ("all", "", 0)


@dataclass(frozen=True)
class Case:
    """One model trained and pruned.

    Attributes:
        make: builds the model.
        pruner: builds the sparsifier.
        config: the config entries.
        shape: the input's shape.
        compare: per output (flattened), how the pruned model's relates to the masked one's.
        unshrunk: the tensors prune() leaves full size (and warns about).
    """

    make: Callable[[], nn.Module]
    pruner: Callable[[], BaseStructuredSparsifier]
    config: Config
    shape: tuple[int, ...]
    compare: tuple[Compare, ...] = (ALL,)
    unshrunk: tuple[str, ...] = ()


def entries(*names: str, prune_bias: bool = True) -> Config:
    return [{"tensor_fqn": name, "prune_bias": prune_bias} for name in names]


def saliency() -> BaseStructuredSparsifier:
    return SaliencyPruner({"sparsity_level": 0.5})


def lstm_saliency() -> BaseStructuredSparsifier:
    return LSTMSaliencyPruner({"sparsity_level": 0.5})


def lstm_entries(layers: int, prune_bias: bool = True) -> Config:
    return entries(*(f"lstm.weight_{k}_l{i}" for i in range(layers) for k in ("ih", "hh")), prune_bias=prune_bias)


CONV_PAD_BIAS = ("seq.0.weight", "seq.2.weight", "seq.4.weight", "seq.6.weight", "seq.8.weight", "conv2d1.weight")
CONV_POOL = ("seq.0.weight", "seq.3.weight", "conv2d1.weight", "conv2d2.weight")

CASES: dict[str, Case] = {
    "linear-linear": Case(LinearBias, saliency, entries("seq.0.weight", "seq.1.weight", "seq.2.weight", "seq.3.weight"), (16, 7)),
    "linear-linear-keep-bias": Case(LinearBias, saliency, entries("seq.0.weight", "seq.1.weight", "seq.2.weight", "seq.3.weight", prune_bias=False), (16, 7)),
    "linear-activation-linear": Case(LinearActivationFunctional, lambda: FPGMPruner(0.3), entries("seq.0.weight", "seq.2.weight", "seq.4.weight", "linear1.weight", "linear2.weight"), (16, 7)),
    "linear-output": Case(SimpleLinear, saliency, entries("seq.0.weight", "linear1.weight", "linear2.weight"), (16, 7), (("mask", "linear2.weight", 1),)),
    "linear-bn1d-dropout": Case(LinearBNDropout, saliency, entries("fc1.weight", "fc2.weight"), (16, 6)),
    "linear-bn1d-dropout-keep-bias": Case(LinearBNDropout, saliency, entries("fc1.weight", "fc2.weight", prune_bias=False), (16, 6)),
    "conv2d-conv2d-output": Case(SimpleConv2d, lambda: FPGMPruner(0.5), entries("seq.0.weight", "seq.1.weight", "conv2d1.weight", "conv2d2.weight"), (2, 1, 12, 12), (("mask", "conv2d2.weight", 1),)),
    "conv2d-activation-conv2d": Case(Conv2dActivation, saliency, entries("seq.0.weight", "seq.2.weight", "seq.4.weight", "conv2d1.weight"), (2, 1, 14, 14)),
    "conv2d-bn-pool-flatten-linear": Case(ConvBNNet, saliency, entries("conv1.weight", "conv2.weight"), (4, 3, 14, 14)),
    "conv2d-bn-keep-bias": Case(ConvBNNet, saliency, entries("conv1.weight", "conv2.weight", prune_bias=False), (4, 3, 14, 14)),
    "conv2d-padded-bn": Case(lambda: ConvBNNet(padding=1), saliency, entries("conv1.weight", "conv2.weight"), (4, 3, 10, 10)),
    "conv2d-pool-conv2d-flatten": Case(Conv2dPoolFlatten, saliency, entries(*CONV_POOL), (2, 1, 28, 28)),
    "conv2d-padded-keep-bias": Case(Conv2dPadBias, saliency, entries(*CONV_PAD_BIAS, prune_bias=False), (2, 1, 12, 12), unshrunk=("seq.4.weight", "seq.8.weight", "conv2d1.weight")),
    "conv2d-pool-flatten-keep-bias": Case(Conv2dPoolFlatten, saliency, entries(*CONV_POOL, prune_bias=False), (2, 1, 28, 28), unshrunk=("seq.3.weight", "conv2d1.weight")),
    "lstm-linear-2-layers": Case(lambda: LSTMLinearModel(8, 8, 8, 2), lstm_saliency, lstm_entries(2), (5, 3, 8), (ALL, ("units", "lstm", 2))),
    "lstm-layernorm-linear": Case(lambda: LSTMLayerNormLinearModel(8, 8, 8, 2), lstm_saliency, lstm_entries(2), (5, 3, 8), (("shape", "", 0), ("layer-units", "lstm", 2), ("layer-units", "lstm", 2))),
    "lstm-keep-bias": Case(lambda: LSTMLinearModel(8, 8, 8, 1), lstm_saliency, lstm_entries(1, prune_bias=False), (5, 3, 8), (ALL, ALL), unshrunk=("lstm.weight_ih_l0", "lstm.weight_hh_l0")),
}  # fmt: skip


def flatten(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    assert isinstance(out, (tuple, list)), type(out)
    return [t for item in out for t in flatten(item)]


def train(model: nn.Module, pruner: BaseStructuredSparsifier, x: Tensor, steps: int = 2) -> None:
    """`steps` rounds of: new masks, forward, backward, SGD step (momentum, weight decay)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        pruner.step()
        loss = sum(out.square().mean() for out in flatten(model(x)))
        assert isinstance(loss, Tensor)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    model(x)  # one more forward with autograd on: module caches now hold computed tensors


def prune(pruner: BaseStructuredSparsifier, unshrunk: tuple[str, ...]) -> nn.Module:
    if not unshrunk:
        return pruner.prune()
    with pytest.warns(UserWarning, match=r"^prune\(\): left") as caught:
        pruned = pruner.prune()
    assert len(caught) == 1
    assert all(f"`{fqn}`" in str(caught[0].message) for fqn in unshrunk)
    return pruned


def expected_output(masked: Tensor, pruned: Tensor, compare: Compare, pruner: BaseStructuredSparsifier) -> Tensor | None:
    """What `pruned` must equal, from the masked model's output; None: shapes only."""
    kind, name, dim = compare
    if kind == "all":
        return masked
    if kind == "shape":
        assert pruned.shape == masked.shape
        return None
    if kind == "mask":
        return masked.index_select(dim, pruner.state[name]["mask"].nonzero().squeeze(1))
    lstm = pruner.model.get_submodule(name)
    assert isinstance(lstm, nn.LSTM)
    units = [pruner.state[f"{name}.weight_ih_l{layer}"]["mask"].reshape(4, -1)[0] for layer in range(lstm.num_layers)]
    if kind == "units":  # the LSTM's output: the last layer's units
        return masked.index_select(dim, units[-1].nonzero().squeeze(1))
    assert kind == "layer-units"  # an (h, c) state: layer l keeps its own units
    return torch.stack([masked[layer].index_select(dim - 1, kept.nonzero().squeeze(1)) for layer, kept in enumerate(units)])


def prepared_and_trained(case: Case) -> tuple[nn.Module, Tensor, BaseStructuredSparsifier]:
    """`case`'s model (float64, train mode), an input, and its pruner, prepared and trained."""
    torch.manual_seed(0)
    model = case.make().double().train()
    x = torch.randn(case.shape, dtype=torch.float64)
    pruner = case.pruner()
    pruner.prepare(model, case.config)
    train(model, pruner, x)
    return model, x, pruner


@pytest.mark.parametrize("name", CASES)
def test_prepare_train_prune_equals_the_masked_model(name: str) -> None:
    case = CASES[name]
    model, x, pruner = prepared_and_trained(case)
    model.eval()  # prune_bias=False folds a BatchNorm'd constant as the model is set to run
    pruned = prune(pruner, case.unshrunk)
    assert not pruned.training

    for entry in case.config:
        fqn = str(entry["tensor_fqn"])
        mask = pruner.state[fqn]["mask"]
        assert not bool(mask.all()), fqn
        rows = pruned.get_parameter(fqn).shape[0]
        assert rows == (mask.numel() if fqn in case.unshrunk else int(mask.sum())), fqn
    with torch.no_grad():
        masked_out, pruned_out = flatten(model(x)), flatten(pruned(x))
    assert len(masked_out) == len(pruned_out) == len(case.compare)
    for index, (masked, got, compare) in enumerate(zip(masked_out, pruned_out, case.compare)):
        expected = expected_output(masked, got, compare, pruner)
        if expected is not None:
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10, msg=f"output {index}")


@pytest.mark.parametrize("name", ["lstm-linear-2-layers", "conv2d-bn-pool-flatten-linear", "conv2d-padded-keep-bias"])
def test_the_pruned_model_trains_and_the_prepared_one_goes_on(name: str) -> None:
    """The pruned model's parameters are its own leaves (an LSTM's weight cache points at them)
    and train; the prepared model trains, steps and prunes again."""
    case = CASES[name]
    model, x, pruner = prepared_and_trained(case)
    pruned = prune(pruner, case.unshrunk).train()

    params = list(pruned.parameters())
    assert all(p.is_leaf and p.requires_grad for p in params)
    for module in pruned.modules():
        if isinstance(module, nn.LSTM):
            assert all(a is getattr(module, n) for a, n in zip(module._flat_weights, module._flat_weights_names))
    loss = sum(out.square().mean() for out in flatten(pruned(x)))
    assert isinstance(loss, Tensor)
    torch.autograd.backward(loss)
    assert all(p.grad is not None for p in params)

    train(model, pruner, x, steps=1)  # the prepared model is untouched by prune()
    model.eval()
    again = prune(pruner, case.unshrunk)
    with torch.no_grad():
        masked, got = flatten(model(x))[0], flatten(again(x))[0]
    if case.compare[0] == ALL:
        torch.testing.assert_close(got, masked, atol=1e-10, rtol=1e-10)


def test_every_supported_layer_kind_is_trained_and_pruned() -> None:
    """The cases above cover each producer kind the default patterns prune, with each kind of
    op between producer and consumer."""
    kinds: set[type[nn.Module]] = set()
    for case in CASES.values():
        model = case.make()
        kinds |= {type(model.get_submodule(str(e["tensor_fqn"]).rpartition(".")[0])) for e in case.config}
        kinds |= {type(m) for m in model.modules()}
    assert {nn.Linear, nn.Conv2d, nn.LSTM, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Dropout, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten} <= kinds
