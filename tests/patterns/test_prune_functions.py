"""Prune functions: pure, exact where exactness is possible, loud where it is not."""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.patterns import OUTPUT, Call, Op

from ..models import LSTMNet
from ..purity import assert_modules_unchanged, snapshot


def test_prune_functions_never_modify_their_inputs() -> None:
    torch.manual_seed(0)
    conv1, bn, conv2 = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3)
    keep = {"weight": torch.tensor([True, False, True, True, False, True])}
    before = [snapshot(m) for m in (conv1, bn, conv2)]
    out = fprune.patterns.prune_chain([conv1, bn, nn.ReLU(), conv2], keep, prune_bias=False)
    assert_modules_unchanged([conv1, bn, conv2], before)
    assert conv1.out_channels == 6 and bn.num_features == 6 and conv2.in_channels == 6
    new_conv1, new_bn, relu, new_conv2 = out
    assert relu is None
    assert isinstance(new_conv1, nn.Conv2d) and new_conv1.weight.shape == (4, 3, 3, 3) and new_conv1.out_channels == 4
    assert isinstance(new_bn, nn.BatchNorm2d) and new_bn.num_features == 4 and new_bn.running_var is not None
    assert new_bn.running_var.shape == (4,)
    assert isinstance(new_conv2, nn.Conv2d) and new_conv2.in_channels == 4 and new_conv2.weight.shape == (4, 4, 3, 3)


def test_named_functions_check_the_ops_they_get() -> None:
    keep = {"weight": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(fprune.PruneError, match=r"^prune_linear_linear: expects 2 ops matching its name, got \(Conv2d, Linear\)"):
        fprune.patterns.prune_linear_linear([nn.Conv2d(1, 4, 1), nn.Linear(4, 2)], keep, prune_bias=True)
    with pytest.raises(fprune.PruneError, match=r"takes one keep-mask named 'weight', got \['bias'\]"):
        fprune.patterns.prune_linear_linear([nn.Linear(2, 4), nn.Linear(4, 2)], {"bias": keep["weight"]}, prune_bias=True)


def test_leaky_relu_argument_is_used_when_folding_the_bias() -> None:
    torch.manual_seed(1)
    fc1, fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
    with torch.no_grad():
        fc1.bias.copy_(torch.tensor([-1.0, 2.0, -3.0, 4.0]))
    keep = torch.tensor([True, True, False, False])
    new = fprune.patterns.prune_linear_activation_linear([fc1, Call(F.leaky_relu, (0.5,)), fc2], {"weight": keep}, prune_bias=False)
    new_fc2 = new[2]
    assert isinstance(new_fc2, nn.Linear)
    carried = F.leaky_relu(torch.tensor([-3.0, 4.0]), 0.5)  # slope 0.5, not the default 0.01
    torch.testing.assert_close(new_fc2.bias.detach(), fc2.bias.detach() + fc2.weight.detach()[:, 2:] @ carried)


def test_flatten_keeps_each_channels_block_of_columns() -> None:
    conv, linear = nn.Conv2d(1, 3, 1), nn.Linear(3 * 4, 2)
    keep = {"weight": torch.tensor([True, False, True])}
    new = fprune.patterns.prune_conv2d_pool_flatten_linear([conv, nn.AdaptiveAvgPool2d(2), nn.Flatten(), linear], keep, prune_bias=True)
    new_linear = new[3]
    assert isinstance(new_linear, nn.Linear) and new_linear.in_features == 8
    torch.testing.assert_close(new_linear.weight, torch.cat([linear.weight[:, 0:4], linear.weight[:, 8:12]], dim=1))


def test_per_channel_prelu_is_sliced() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.PReLU(5), nn.Linear(5, 2))
    with torch.no_grad():
        model.get_parameter("1.weight").uniform_(0.1, 0.9)
    keep = torch.tensor([True, False, True, True, False])
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, {"0.weight": keep}, matches, prune_bias=False)
    prelu = pruned[1]
    assert isinstance(prelu, nn.PReLU) and prelu.num_parameters == 3
    torch.testing.assert_close(prelu.weight, model.get_parameter("1.weight")[keep])
    x = torch.randn(4, 3)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, {"0.weight": keep}, matches, prune_bias=False), (x,))
    torch.testing.assert_close(pruned(x), expected)


@pytest.mark.parametrize("prune_bias", [True, False])
def test_padded_average_pool_refuses_a_non_zero_carried_constant(prune_bias: bool) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.AvgPool2d(2, padding=1), nn.Conv2d(4, 2, 3))
    keep = {"0.weight": torch.tensor([True, False, True, True])}
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    # sigmoid(0) = 0.5 still flows from removed channels even when their bias goes
    with pytest.raises(fprune.PruneError, match=r"non-zero constant through AvgPool2d with padding=1 and count_include_pad=True"):
        fprune.apply_prune(model, keep, matches, prune_bias=prune_bias)


def test_padded_average_pool_is_fine_when_nothing_is_carried() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2, padding=1), nn.Conv2d(4, 2, 3))
    keep = {"0.weight": torch.tensor([True, False, True, True])}
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, keep, matches)
    x = torch.randn(2, 1, 10, 10)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, keep, matches), (x,))
    torch.testing.assert_close(pruned(x), expected)


def test_grouped_and_depthwise_convs_are_refused_by_chains() -> None:
    keep = {"weight": torch.tensor([True, False, True, True])}
    with pytest.raises(fprune.PruneError, match=r"consumer has groups=4 \(grouped / depthwise\)"):
        fprune.patterns.prune_conv2d_conv2d([nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=4)], keep, prune_bias=True)
    with pytest.raises(fprune.PruneError, match=r"producer has groups=2"):
        fprune.patterns.prune_conv2d_conv2d([nn.Conv2d(2, 4, 1, groups=2), nn.Conv2d(4, 4, 3)], keep, prune_bias=True)


def test_layernorm_is_not_a_pass_through_op() -> None:
    keep = {"weight": torch.tensor([True, False, True, True])}
    with pytest.raises(fprune.PruneError, match=r"LayerNorm normalizes across channels"):
        fprune.patterns.prune_chain([nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 2)], keep, prune_bias=True)


def test_stateful_unknown_op_is_refused() -> None:
    keep = {"weight": torch.tensor([True, False, True, True])}
    with pytest.raises(fprune.PruneError, match=r"Linear has parameters or buffers that fprune cannot slice"):
        fprune.patterns.prune_chain([nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 2)], keep, prune_bias=True)


def test_output_chain_keeps_the_consumer_free() -> None:
    conv = nn.Conv2d(1, 4, 3)
    new = fprune.patterns.prune_conv2d([conv, OUTPUT], {"weight": torch.tensor([True, False, True, True])}, prune_bias=True)
    assert new[1] is None and isinstance(new[0], nn.Conv2d) and new[0].out_channels == 3


def test_rebuild_module_replaces_only_what_it_is_given() -> None:
    linear = nn.Linear(3, 4, bias=False)
    linear.weight.requires_grad_(False)
    new = fprune.patterns.rebuild_module(linear, {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}, out_features=2)
    assert new.out_features == 2 and linear.out_features == 4
    assert linear.get_parameter("weight").shape == (4, 3) and "bias" not in dict(linear.named_parameters())
    assert isinstance(new.get_parameter("bias"), nn.Parameter) and not new.weight.requires_grad
    assert new.weight.data_ptr() != linear.weight.data_ptr()


# --- LSTM -----------------------------------------------------------------------------------------


def _lstm_masks(model: LSTMNet, level: float) -> dict[str, Tensor]:
    return {
        f"lstm.weight_ih_l{layer}": fprune.lstm_saliency_mask(model.lstm.get_parameter(f"weight_ih_l{layer}"), level)
        for layer in range(model.lstm.num_layers)
    }


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lstm_pruned_equals_masked_over_long_sequences(layers: int) -> None:
    torch.manual_seed(5)
    model = LSTMNet(layers=layers)
    masks = _lstm_masks(model, 0.5)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, masks, matches)
    lstm = pruned.get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM) and lstm.hidden_size == 4
    assert lstm.get_parameter("weight_hh_l0").shape == (16, 4)
    x = torch.randn(3, 7, 5)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, matches), (x,))
    torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-6)


def test_lstm_layernorm_normalizes_over_the_kept_units() -> None:
    torch.manual_seed(6)
    model = LSTMNet(layers=1, norm=True)
    masks = _lstm_masks(model, 0.5)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, masks, matches)
    norm = pruned.get_submodule("norm")
    assert isinstance(norm, nn.LayerNorm) and norm.normalized_shape == (4,)
    units = masks["lstm.weight_ih_l0"][:8]
    x = torch.randn(2, 6, 5)
    lstm_params = {
        name.removeprefix("lstm."): value
        for name, value in fprune.masked_parameters(model, masks, matches).items()
        if name.startswith("lstm.")
    }
    with torch.no_grad():
        hidden = functional_call(model.lstm, lstm_params, (x,))[0][..., units]
        norm = model.norm
        assert isinstance(norm, nn.LayerNorm)
        normed = F.layer_norm(hidden, (4,), norm.weight[units], norm.bias[units], norm.eps)
        expected = normed @ model.linear.weight[:, units].T + model.linear.bias
    torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-6)


_GATES_DIFFER = torch.cat([torch.tensor([True] * 7 + [False]), torch.tensor([False] + [True] * 7), torch.ones(16, dtype=torch.bool)])


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"weight_ih_l0": _GATES_DIFFER}, r"keep-mask for LSTM weight_ih_l0 differs between its 4 gates"),
        ({"weight_hh_l1": _GATES_DIFFER}, r"keep-mask for LSTM weight_hh_l1 differs between its 4 gates"),
        (
            {"weight_ih_l0": torch.tensor([True] * 6 + [False] * 2).repeat(4), "weight_hh_l0": torch.tensor([False] * 2 + [True] * 6).repeat(4)},
            r"keep different hidden units",
        ),
        (
            {"weight_ih_l0": torch.tensor([True] * 6 + [False] * 2).repeat(4), "weight_ih_l1": torch.tensor([True] * 4 + [False] * 4).repeat(4)},
            r"must keep the same number of units, got \[6, 4\]",
        ),
    ],
)
def test_lstm_mask_errors(masks: dict[str, Tensor], message: str) -> None:
    model = LSTMNet(layers=2)
    ops: list[fprune.patterns.Op] = [model.lstm, Call(operator.getitem, (0,)), model.linear]
    with pytest.raises(fprune.PruneError, match=message):
        fprune.patterns.prune_lstm_output_linear(ops, masks, prune_bias=True)


def test_lstm_refuses_to_carry_biases() -> None:
    model = LSTMNet(layers=1)
    keep = {"weight_ih_l0": torch.tensor([True] * 6 + [False] * 2).repeat(4)}
    with pytest.raises(fprune.PruneError, match=r"bias_ih_l0 is non-zero on removed units.*use prune_bias=True"):
        fprune.patterns.prune_lstm_output_linear([model.lstm, Call(operator.getitem, (0,)), model.linear], keep, prune_bias=False)


def test_lstm_state_may_be_returned_and_shrinks() -> None:
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 6)
            self.linear = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            out, state = self.lstm(x)
            return self.linear(out), state

    model = WithState()
    masks = {"lstm.weight_ih_l0": fprune.lstm_saliency_mask(model.lstm.get_parameter("weight_ih_l0"), 0.5)}
    pruned = fprune.apply_prune(model, masks, fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns()))
    _, (h, c) = pruned(torch.randn(4, 1, 3))
    assert h.shape == (1, 1, 3) and c.shape == (1, 1, 3)
    assert copy.deepcopy(pruned)(torch.randn(2, 1, 3))[0].shape == (2, 1, 2)


def test_hidden_layers_are_cut_by_rows_and_columns_in_one_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply_prune defers a hidden layer's row cut to the chain that cuts its columns: each
    hidden weight is gathered once (no half-cut copy), and the result is still exact."""
    from fprune._util.gather import take_rows_columns as gather
    from fprune.patterns import _functions as _prune_functions

    calls: list[tuple[int, ...]] = []

    def counting(t: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return gather(t, rows, columns)

    monkeypatch.setattr(_prune_functions, "take_rows_columns", counting)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {f"{i}.weight": torch.rand(n) > 0.4 for i, n in ((0, 8), (2, 7), (4, 5))}
    for mask in masks.values():
        mask[0] = True
    x = torch.randn(3, 6, dtype=torch.float64)
    for prune_bias in (True, False):  # sigmoid(0) != 0: the fold runs on the deferred rows too
        calls.clear()
        pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
        assert calls == [(5, 7), (7, 8)]  # layers 4 and 2, consumers first; layer 0 has no columns cut
        with torch.no_grad():
            expected = functional_call(model, fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
            torch.testing.assert_close(pruned(x), expected)


def test_a_deferred_row_cut_left_pending_is_done_at_the_end() -> None:
    from fprune.patterns._functions import (
        cut_pending_rows,
        deferred_rows,
        prune_deferring,
    )

    torch.manual_seed(0)
    layer = nn.Linear(4, 6)
    keep = torch.tensor([True, False, True, True, False, True])
    state = deferred_rows({id(layer.weight)})
    (new, _) = prune_deferring(fprune.patterns.prune_chain, (layer, OUTPUT), {"weight": keep}, prune_bias=True, deferred=state)
    assert new is not None and state.pending  # nothing consumed it: its rows are still to cut
    done = cut_pending_rows(new, state)
    assert isinstance(done, nn.Linear) and done.out_features == 4 and not state.pending
    assert torch.equal(done.weight, layer.weight[keep]) and done.weight.data_ptr() != layer.weight.data_ptr()


def test_public_prune_functions_give_the_same_result_inside_apply_prune() -> None:
    """No hidden state: a public prune function called while apply_prune runs (here from a custom
    prune function, on a producer whose row cut apply_prune defers) returns what it returns
    outside, with its rows cut, and apply_prune's own result stays exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    masks = {f"{i}.weight": torch.rand(n) > 0.4 for i, n in ((0, 8), (2, 7), (4, 5))}
    for mask in masks.values():
        mask[0] = True
    inner_ops = (model[2], model[3], model[4])
    inside: list[tuple[nn.Module | None, ...]] = []

    def custom(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
        inside.append(fprune.patterns.prune_linear_activation_linear(inner_ops, {"weight": masks["2.weight"]}, prune_bias=True))
        return fprune.patterns.prune_linear_activation_linear(ops, keep, prune_bias=prune_bias)

    patterns = fprune.default_patterns()
    patterns[(nn.Linear, nn.Tanh, nn.Linear)] = custom
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)
    assert [m.prune_fn for m in matches][:3] == [fprune.patterns.prune_linear_activation_linear, fprune.patterns.prune_linear_activation_linear, custom]
    pruned = fprune.apply_prune(model, masks, matches)
    outside = fprune.patterns.prune_linear_activation_linear(inner_ops, {"weight": masks["2.weight"]}, prune_bias=True)
    (got,) = inside
    assert len(got) == len(outside) == 3
    for a, b in zip(got, outside):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()
            for name, tensor in a.state_dict().items():
                assert torch.equal(tensor, b.state_dict()[name]), name
    first = got[0]
    assert isinstance(first, nn.Linear) and first.out_features == first.weight.shape[0] == int(masks["2.weight"].sum())
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, matches), (x,))
        torch.testing.assert_close(pruned(x), expected)


def test_prune_functions_module_holds_no_context_state() -> None:
    """The deferral state is an explicit argument of apply_prune's private path, not a ContextVar."""
    from contextvars import ContextVar

    from fprune.patterns import _functions as _prune_functions

    assert not [name for name, value in vars(_prune_functions).items() if isinstance(value, ContextVar)]
