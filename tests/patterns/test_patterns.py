"""default_patterns: torch.ao's keys are all there, and every pattern prunes exactly."""

from __future__ import annotations

import importlib
import operator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fprune
from fprune.patterns import Pattern, PruneFunction

from ..chains import CHANNELS, ChainModel, randomize_biases

PATTERNS = fprune.default_patterns()


pytestmark = pytest.mark.usefixtures("one_thread")
_ao: Any = importlib.import_module("torch.ao.pruning._experimental.pruner.base_structured_sparsifier")


def test_default_patterns_hold_every_torch_ao_key_with_the_function_of_the_same_name() -> None:
    reference: dict[Any, Any] = _ao._get_default_structured_pruning_patterns()
    assert len(reference) == 430
    missing = set(reference) - set(PATTERNS)
    assert not missing
    for key, function in reference.items():
        assert PATTERNS[key].__name__ == function.__name__  # type: ignore[attr-defined]


def test_default_patterns_returns_a_fresh_dict_each_call() -> None:
    first = fprune.default_patterns()
    first.clear()
    assert len(fprune.default_patterns()) == len(PATTERNS) > 430


def test_default_patterns_cover_batchnorm_dropout_and_method_forms() -> None:
    for key in [
        (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d),
        (nn.Conv2d, nn.BatchNorm2d, nn.Conv2d),
        (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear),
        (nn.Linear, nn.ReLU, nn.Dropout, nn.Linear),
        (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear),
        (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d),
        (nn.Linear, "relu", nn.Linear),
        (nn.Linear, torch.relu, nn.Linear),
        (nn.Conv2d, "sigmoid", nn.Conv2d),
    ]:
        assert key in PATTERNS, key


def _linear_or_conv_patterns() -> list[Pattern]:
    """The tuple patterns of Linear and Conv2d producers (the open-ended ones are tested in
    tests/patterns/test_passthrough.py)."""
    return [p for p in PATTERNS if p[0] in (nn.Linear, nn.Conv2d) and not any(isinstance(e, fprune.patterns.ZeroOrMore) for e in p)]


_TRACED_AS_METHOD: dict[object, str] = {F.sigmoid: "sigmoid", F.tanh: "tanh"}


def _as_traced(pattern: Pattern) -> Pattern:
    """The pattern fx produces for this chain: F.sigmoid / F.tanh trace as x.sigmoid() / x.tanh()."""
    return tuple(_TRACED_AS_METHOD.get(e, e) if not isinstance(e, str) else e for e in pattern)


def test_functional_sigmoid_and_tanh_match_through_their_method_patterns() -> None:
    model = ChainModel((nn.Linear, F.sigmoid, nn.Linear))
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), PATTERNS)
    assert matches[0].pattern == (nn.Linear, "sigmoid", nn.Linear)


def _id(pattern: Pattern) -> str:
    return "-".join(e if isinstance(e, str) else getattr(e, "__name__", "?") for e in pattern)


def _a_pattern_for_each_element() -> list[tuple[int, Pattern]]:
    """The fast tier's sample of the sweep below (~120 of its ~8000 patterns, with their index
    in it): the first pattern that brings in an element not yet seen after its producer, so
    every (producer, element) pair of the sweep, each ending included, is pruned once."""
    seen: set[tuple[object, object]] = set()
    sample: list[tuple[int, Pattern]] = []
    for index, pattern in enumerate(_linear_or_conv_patterns()):
        pairs = {(pattern[0], element) for element in pattern[1:]}
        if not pairs <= seen:
            seen |= pairs
            sample.append((index, pattern))
    return sample


@pytest.mark.parametrize("prune_bias", [True, False], ids=["prune_bias", "fold_bias"])
def test_a_pattern_with_each_element_prunes_to_what_the_masked_model_computes(prune_bias: bool) -> None:
    _check_patterns(_a_pattern_for_each_element(), prune_bias)


@pytest.mark.slow
@pytest.mark.parametrize("prune_bias", [True, False], ids=["prune_bias", "fold_bias"])
def test_every_default_pattern_prunes_to_what_the_masked_model_computes(prune_bias: bool) -> None:
    """For each of the ~8000 chain patterns: a model that is exactly that chain (float64,
    random weights, non-zero biases, BatchNorm statistics), a random keep-mask on the producer:
    the match found is that pattern, and the pruned copy equals the masked original."""
    _check_patterns(list(enumerate(_linear_or_conv_patterns())), prune_bias)


def _check_patterns(patterns: list[tuple[int, Pattern]], prune_bias: bool) -> None:
    torch.manual_seed(0)
    failures: list[str] = []
    for index, pattern in patterns:
        model = ChainModel(pattern).double().eval()
        randomize_biases(model)
        gm = torch.fx.symbolic_trace(model)
        matches = fprune.match_patterns(gm, PATTERNS)
        if not matches or matches[0].pattern != _as_traced(pattern):
            failures.append(f"{_id(pattern)}: matched {[m.pattern for m in matches]}")
            continue
        keep = torch.rand(CHANNELS, generator=torch.Generator().manual_seed(index)) < 0.5
        keep[index % CHANNELS] = True
        keep[(index + 1) % CHANNELS] = False
        masks = {"producer.weight": keep}
        pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
        x = model.example_input()
        with torch.no_grad():
            expected = functional_call(model, fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
            got = pruned(x)
        if pattern[-1] == "output":
            channel_dim = 1
            expected = expected.index_select(channel_dim, keep.nonzero().squeeze(1))
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-9, atol=1e-10):
            failures.append(f"{_id(pattern)}: max error {(expected - got).abs().max() if expected.shape == got.shape else 'shape'}")
    assert not failures, f"{len(failures)} patterns: " + "; ".join(failures[:10])


def test_pattern_functions_are_the_named_ones_for_torch_ao_shapes() -> None:
    expected: dict[Pattern, PruneFunction] = {
        (nn.Linear, "output"): fprune.patterns.prune_linear,
        (nn.Linear, nn.Linear): fprune.patterns.prune_linear_linear,
        (nn.Linear, F.relu, nn.Linear): fprune.patterns.prune_linear_activation_linear,
        (nn.Conv2d, "output"): fprune.patterns.prune_conv2d,
        (nn.Conv2d, nn.Conv2d): fprune.patterns.prune_conv2d_conv2d,
        (nn.Conv2d, nn.Tanh, nn.Conv2d): fprune.patterns.prune_conv2d_activation_conv2d,
        (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d): fprune.patterns.prune_conv2d_activation_pool_conv2d,
        (nn.Conv2d, F.avg_pool2d, nn.ReLU, nn.Conv2d): fprune.patterns.prune_conv2d_pool_activation_conv2d,
        (nn.Conv2d, nn.AdaptiveAvgPool2d, torch.flatten, nn.Linear): fprune.patterns.prune_conv2d_pool_flatten_linear,
        (nn.LSTM, operator.getitem, nn.Linear): fprune.patterns.prune_lstm_output_linear,
        (nn.LSTM, operator.getitem, nn.LayerNorm, nn.Linear): fprune.patterns.prune_lstm_output_layernorm_linear,
    }
    for key, function in expected.items():
        assert PATTERNS[key] is function
