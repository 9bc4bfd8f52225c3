"""match_patterns: typed frozen records, graph order, longest wins, never across a branch."""

from __future__ import annotations

import dataclasses
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune
from fprune import Match
from fprune.patterns import Call, ModuleOp, OUTPUT, Pattern, PruneFunction

from ..models import Branching, ConvBNNet, LSTMNet, ReferenceMLP, TwiceCalled


def _match(model: nn.Module) -> tuple[Match, ...]:
    return fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())


def test_reference_mlp_matches_four_chains_in_graph_order() -> None:
    matches = _match(ReferenceMLP())
    assert [m.weight_fqn for m in matches] == ["seq.0.weight", "seq.2.weight", "seq.4.weight", "linear.weight"]
    first = matches[0]
    assert first.pattern == (nn.Linear, nn.ReLU, nn.Linear)
    assert first.nodes == ("seq_0", "seq_1", "seq_2")
    assert first.ops == (ModuleOp("seq.0", nn.Linear), ModuleOp("seq.1", nn.ReLU), ModuleOp("seq.2", nn.Linear))
    assert first.prune_fn is fprune.patterns.prune_linear_activation_linear
    assert first.mask_fqns == ("seq.0.weight",)
    assert first.module_fqns == ("seq.0", "seq.1", "seq.2")
    assert matches[-1].pattern == (nn.Linear, "output") and matches[-1].ops[-1] is OUTPUT


def test_records_are_frozen() -> None:
    match = _match(ReferenceMLP())[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        match.weight_fqn = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        match.ops[0].fqn = "x"  # type: ignore[misc, union-attr]


def test_matching_is_deterministic_and_leaves_the_graph_alone() -> None:
    gm = torch.fx.symbolic_trace(ConvBNNet())
    code = gm.code
    first = fprune.match_patterns(gm, fprune.default_patterns())
    second = fprune.match_patterns(gm, fprune.default_patterns())
    assert first == second
    assert gm.code == code


def test_longest_pattern_wins() -> None:
    matches = _match(ConvBNNet())
    assert [m.pattern for m in matches] == [
        (nn.Conv2d, nn.BatchNorm2d, F.relu, nn.MaxPool2d, nn.Conv2d),
        (nn.Conv2d, nn.BatchNorm2d, F.leaky_relu, F.adaptive_avg_pool2d, torch.flatten, nn.Linear),
        (nn.Linear, "output"),
    ]
    patterns = {(nn.Conv2d, nn.BatchNorm2d): fprune.patterns.prune_chain, (nn.Conv2d, nn.BatchNorm2d, F.relu, nn.MaxPool2d, nn.Conv2d): fprune.patterns.prune_chain}
    short = fprune.match_patterns(torch.fx.symbolic_trace(ConvBNNet()), patterns)  # type: ignore[arg-type]
    assert [m.pattern for m in short] == [(nn.Conv2d, nn.BatchNorm2d, F.relu, nn.MaxPool2d, nn.Conv2d), (nn.Conv2d, nn.BatchNorm2d)]


def test_functional_calls_keep_their_real_arguments() -> None:
    leaky = _match(ConvBNNet())[1].ops[2]
    assert isinstance(leaky, Call) and leaky.target is F.leaky_relu
    assert dict(leaky.kwargs)["negative_slope"] == 0.2
    x = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(leaky(x), torch.tensor([-0.2, 2.0]))
    assert leaky.name == "torch.nn.functional.leaky_relu"


def test_chains_never_follow_a_branch() -> None:
    matches = _match(Branching())
    # fc1 feeds relu and the add; fc2's output goes twice into the cat: neither matches.
    assert [m.weight_fqn for m in matches] == ["fc3.weight", "fc4.weight"]


def test_a_module_called_twice_does_not_match() -> None:
    assert [m.weight_fqn for m in _match(TwiceCalled())] == ["out.weight"]


def test_lstm_chain_goes_through_getitem_zero() -> None:
    for norm in (False, True):
        matches = _match(LSTMNet(layers=2, norm=norm))
        lstm_match = matches[0]
        assert lstm_match.ops[1] == Call(operator.getitem, (0,))
        assert lstm_match.weight_fqn == "lstm.weight_ih_l0"
        assert lstm_match.mask_fqns == ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1")
        assert lstm_match.prune_fn is (fprune.patterns.prune_lstm_output_layernorm_linear if norm else fprune.patterns.prune_lstm_output_linear)


class _ReturnsHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.fc1(x))
        return self.fc2(h), h


def test_a_tensor_also_returned_may_shrink_with_the_chain() -> None:
    matches = _match(_ReturnsHidden())
    assert matches[0].pattern == (nn.Linear, torch.relu, nn.Linear)


class _MethodActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).relu())  # type: ignore[no-any-return]


def test_method_form_activation_matches() -> None:
    assert _match(_MethodActivation())[0].pattern == (nn.Linear, "relu", nn.Linear)


class _SubclassedLinear(nn.Linear):
    pass


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _SubclassedLinear) or super().is_leaf_module(m, module_qualified_name)


def test_module_types_match_exactly_and_custom_patterns_extend_the_dict() -> None:
    model = nn.Sequential(_SubclassedLinear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    gm = torch.fx.GraphModule(model, _LeafTracer().trace(model))
    assert [m.weight_fqn for m in fprune.match_patterns(gm, fprune.default_patterns())] == ["2.weight"]
    patterns = fprune.default_patterns()
    patterns[(_SubclassedLinear, nn.ReLU, nn.Linear)] = fprune.patterns.prune_linear_activation_linear
    matches = fprune.match_patterns(gm, patterns)
    assert [m.weight_fqn for m in matches] == ["0.weight", "2.weight"]


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({(nn.Linear,): fprune.patterns.prune_chain}, r"a pattern is a tuple of at least 2 elements"),
        ({(F.relu, nn.Linear): fprune.patterns.prune_chain}, r"the first element must be an nn.Module class"),
        ({(nn.Linear, int): fprune.patterns.prune_chain}, r"element int is a class but not an nn.Module"),
        ({(nn.Linear, 3): fprune.patterns.prune_chain}, r"element 3 is not a module class, function, string or fprune.patterns.ZeroOrMore"),
        ({(nn.Linear, nn.Linear): "prune"}, r"maps to 'prune', which is not a prune function"),
    ],
)
def test_malformed_patterns_raise(patterns: object, message: str) -> None:
    with pytest.raises(fprune.PruneError, match=message):
        fprune.match_patterns(torch.fx.symbolic_trace(ReferenceMLP()), patterns)  # type: ignore[arg-type]


def test_match_patterns_needs_a_graph_module() -> None:
    with pytest.raises(fprune.PruneError, match=r"expects a torch.fx.GraphModule .* got ReferenceMLP"):
        fprune.match_patterns(ReferenceMLP(), fprune.default_patterns())  # type: ignore[arg-type]


def test_pattern_index_is_rebuilt_after_the_dict_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Hardswish(), nn.Linear(6, 2))
    gm = torch.fx.symbolic_trace(model)
    patterns = fprune.default_patterns()
    tuple_key = (nn.Linear, nn.Hardswish, nn.Linear)
    run_key = (nn.Linear, fprune.patterns.PASS_THROUGH_LINEAR, nn.Linear)
    assert [m.pattern for m in fprune.match_patterns(gm, patterns)] == [tuple_key, (nn.Linear, "output")]
    del patterns[tuple_key]
    assert [m.pattern for m in fprune.match_patterns(gm, patterns)] == [run_key, (nn.Linear, "output")]
    del patterns[run_key]
    assert [m.pattern for m in fprune.match_patterns(gm, patterns)] == [(nn.Linear, "output")]
    patterns.update({tuple_key: fprune.patterns.prune_chain})
    assert len(fprune.match_patterns(gm, patterns)) == 2
    plain = dict(patterns)
    plain.pop(tuple_key)
    assert len(fprune.match_patterns(gm, plain)) == 1


def test_match_patterns_never_writes_to_the_patterns_dict() -> None:
    """Pure: no index or cache is stored on the caller's dict, whatever kind it is."""
    gm = torch.fx.symbolic_trace(ReferenceMLP())
    defaults = fprune.default_patterns()
    modified = fprune.default_patterns()
    modified[(nn.Linear, nn.Tanh, nn.Linear)] = fprune.patterns.prune_chain
    plain = dict(modified)
    for patterns in (defaults, modified, plain):
        attributes = dict(vars(patterns)) if hasattr(patterns, "__dict__") else None
        items = list(patterns.items())
        for _ in range(2):  # the second call finds a cached index
            assert fprune.match_patterns(gm, patterns)
        assert (dict(vars(patterns)) if hasattr(patterns, "__dict__") else None) == attributes
        assert list(patterns.items()) == items and all(a[1] is b[1] for a, b in zip(patterns.items(), items))
    assert "index" not in vars(defaults) and "index" not in vars(modified)


class _EqualToAll:
    """A prune function equal to every other object: an index keyed by == would confuse them."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __call__(self, ops: object, keep: object, *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
        raise AssertionError("not called")


def test_dicts_with_equal_patterns_but_different_functions_never_share_an_index() -> None:
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
    pattern: Pattern = (nn.Linear, nn.ReLU, nn.Linear)
    first, second = _EqualToAll("first"), _EqualToAll("second")
    dicts: list[dict[Pattern, PruneFunction]] = [{pattern: first}, {pattern: second}, {pattern: fprune.patterns.prune_chain}, {pattern: fprune.patterns.prune_linear_activation_linear}]
    for _ in range(2):  # alternate, with every index cached
        for patterns in dicts:
            (match,) = fprune.match_patterns(gm, patterns)
            assert match.prune_fn is patterns[pattern]
    again: dict[Pattern, PruneFunction] = {pattern: first}
    again[pattern] = second  # the same dict object, changed in place: indexed anew
    (match,) = fprune.match_patterns(gm, again)
    assert match.prune_fn is second
    copy_of_pattern: Pattern = tuple(pattern)[:2] + (nn.Linear,)  # equal, but another tuple object
    assert copy_of_pattern == pattern and copy_of_pattern is not pattern
    (match,) = fprune.match_patterns(gm, {copy_of_pattern: first})
    assert match.pattern is copy_of_pattern and match.prune_fn is first


def test_unmodified_default_copies_share_the_default_index_and_modified_ones_do_not() -> None:
    from fprune.patterns._match import _build_trie

    a, b = fprune.default_patterns(), fprune.default_patterns()
    assert _build_trie(a) is _build_trie(b)
    b[(nn.Linear, nn.Tanh, nn.Linear)] = fprune.patterns.prune_chain
    assert _build_trie(b) is not _build_trie(a)
    del b[(nn.Linear, nn.Tanh, nn.Linear)]
    gm = torch.fx.symbolic_trace(ReferenceMLP())
    assert fprune.match_patterns(gm, b) == fprune.match_patterns(gm, a)
