"""Open-ended chains: a producer, any run of pass-through ops (``fprune.patterns.ZeroOrMore``), a consumer.

- ``ZeroOrMore`` as a pattern element: zero, one or many ops; longest match, then the most
  specific pattern; malformed runs refused; tuple patterns unchanged.
- The default runs (``PASS_THROUGH_*``): every element prunes exactly in each producer family,
  random runs of them prune exactly or are refused for exactness, and the issue's chain
  ``conv -> relu -> max_pool2d -> AdaptiveAvgPool2d -> flatten -> linear`` matches.
- prune_chain's exactness limits that long runs reach (each a PruneError with its reason).
- The chain-model fuzzer (tests/pipeline/chain_fuzz.py): under 5% refusals, each for exactness; every
  other model prunes exactly and is left unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
from collections.abc import Callable, Sequence
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.patterns import PatternElement, ZeroOrMore
from fprune.patterns._match import explain_unmatched

from ..pipeline.chain_fuzz import build_and_run, chain_case, is_exactness_refusal, run_chain_case
from ..chains import random_batchnorm
from ..pipeline.fuzz_models import DrawChooser
from ..models import ReferenceMLP


pytestmark = pytest.mark.usefixtures("one_thread")


# --- building chain models from elements ----------------------------------------------------------

_FUNCTION_ARGS: dict[object, tuple[object, ...]] = {
    F.threshold: (0.1, 2.0),
    F.hardtanh: (-0.5, 0.7),
    F.leaky_relu: (0.3,),
    F.hardshrink: (0.3,),
    F.softshrink: (0.3,),
    F.celu: (1.5,),
    F.elu: (0.7,),
    F.dropout: (0.5, False),
    F.dropout1d: (0.5, False),
    F.dropout2d: (0.5, False),
    F.dropout3d: (0.5, False),
    F.alpha_dropout: (0.5, False),
    F.max_pool1d: (2,),
    F.max_pool2d: (2,),
    F.max_pool3d: (2,),
    F.avg_pool1d: (3, 1, 1),  # padded, count_include_pad: exact only while the constant is 0
    F.avg_pool2d: (2,),
    F.avg_pool3d: (2,),
    F.adaptive_avg_pool1d: (2,),
    F.adaptive_max_pool1d: (2,),
    F.adaptive_avg_pool2d: (2,),
    F.adaptive_max_pool2d: (2,),
    F.adaptive_avg_pool3d: (2,),
    F.adaptive_max_pool3d: (2,),
}

_MODULES: dict[type[nn.Module], Callable[[int], nn.Module]] = {
    nn.Threshold: lambda c: nn.Threshold(0.1, 2.0),
    nn.Hardtanh: lambda c: nn.Hardtanh(-0.5, 0.7),
    nn.LeakyReLU: lambda c: nn.LeakyReLU(0.3),
    nn.PReLU: lambda c: nn.PReLU(c),
    nn.Dropout: lambda c: nn.Dropout(0.5),
    nn.Dropout1d: lambda c: nn.Dropout1d(0.5),
    nn.Dropout2d: lambda c: nn.Dropout2d(0.5),
    nn.Dropout3d: lambda c: nn.Dropout3d(0.5),
    nn.AlphaDropout: lambda c: nn.AlphaDropout(0.5),
    nn.MaxPool1d: lambda c: nn.MaxPool1d(2),
    nn.MaxPool2d: lambda c: nn.MaxPool2d(3, 1, 1),
    nn.MaxPool3d: lambda c: nn.MaxPool3d(2),
    nn.AvgPool1d: lambda c: nn.AvgPool1d(2),
    nn.AvgPool2d: lambda c: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    nn.AvgPool3d: lambda c: nn.AvgPool3d(2),
    nn.AdaptiveAvgPool1d: lambda c: nn.AdaptiveAvgPool1d(2),
    nn.AdaptiveMaxPool1d: lambda c: nn.AdaptiveMaxPool1d(2),
    nn.AdaptiveAvgPool2d: lambda c: nn.AdaptiveAvgPool2d(2),
    nn.AdaptiveMaxPool2d: lambda c: nn.AdaptiveMaxPool2d(2),
    nn.AdaptiveAvgPool3d: lambda c: nn.AdaptiveAvgPool3d(2),
    nn.AdaptiveMaxPool3d: lambda c: nn.AdaptiveMaxPool3d(2),
    nn.Flatten: lambda c: nn.Flatten(),
}


class Steps(nn.Module):
    """``producer -> elements... -> consumer`` (or the output), each element in its own form."""

    def __init__(self, producer: nn.Module, elements: Sequence[PatternElement], channels: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.producer = producer
        self.ops = nn.ModuleList()
        self.prelu_weight = nn.Parameter(torch.tensor([0.25]))
        self.calls: list[Callable[[Tensor], Tensor]] = []
        for element in elements:
            self.calls.append(self._step(element, channels))
        self.consumer: nn.Module | None = None
        self.input_shape = input_shape

    def _step(self, element: PatternElement, c: int) -> Callable[[Tensor], Tensor]:
        if isinstance(element, type):
            if element in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                module = random_batchnorm(element, c)
            else:
                module = _MODULES[element](c) if element in _MODULES else element()
            self.ops.append(module)
            return module
        if isinstance(element, str):
            name = element
            return lambda x: getattr(x, name)(1) if name == "flatten" else getattr(x, name)()
        if element is F.prelu:
            return lambda x: F.prelu(x, self.prelu_weight)
        if element is torch.flatten:
            return lambda x: torch.flatten(x, 1)
        args = _FUNCTION_ARGS.get(element, ())
        function = element
        return lambda x: cast(Tensor, function(x, *args))

    def features(self) -> int:
        with torch.no_grad():
            return int(self.body(torch.zeros(self.input_shape, dtype=torch.float64))[0].numel())

    def body(self, x: Tensor) -> Tensor:
        x = self.producer(x)
        for call in self.calls:
            x = call(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        return x if self.consumer is None else cast(Tensor, self.consumer(x))


def _family(producer: type[nn.Module]) -> tuple[nn.Module, tuple[int, ...], Callable[[int], nn.Module]]:
    """A producer of 6 channels, an input shape and a consumer factory (unpadded)."""
    if producer is nn.Linear:
        return nn.Linear(5, 6), (4, 5), lambda c: nn.Linear(c, 3)
    if producer is nn.Conv1d:
        return nn.Conv1d(3, 6, 3), (4, 3, 26), lambda c: nn.Conv1d(c, 4, 1)
    if producer is nn.Conv2d:
        return nn.Conv2d(3, 6, 3), (4, 3, 14, 14), lambda c: nn.Conv2d(c, 4, 1)
    return nn.Conv3d(3, 6, 3), (4, 3, 10, 10, 10), lambda c: nn.Conv3d(c, 4, 1)


def build(producer: type[nn.Module], elements: Sequence[PatternElement], end: str, *, train: bool = False) -> Steps:
    """A float64 chain model: `producer` (6 channels), `elements`, then ``"consumer"`` (same
    kind, or a Linear after a flatten) or ``"output"``; random non-zero biases."""
    first, shape, consumer = _family(producer)
    model = Steps(first, elements, 6, shape).double()
    if end == "consumer":
        flat = any(e in (nn.Flatten, torch.flatten, "flatten") for e in elements)
        model.consumer = (nn.Linear(model.features(), 3) if flat else consumer(6)).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.bias is not None:
                module.bias.uniform_(-1, 1)
    return model.train(train)


def prune_and_compare(
    model: nn.Module, x: Tensor, keep: Tensor, *, prune_bias: bool | dict[str, bool], returns_channels: bool, weight: str = "producer.weight"
) -> str:
    """"exact", or the PruneError message; AssertionError on a mismatch or a changed input."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {weight: keep}
    try:
        pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    except fprune.PruneError as error:
        return str(error)
    finally:
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "the input model changed"
    with torch.no_grad():
        expected = functional_call(copy.deepcopy(model), fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
        got = pruned(x)
    assert isinstance(expected, Tensor) and isinstance(got, Tensor)
    if returns_channels:
        if expected.dim() == 2 and expected.shape[1] != keep.shape[0]:  # flattened channels
            expected = expected[:, keep.repeat_interleave(expected.shape[1] // keep.shape[0])]
        else:
            expected = expected.index_select(1, keep.nonzero().squeeze(1))
    assert expected.shape == got.shape, (expected.shape, got.shape)
    assert torch.allclose(expected, got, rtol=1e-9, atol=1e-10), float((expected - got).abs().max())
    return "exact"


KEEP = torch.tensor([True, False, True, True, False, True])


def _example(model: Steps) -> Tensor:
    return torch.randn(model.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# --- ZeroOrMore: the element ----------------------------------------------------------------------


def test_zero_or_more_is_an_immutable_hashable_element() -> None:
    run = ZeroOrMore(nn.ReLU, F.relu, "relu", name="relus")
    assert run == ZeroOrMore("relu", nn.ReLU, F.relu) and hash(run) == hash(ZeroOrMore("relu", F.relu, nn.ReLU))
    assert run != ZeroOrMore(nn.ReLU)
    assert run.elements == frozenset({nn.ReLU, F.relu, "relu"})
    assert repr(run) == "ZeroOrMore(relus)" and repr(ZeroOrMore(nn.ReLU, "relu")) == "ZeroOrMore('relu', ReLU)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.name = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(run)) == run  # (F.max_pool2d itself cannot be pickled)
    assert copy.deepcopy(run) == run


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ZeroOrMore(), r"^ZeroOrMore: give at least one element"),
        (lambda: ZeroOrMore(nn.ReLU, "output"), r"^ZeroOrMore: 'output' cannot be repeated inside a run; put it in the pattern after the run"),
        (lambda: ZeroOrMore(ZeroOrMore(nn.ReLU)), r"^ZeroOrMore: ZeroOrMore\(ReLU\) cannot be repeated inside a run"),  # type: ignore[arg-type]
    ],
)
def test_malformed_runs_raise(make: Callable[[], ZeroOrMore], message: str) -> None:
    with pytest.raises(fprune.PruneError, match=message):
        make()


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ((nn.Linear, ZeroOrMore(nn.ReLU)), r"pattern \(Linear, ZeroOrMore\(ReLU\)\): a pattern cannot end with a ZeroOrMore run; end it with the consumer or 'output'"),
        ((ZeroOrMore(nn.Linear), nn.Linear), r"the first element must be an nn.Module class \(the producer\)"),
        ((nn.Linear, ZeroOrMore(int), nn.Linear), r"element int is a class but not an nn.Module"),
        ((nn.Linear, ZeroOrMore(3), nn.Linear), r"element 3 is not a module class, function, string or fprune.patterns.ZeroOrMore"),  # type: ignore[arg-type]
    ],
)
def test_malformed_run_patterns_raise(pattern: tuple[object, ...], message: str) -> None:
    with pytest.raises(fprune.PruneError, match=message):
        fprune.match_patterns(torch.fx.symbolic_trace(ReferenceMLP()), {pattern: fprune.patterns.prune_chain})  # type: ignore[dict-item]


# --- ZeroOrMore: matching -------------------------------------------------------------------------


def _patterns_of(model: nn.Module, patterns: dict[tuple[object, ...], fprune.patterns.PruneFunction]) -> list[tuple[object, ...]]:
    return [m.pattern for m in fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)]  # type: ignore[arg-type]


def test_a_run_matches_zero_one_or_many_ops() -> None:
    relus = ZeroOrMore(nn.ReLU, F.relu, "relu")
    patterns: dict[tuple[object, ...], fprune.patterns.PruneFunction] = {(nn.Linear, relus, nn.Linear): fprune.patterns.prune_chain}
    for middle in ([], [nn.ReLU()], [nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()]):
        model = nn.Sequential(nn.Linear(4, 6), *middle, nn.Linear(6, 2))
        matches = fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)  # type: ignore[arg-type]
        assert len(matches) == 1 and len(matches[0].ops) == 2 + len(middle)
        assert matches[0].pattern == (nn.Linear, relus, nn.Linear)
    # a run stops at an op it does not hold, and the reason names that op
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Tanh(), nn.Linear(6, 2))
    gm = torch.fx.symbolic_trace(model)
    assert fprune.match_patterns(gm, patterns) == ()  # type: ignore[arg-type]
    reason = explain_unmatched(gm, "0.weight", patterns)  # type: ignore[arg-type]
    assert reason == "`0` (Linear): no pattern continues with `_2`: module `2` (Tanh)"


def test_runs_and_fixed_elements_combine() -> None:
    relus = ZeroOrMore(nn.ReLU)
    pattern = (nn.Conv2d, relus, nn.MaxPool2d, relus, ZeroOrMore(nn.Tanh), nn.Conv2d)
    patterns: dict[tuple[object, ...], fprune.patterns.PruneFunction] = {pattern: fprune.patterns.prune_chain}
    ok: list[list[nn.Module]] = [
        [nn.MaxPool2d(2)],
        [nn.ReLU(), nn.MaxPool2d(2), nn.ReLU(), nn.ReLU(), nn.Tanh()],
        [nn.MaxPool2d(2), nn.Tanh(), nn.Tanh()],
    ]
    for middle in ok:
        model = nn.Sequential(nn.Conv2d(3, 6, 3), *middle, nn.Conv2d(6, 2, 1))
        assert _patterns_of(model, patterns) == [pattern], middle
    refused: list[list[nn.Module]] = [[nn.ReLU()], [nn.MaxPool2d(2), nn.Tanh(), nn.ReLU()], [nn.MaxPool2d(2), nn.MaxPool2d(2)]]
    for middle in refused:
        model = nn.Sequential(nn.Conv2d(3, 6, 3), *middle, nn.Conv2d(6, 2, 1))
        assert _patterns_of(model, patterns) == [], middle


def test_longest_match_wins_then_the_most_specific_pattern() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 2))
    run = ZeroOrMore(nn.ReLU, nn.Dropout)
    other = ZeroOrMore(nn.ReLU, nn.Dropout, nn.Tanh)
    # longer beats more specific: the (Linear, ReLU) tuple ends a node earlier
    assert _patterns_of(model, {(nn.Linear, nn.ReLU): fprune.patterns.prune_chain, (nn.Linear, run, nn.Linear): fprune.patterns.prune_chain})[0] == (nn.Linear, run, nn.Linear)
    # same nodes: the tuple (4 fixed elements) beats a run pattern (2 fixed elements)
    tuple_key = (nn.Linear, nn.ReLU, nn.Dropout, nn.Linear)
    assert _patterns_of(model, {tuple_key: fprune.patterns.prune_chain, (nn.Linear, run, nn.Linear): fprune.patterns.prune_chain})[0] == tuple_key
    assert _patterns_of(model, {(nn.Linear, run, nn.Linear): fprune.patterns.prune_chain, tuple_key: fprune.patterns.prune_chain})[0] == tuple_key
    # more fixed elements beat fewer: (Linear, run, Dropout, Linear) over (Linear, run, Linear)
    three = (nn.Linear, run, nn.Dropout, nn.Linear)
    assert _patterns_of(model, {three: fprune.patterns.prune_chain, (nn.Linear, run, nn.Linear): fprune.patterns.prune_chain})[0] == three
    # equally specific runs: the pattern added to the dict last wins
    assert _patterns_of(model, {(nn.Linear, run, nn.Linear): fprune.patterns.prune_chain, (nn.Linear, other, nn.Linear): fprune.patterns.prune_chain})[0] == (nn.Linear, other, nn.Linear)
    assert _patterns_of(model, {(nn.Linear, other, nn.Linear): fprune.patterns.prune_chain, (nn.Linear, run, nn.Linear): fprune.patterns.prune_chain})[0] == (nn.Linear, run, nn.Linear)
    # an empty run ties with the tuple of the same fixed elements: the tuple (no run) wins
    plain = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    assert _patterns_of(plain, {(nn.Linear, run, nn.Linear): fprune.patterns.prune_chain, (nn.Linear, nn.Linear): fprune.patterns.prune_linear_linear})[0] == (nn.Linear, nn.Linear)


def test_default_tuples_still_win_with_their_torch_ao_functions() -> None:
    cases: list[tuple[nn.Module, tuple[object, ...], object]] = [
        (ReferenceMLP(), (nn.Linear, nn.ReLU, nn.Linear), fprune.patterns.prune_linear_activation_linear),
        (nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 2, 3)), (nn.Conv2d, nn.Conv2d), fprune.patterns.prune_conv2d_conv2d),
        (nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 2, 1)), (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d), fprune.patterns.prune_conv2d_activation_pool_conv2d),
        (nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)), (nn.Conv2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear), fprune.patterns.prune_conv2d_pool_flatten_linear),
        (nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(), nn.Conv2d(6, 2, 1)), (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Conv2d), fprune.patterns.prune_chain),
        (nn.Sequential(nn.Linear(4, 6)), (nn.Linear, "output"), fprune.patterns.prune_linear),
    ]
    for model, pattern, function in cases:
        first = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())[0]
        assert first.pattern == pattern and first.prune_fn is function


def test_the_issue_chain_matches_and_prunes_exactly() -> None:
    """conv -> relu -> max_pool2d -> AdaptiveAvgPool2d -> flatten -> linear (issue 11)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(32, 4)

        def forward(self, x: Tensor) -> Tensor:
            x = F.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(torch.flatten(self.pool(x), 1))  # type: ignore[no-any-return]

    model = Net().double().eval()
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    assert matches[0].pattern == (nn.Conv2d, fprune.patterns.PASS_THROUGH_2D, torch.flatten, fprune.patterns.PASS_THROUGH_FLAT, nn.Linear)
    assert matches[0].nodes == ("conv", "relu", "max_pool2d", "pool", "flatten", "fc") and matches[0].prune_fn is fprune.patterns.prune_chain
    keep = torch.tensor([True, False] * 4)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for prune_bias in (True, False):
        pruned = fprune.apply_prune(model, {"conv.weight": keep}, matches, prune_bias=prune_bias)
        assert pruned.conv.out_channels == 4 and pruned.fc.in_features == 16
        masked = functional_call(model, fprune.masked_parameters(model, {"conv.weight": keep}, matches, prune_bias=prune_bias), (x,))
        torch.testing.assert_close(pruned(x), masked, rtol=1e-9, atol=1e-10)


def test_matching_cost_does_not_grow_with_run_patterns() -> None:
    """A run is one trie node that loops: matching walks a set of at most a few nodes."""
    from fprune.patterns._match import _build_trie

    trie = _build_trie(fprune.default_patterns())
    linear = trie.children[("module", nn.Linear)]
    assert linear.runs is not None and len(linear.runs) == 1
    (run_node,) = linear.runs.values()
    assert ("module", nn.ReLU) in run_node.loop and ("name", "relu") in run_node.loop
    assert set(run_node.children) == {("module", nn.Linear), ("name", "output")}


class _Abs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)).abs().tanh())  # type: ignore[no-any-return]


def test_a_run_extended_with_your_own_elementwise_op_rebuilds_the_index_and_prunes_exactly() -> None:
    model = _Abs().double()
    gm = torch.fx.symbolic_trace(model)
    patterns = fprune.default_patterns()
    assert [m.pattern for m in fprune.match_patterns(gm, patterns)] == [(nn.Linear, "output")]
    custom = ZeroOrMore(*fprune.patterns.PASS_THROUGH_LINEAR.elements, "abs")
    patterns[(nn.Linear, custom, nn.Linear)] = fprune.patterns.prune_chain
    matches = fprune.match_patterns(gm, patterns)
    assert [m.pattern for m in matches] == [(nn.Linear, custom, nn.Linear), (nn.Linear, "output")]
    keep = torch.tensor([True, False, True, True, False, True])
    x = torch.randn(3, 4, dtype=torch.float64)
    for prune_bias in (True, False):
        pruned = fprune.apply_prune(model, {"fc1.weight": keep}, matches, prune_bias=prune_bias)
        masked = functional_call(model, fprune.masked_parameters(model, {"fc1.weight": keep}, matches, prune_bias=prune_bias), (x,))
        torch.testing.assert_close(pruned(x), masked, rtol=1e-9, atol=1e-10)
    del patterns[(nn.Linear, custom, nn.Linear)]
    assert len(fprune.match_patterns(gm, patterns)) == 1


# --- the default runs: every element, every family ------------------------------------------------

_FAMILIES = {
    nn.Linear: fprune.patterns.PASS_THROUGH_LINEAR,
    nn.Conv1d: fprune.patterns.PASS_THROUGH_1D,
    nn.Conv2d: fprune.patterns.PASS_THROUGH_2D,
    nn.Conv3d: fprune.patterns.PASS_THROUGH_3D,
}
_FLATTENS: tuple[PatternElement, ...] = (nn.Flatten, torch.flatten, "flatten")


def _sorted(elements: frozenset[PatternElement]) -> list[PatternElement]:
    return sorted(elements, key=lambda e: e if isinstance(e, str) else f"{getattr(e, '__module__', '')}.{getattr(e, '__qualname__', repr(e))}")


def _cases() -> list[tuple[type[nn.Module], tuple[PatternElement, ...]]]:
    cases: list[tuple[type[nn.Module], tuple[PatternElement, ...]]] = [(producer, (element,)) for producer, run in _FAMILIES.items() for element in _sorted(run.elements)]
    for producer in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        cases += [(producer, (flat, element)) for flat in _FLATTENS for element in _sorted(fprune.patterns.PASS_THROUGH_FLAT.elements)[:: 7]]
    return cases


def test_the_default_runs_are_the_documented_sets() -> None:
    common = fprune.patterns.PASS_THROUGH_FLAT.elements
    assert set(fprune.patterns.ACTIVATION_MODULES + fprune.patterns.ACTIVATION_FUNCTIONS + fprune.patterns.ACTIVATION_METHODS) <= common
    assert {nn.Identity, nn.Dropout, F.dropout} <= common and not {nn.BatchNorm1d, nn.MaxPool2d, nn.Flatten} & common
    assert fprune.patterns.PASS_THROUGH_LINEAR.elements == common | {nn.BatchNorm1d}
    assert fprune.patterns.PASS_THROUGH_2D.elements - common == {
        nn.BatchNorm2d, nn.Dropout2d, F.dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
        F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    }  # fmt: skip
    for run in (fprune.patterns.PASS_THROUGH_1D, fprune.patterns.PASS_THROUGH_3D):
        assert len(run.elements - common) == 11
    patterns = fprune.default_patterns()
    for producer, run in _FAMILIES.items():
        consumer = producer
        assert patterns[(producer, run, consumer)] is fprune.patterns.prune_chain and patterns[(producer, run, "output")] is fprune.patterns.prune_chain
        if producer is not nn.Linear:
            for flat in _FLATTENS:
                assert patterns[(producer, run, flat, fprune.patterns.PASS_THROUGH_FLAT, nn.Linear)] is fprune.patterns.prune_chain
    runs = [p for p in patterns if any(isinstance(e, ZeroOrMore) for e in p)]
    assert len(runs) == 2 * 4 + 2 * 3 * 3


@pytest.mark.slow
@pytest.mark.parametrize("end", ["consumer", "output"])
def test_every_pass_through_element_prunes_exactly_in_its_family(end: str) -> None:
    """Producer -> one element (module, function or method form) -> consumer or output, for
    each element of each PASS_THROUGH_* run, and flatten -> PASS_THROUGH_FLAT element after a
    conv: the run pattern matches and the pruned copy equals the masked model, with
    prune_bias=True; with prune_bias=False it is exact or refused for exactness."""
    torch.manual_seed(0)
    failures: list[str] = []
    for producer, elements in _cases():
        model = build(producer, elements, end).eval()
        x = _example(model)
        matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
        if not matches or len(matches[0].ops) != len(elements) + 2:
            failures.append(f"{producer.__name__} {elements}: matched {[m.pattern for m in matches]}")
            continue
        for prune_bias in (True, False):
            result = prune_and_compare(model, x, KEEP, prune_bias=prune_bias, returns_channels=end == "output")
            if result != "exact" and (prune_bias or not is_exactness_refusal(result)):
                failures.append(f"{producer.__name__} {elements} prune_bias={prune_bias}: {result}")
    assert not failures, f"{len(failures)} cases: " + "\n".join(failures[:10])


@pytest.mark.parametrize("producer", list(_FAMILIES), ids=lambda p: p.__name__)
def test_random_runs_of_each_family_prune_exactly_or_refuse_for_exactness(producer: type[nn.Module]) -> None:
    """Runs of 0 to 5 elements drawn from the family's PASS_THROUGH_* set, in eval and train
    mode, with prune_bias True / False: exact, or a PruneError for exactness."""
    rng = random.Random(producer.__name__)
    family = _FAMILIES[producer].elements
    elements = _sorted(family)
    norms_and_dropouts = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, F.dropout1d, F.dropout2d, F.dropout3d}
    pools = family - fprune.patterns.PASS_THROUGH_FLAT.elements - norms_and_dropouts
    random_in_train = {nn.RReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout}
    failures: list[str] = []
    exact = 0
    for index in range(60):
        run: list[PatternElement] = []
        for _ in range(rng.randint(0, 5)):
            element = rng.choice(elements)
            if element in pools and sum(e in pools for e in run) >= 2:
                continue  # two pools at most: the maps here are small
            if element in random_in_train and index % 2:
                continue  # random in train mode, in the masked model too
            run.append(element)
        tail: tuple[PatternElement, ...] = ()
        if producer is not nn.Linear and rng.random() < 0.3:
            after: list[PatternElement] = [nn.ReLU, "sigmoid", F.gelu, nn.Identity]
            tail = (rng.choice(_FLATTENS), rng.choice(after))
        end = rng.choice(["consumer", "output"])
        model = build(producer, (*run, *tail), end, train=bool(index % 2))
        torch.manual_seed(index)
        keep = torch.rand(6) < 0.5
        keep[index % 6] = True
        for prune_bias in (True, False):
            result = prune_and_compare(model, _example(model), keep, prune_bias=prune_bias, returns_channels=end == "output")
            exact += result == "exact"
            if result != "exact" and not is_exactness_refusal(result):
                failures.append(f"{[getattr(e, '__name__', e) for e in (*run, *tail)]} -> {end}, prune_bias={prune_bias}: {result}")
    assert not failures, "\n".join(failures[:10])
    assert exact >= 100


# --- exactness limits of long runs (prune_chain), each refused with its reason --------------------


def _conv_model(middle: Sequence[nn.Module], consumer: nn.Module) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), *middle, consumer).double()
    producer = model[0]
    assert isinstance(producer, nn.Conv2d) and producer.bias is not None
    with torch.no_grad():
        producer.bias.uniform_(0.5, 1.0)
    return model


def test_prune_bias_false_folds_through_a_long_run() -> None:
    model = _conv_model(
        [random_batchnorm(nn.BatchNorm2d, 6), nn.LeakyReLU(0.2), nn.MaxPool2d(3, 1, 1), nn.PReLU(6), nn.Dropout2d(0.0), nn.Sigmoid(), nn.AvgPool2d(2), nn.Identity(), nn.SELU()],
        nn.Conv2d(6, 4, 3),
    ).eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert len(fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())[0].ops) == 11
    for prune_bias in (True, False):
        assert prune_and_compare(model, x, KEEP, prune_bias=prune_bias, returns_channels=False, weight="0.weight") == "exact"
    model.train()  # BatchNorm with batch statistics: a constant channel normalizes to 0
    assert prune_and_compare(model, x, KEEP, prune_bias=False, returns_channels=False, weight="0.weight") == "exact"


@pytest.mark.parametrize(
    ("middle", "consumer", "prune_bias", "train", "message"),
    [
        ([nn.ReLU(), nn.Sigmoid()], nn.Conv2d(6, 4, 3, padding=1), True, False, r"into a zero-padded Conv2d .* cannot be folded into a bias exactly"),
        ([nn.ReLU(), nn.AvgPool2d(3, 1, 1), nn.Tanh()], nn.Conv2d(6, 4, 1), False, False, r"through AvgPool2d with padding=1 and count_include_pad=True, which makes it position-dependent"),
        ([nn.Sigmoid(), nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(6, affine=False)], nn.Conv2d(6, 4, 1), True, True, r"position-dependent value \(after AvgPool2d .*\) into BatchNorm2d, which normalizes it with batch statistics"),
    ],
)
def test_long_runs_refuse_where_no_bias_is_exact(middle: list[nn.Module], consumer: nn.Module, prune_bias: bool, train: bool, message: str) -> None:
    model = _conv_model(middle, consumer).train(train)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    assert len(matches[0].ops) == len(middle) + 2
    with pytest.raises(fprune.PruneError, match=r"^apply_prune: pruning `0.weight` \(chain _0 -> _1 -> .*\): .*" + message) as error:
        fprune.apply_prune(model, {"0.weight": KEEP}, matches, prune_bias=prune_bias)
    assert is_exactness_refusal(str(error.value))


def test_train_mode_batchnorm_after_a_padded_pool_is_exact_when_its_affine_entries_are_zeroed() -> None:
    model = _conv_model([nn.Sigmoid(), nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(6)], nn.Conv2d(6, 4, 1)).train()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    assert prune_and_compare(model, x, KEEP, prune_bias=True, returns_channels=False, weight="0.weight") == "exact"


class _FunctionalPReLU(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.a, self.w, self.b = nn.Linear(4, 6), nn.Parameter(weight), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.prelu(self.a(x), self.w))  # type: ignore[no-any-return]


def test_functional_prelu_with_a_weight_per_channel_is_refused() -> None:
    for weight, expected in ((torch.rand(1), "exact"), (torch.rand(6), "takes a tensor argument with 6 entries")):
        model = _FunctionalPReLU(weight).double()
        keep = torch.tensor([True, False, True, True, False, True])
        state = {k: v.clone() for k, v in model.state_dict().items()}
        matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
        try:
            fprune.apply_prune(model, {"a.weight": keep}, matches)
            result = "exact"
        except fprune.PruneError as error:
            result = str(error)
            assert "use a module such as nn.PReLU(num_parameters=...)" in result
        assert expected in result
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_flatten_after_a_linear_producer_must_not_interleave_features() -> None:
    class Tokens(nn.Module):
        def __init__(self, tokens: int) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6 * tokens, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.flatten(torch.relu(self.a(x)), 1))  # type: ignore[no-any-return]

    run = ZeroOrMore(torch.relu, torch.flatten)
    patterns: dict[tuple[object, ...], fprune.patterns.PruneFunction] = {(nn.Linear, run, nn.Linear): fprune.patterns.prune_chain}
    keep = torch.tensor([True, False, True, True, False, True])
    model = Tokens(3).double()
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)  # type: ignore[arg-type]
    with pytest.raises(fprune.PruneError, match=r"a flatten after a Linear producer interleaves its 6 features with the other dims"):
        fprune.apply_prune(model, {"a.weight": keep}, matches)
    flat = Tokens(1).double()  # 2-D features: the flatten changes nothing
    matches = fprune.match_patterns(torch.fx.symbolic_trace(flat), patterns)  # type: ignore[arg-type]
    pruned = fprune.apply_prune(flat, {"a.weight": keep}, matches)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), functional_call(flat, fprune.masked_parameters(flat, {"a.weight": keep}, matches), (x,)))


# --- the chain-model fuzzer -----------------------------------------------------------------------

CHAIN_MODELS = 400
MAX_REFUSALS = 0.05


@pytest.mark.slow
def test_chain_models_refuse_under_5_percent_for_exactness_only_and_prune_exactly_otherwise() -> None:
    """Issue 11's target: random Linear / Conv2d chain models (tests/pipeline/chain_fuzz.py, seeds 0 to
    399) are refused less than 5% of the time, each refusal for an exactness reason; every
    other model prunes exactly (float64, against masked_parameters) and is left unchanged.
    ``python -m tests.pipeline.chain_report`` prints the figures for more models."""
    outcomes = [build_and_run(seed) for seed in range(CHAIN_MODELS)]
    bad = [(case, outcome) for case, outcome in outcomes if outcome.status not in ("exact", "refused")]
    assert not bad, "\n".join(f"{case!r}: {outcome}" for case, outcome in bad[:5])
    refused = [(case, outcome) for case, outcome in outcomes if outcome.status == "refused"]
    other = [(case, outcome) for case, outcome in refused if not outcome.exactness]
    assert not other, "\n".join(f"{case!r}: {outcome.detail}" for case, outcome in other[:5])
    assert len(refused) < MAX_REFUSALS * CHAIN_MODELS, f"{len(refused)} of {CHAIN_MODELS} refused"


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_chain_models_drawn_by_hypothesis_prune_exactly_or_refuse_for_exactness(data: st.DataObject) -> None:
    """The same generator with every choice a hypothesis draw, so a failure shrinks."""
    choose = DrawChooser(data.draw)
    case = chain_case(choose)
    note(repr(case))
    outcome = run_chain_case(case, choose)
    assert outcome.status == "exact" or (outcome.status == "refused" and outcome.exactness), outcome


def test_typed_usage_of_a_run_pattern_runs() -> None:
    from ..typing import passthrough_usage

    pruned = passthrough_usage.run()
    assert isinstance(pruned, passthrough_usage.Net) and pruned.fc1.out_features == 4
