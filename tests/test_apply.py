"""apply_prune and masked_parameters: exact, pure, state-preserving, loud on bad input."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune

from .models import (
    REFERENCE_PRUNED_SHAPES,
    Branching,
    ConvBNNet,
    HardCodedView,
    ReferenceMLP,
    TwiceCalled,
)
from .purity import assert_unchanged, snapshot


def _all_weight_masks(model: nn.Module, level: float = 0.5) -> dict[str, Tensor]:
    return {
        fqn: fprune.saliency_mask(w, level)
        for fqn, w in model.named_parameters()
        if fqn.endswith("weight") and w.dim() > 1
    }


def _prune(model: nn.Module, masks: dict[str, Tensor], prune_bias: bool = True) -> nn.Module:
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    return fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)


def test_reference_mlp_prunes_to_the_documented_shapes_and_count() -> None:
    torch.manual_seed(0)
    model = ReferenceMLP()
    assert sum(p.numel() for p in model.parameters()) == 1233500
    pruned = _prune(model, _all_weight_masks(model))
    shapes = {k: tuple(v.shape) for k, v in pruned.named_parameters()}
    assert shapes == REFERENCE_PRUNED_SHAPES
    assert sum(p.numel() for p in pruned.parameters()) == 396150
    assert type(pruned) is ReferenceMLP
    seq = list(pruned.get_submodule("seq").children())
    assert [getattr(m, "out_features", None) for m in seq] == [250, None, 400, None, 300, None]
    assert [getattr(m, "in_features", None) for m in seq] == [700, None, 250, None, 400, None]


@pytest.mark.parametrize("prune_bias", [True, False])
def test_reference_mlp_pruned_equals_masked_original(prune_bias: bool) -> None:
    torch.manual_seed(1)
    model = ReferenceMLP()
    masks = _all_weight_masks(model)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    x = torch.randn(8, 700)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
    torch.testing.assert_close(pruned(x), expected[:, masks["linear.weight"]], rtol=1e-5, atol=1e-6)


def test_prune_bias_false_folds_the_removed_bias_into_the_next_layer() -> None:
    torch.manual_seed(2)
    model = ReferenceMLP()
    masks = _all_weight_masks(model)
    kept = _prune(model, masks, prune_bias=True)
    folded = _prune(model, masks, prune_bias=False)
    # seq.2 had no bias: the folded copy has one, carrying relu(bias) of seq.0's removed rows.
    assert kept.get_submodule("seq.2").bias is None
    bias = folded.get_submodule("seq.2").bias
    assert isinstance(bias, Tensor)
    w2 = model.get_parameter("seq.2.weight").detach()[masks["seq.2.weight"]]
    b0 = model.get_submodule("seq.0").bias
    assert isinstance(b0, Tensor)
    removed = ~masks["seq.0.weight"]
    torch.testing.assert_close(bias.detach(), w2[:, removed] @ torch.relu(b0.detach()[removed]))


def test_very_long_chains_prune_without_recursion_limits() -> None:
    torch.manual_seed(9)
    layers: list[nn.Module] = []
    for _ in range(1200):
        layers += [nn.Linear(3, 3), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(3, 2))
    keep = torch.tensor([True, False, True])
    masks = {f"{2 * i}.weight": keep for i in range(1200)}
    pruned = fprune.apply_prune(model, masks, _matches(model), prune_bias=False)
    x = torch.randn(2, 3)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, _matches(model), prune_bias=False), (x,))
    torch.testing.assert_close(pruned(x), expected)


def test_input_model_is_left_exactly_as_it_was() -> None:
    torch.manual_seed(3)
    model = ConvBNNet()
    calls: list[int] = []
    handle = model.conv2.register_forward_hook(lambda m, i, o: calls.append(1))
    model.eval()
    before = snapshot(model)
    hooks_before = dict(model.conv2._forward_hooks)
    masks = _all_weight_masks(model)
    pruned = _prune(model, masks, prune_bias=False)
    assert_unchanged(model, before)
    assert dict(model.conv2._forward_hooks) == hooks_before
    assert model.conv1.out_channels == 8 and model.bn1.num_features == 8
    assert not model.training
    # no tensor of the copy is shared with the original
    original_ids = {id(t) for t in model.parameters()} | {t.data_ptr() for t in model.parameters()}
    for t in pruned.parameters():
        assert id(t) not in original_ids and t.data_ptr() not in original_ids
    handle.remove()


def test_pruned_copy_keeps_mode_dtype_device_requires_grad_and_has_no_parametrizations() -> None:
    torch.manual_seed(4)
    model = ConvBNNet().double()
    model.conv1.weight.requires_grad_(False)
    model.eval()
    masks = {"conv1.weight": fprune.saliency_mask(model.conv1.weight, 0.5)}
    pruned = _prune(model, masks)
    assert not pruned.training and all(not m.training for m in pruned.modules())
    assert all(p.dtype == torch.float64 for p in pruned.parameters())
    assert not pruned.get_submodule("conv1").weight.requires_grad
    assert pruned.get_submodule("conv2").weight.requires_grad
    for module in pruned.modules():
        assert not torch.nn.utils.parametrize.is_parametrized(module)
        assert not module._forward_hooks and not module._forward_pre_hooks
    bn = pruned.get_submodule("bn1")
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.num_features == 4 and bn.running_mean is not None and bn.running_mean.shape == (4,)


def test_batchnorm_chain_is_exact_in_train_mode_with_prune_bias() -> None:
    torch.manual_seed(5)
    model = ConvBNNet().train()
    masks = {"conv1.weight": fprune.saliency_mask(model.conv1.weight, 0.5), "conv2.weight": fprune.fpgm_mask(model.conv2.weight, 0.25)}
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, masks, matches)
    x = torch.randn(4, 3, 14, 14)
    masked = copy.deepcopy(model)
    expected = functional_call(masked, fprune.masked_parameters(model, masks, matches), (x,))
    torch.testing.assert_close(pruned(x), expected, rtol=1e-4, atol=1e-5)


def test_masked_parameters_are_differentiable_and_leave_the_model_alone() -> None:
    torch.manual_seed(6)
    model = ReferenceMLP()
    before = snapshot(model)
    masks = _all_weight_masks(model)
    params = fprune.masked_parameters(model, masks)
    assert params.keys() == dict(model.named_parameters()).keys()
    loss = functional_call(model, params, (torch.randn(3, 700),)).sum()
    loss.backward()
    grad = model.get_submodule("seq.0").weight.grad
    assert isinstance(grad, Tensor)
    assert torch.all(grad[~masks["seq.0.weight"]] == 0)
    assert torch.any(grad[masks["seq.0.weight"]] != 0)
    assert torch.all(params["seq.0.bias"][~masks["seq.0.weight"]] == 0)
    model.zero_grad()
    assert_unchanged(model, before)


def test_masked_parameters_keep_biases_and_batchnorm_without_prune_bias() -> None:
    torch.manual_seed(7)
    model = ConvBNNet()
    masks = {"conv1.weight": fprune.saliency_mask(model.conv1.weight, 0.5)}
    with_bias = fprune.masked_parameters(model, masks)
    without = fprune.masked_parameters(model, masks, prune_bias=False)
    removed = ~masks["conv1.weight"]
    assert torch.all(with_bias["conv1.bias"][removed] == 0) and torch.all(with_bias["bn1.weight"][removed] == 0)
    assert torch.equal(without["conv1.bias"], model.conv1.bias)  # type: ignore[arg-type]
    assert torch.equal(without["bn1.weight"], model.bn1.weight)


# --- errors -------------------------------------------------------------------------------------


def _matches(model: nn.Module) -> tuple[fprune.Match, ...]:
    return fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(500), r"mask for `seq.0.weight` has dtype torch.float32; expected torch.bool"),
        (torch.ones(500, dtype=torch.int64), r"has dtype torch.int64; expected torch.bool"),
        (torch.ones(400, dtype=torch.bool), r"mask for `seq.0.weight` has shape \(400,\), expected \(500,\)"),
        (torch.ones(500, 1, dtype=torch.bool), r"has shape \(500, 1\), expected \(500,\)"),
        (torch.zeros(500, dtype=torch.bool), r"mask for `seq.0.weight` is all False"),
        (torch.ones(500, dtype=torch.bool, device="meta"), r"mask for `seq.0.weight` is on the meta device and has no values; give keep-masks as CPU"),
        ([True] * 500, r"mask for `seq.0.weight` is a list; expected a torch.bool tensor"),
    ],
)
def test_bad_masks_raise_prune_error_naming_the_fqn(mask: object, message: str) -> None:
    model = ReferenceMLP()
    before = snapshot(model)
    with pytest.raises(fprune.PruneError, match=message):
        fprune.apply_prune(model, {"seq.0.weight": mask}, _matches(model))  # type: ignore[dict-item]
    with pytest.raises(fprune.PruneError, match=message):
        fprune.masked_parameters(model, {"seq.0.weight": mask})  # type: ignore[dict-item]
    assert_unchanged(model, before)


def test_unknown_fqn_is_named_with_close_names() -> None:
    model = ReferenceMLP()
    with pytest.raises(fprune.PruneError, match=r"mask for `seq.9.weight`: the model has no parameter of that name; tensors with that name: seq.0.weight"):
        fprune.apply_prune(model, {"seq.9.weight": torch.ones(3, dtype=torch.bool)}, _matches(model))


def test_mask_on_a_bias_says_to_key_by_the_weight() -> None:
    model = ReferenceMLP()
    with pytest.raises(fprune.PruneError, match=r"mask for `seq.0.bias`: the tensor has 1 dim"):
        fprune.apply_prune(model, {"seq.0.bias": torch.ones(500, dtype=torch.bool)}, _matches(model))


def test_mask_for_a_producer_feeding_a_residual_add_is_refused_with_the_reason() -> None:
    model = Branching()
    matches = _matches(model)
    assert [m.weight_fqn for m in matches] == ["fc3.weight", "fc4.weight"]
    keep = torch.tensor([True, False] * 3)
    with pytest.raises(fprune.PruneError, match=r"mask for `fc1.weight`: no match prunes it: `fc1` \(Linear\): its output `fc1` has 2 users .*feeds a residual add"):
        fprune.apply_prune(model, {"fc1.weight": keep}, matches)
    with pytest.raises(fprune.PruneError, match=r"mask for `fc2.weight`: no match prunes it: .*feeds a concat"):
        fprune.apply_prune(model, {"fc2.weight": keep}, matches)


def test_module_called_twice_is_refused() -> None:
    model = TwiceCalled()
    matches = _matches(model)
    assert [m.weight_fqn for m in matches] == ["out.weight"]
    with pytest.raises(fprune.PruneError, match=r"`fc` \(Linear\): module `fc` is called 2 times in forward"):
        fprune.apply_prune(model, {"fc.weight": torch.ones(6, dtype=torch.bool)}, matches)


def test_hard_coded_view_stops_the_chain_and_is_named() -> None:
    model = HardCodedView()
    with pytest.raises(fprune.PruneError, match=r"`fc1` \(Linear\): no pattern continues with `view`: method .view\(\)"):
        fprune.apply_prune(model, {"fc1.weight": torch.ones(8, dtype=torch.bool)}, _matches(model))


def test_matches_from_another_model_are_refused() -> None:
    with pytest.raises(fprune.PruneError, match=r"the model has no Linear at `seq.0`"):
        fprune.apply_prune(ConvBNNet(), {}, _matches(ReferenceMLP()))


def test_parametrized_model_is_refused() -> None:
    model = ReferenceMLP()
    torch.nn.utils.parametrize.register_parametrization(model.get_submodule("seq.0"), "weight", nn.Identity())
    with pytest.raises(fprune.PruneError, match=r"module `seq.0` carries torch.nn.utils.parametrize parametrizations"):
        fprune.apply_prune(model, {}, ())


def test_shared_parameter_is_refused() -> None:
    model = ReferenceMLP()
    model.get_submodule("seq.4").weight = model.get_parameter("seq.2.weight")
    with pytest.raises(fprune.PruneError, match=r"mask for `seq.2.weight`: the parameter is shared with seq.4.weight"):
        fprune.apply_prune(model, {"seq.2.weight": torch.ones(800, dtype=torch.bool)}, ())


def test_zero_padded_consumer_with_a_carried_bias_is_refused_not_left_unshrunk() -> None:
    torch.manual_seed(8)
    model = ConvBNNet(padding=1).eval()  # BatchNorm with running statistics passes the bias on
    masks = {"conv1.weight": fprune.saliency_mask(model.conv1.weight, 0.5)}
    with pytest.raises(fprune.PruneError, match=r"pruning `conv1.weight` .*zero-padded Conv2d \(padding=\(1, 1\)\).*use prune_bias=True"):
        _prune(model, masks, prune_bias=False)
    assert _prune(model, masks, prune_bias=True).get_submodule("conv2").in_channels == 4


def test_mask_without_matches_names_the_fqn() -> None:
    model = ReferenceMLP()
    with pytest.raises(fprune.PruneError, match=r"mask for `linear.weight`: no match prunes it: a pattern matches `linear` but it is not among the matches given"):
        fprune.apply_prune(model, {"linear.weight": torch.ones(4, dtype=torch.bool)}, ())


def test_apply_prune_rejects_non_match_records() -> None:
    with pytest.raises(fprune.PruneError, match=r"matches must be fprune.Match records"):
        fprune.apply_prune(ReferenceMLP(), {}, ["seq.0"])  # type: ignore[list-item]


# --- properties over random shapes and masks -----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ACTIVATIONS: list[type[nn.Module]] = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Softplus]


def _mask(draw: st.DrawFn, rows: int) -> Tensor:
    kind = draw(st.sampled_from(["random", "keep-one", "keep-all"]))
    if kind == "keep-all":
        return torch.ones(rows, dtype=torch.bool)
    if kind == "keep-one":
        keep = torch.zeros(rows, dtype=torch.bool)
        keep[draw(st.integers(0, rows - 1))] = True
        return keep
    bits = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    keep = torch.tensor(bits, dtype=torch.bool)
    if not keep.any():
        keep[0] = True
    return keep


@st.composite
def _mlps(draw: st.DrawFn) -> tuple[nn.Sequential, dict[str, Tensor], bool]:
    torch.manual_seed(draw(st.integers(0, 2**16)))  # weights follow the example, so failures replay
    widths = draw(st.lists(st.integers(1, 9), min_size=2, max_size=5))
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=draw(st.booleans())))
        if index < len(widths) - 2:
            if draw(st.booleans()):
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(draw(st.sampled_from(_ACTIVATIONS))())
            if draw(st.booleans()):
                layers.append(nn.Dropout(0.3))
    model = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)
    masks = {
        f"{i}.weight": _mask(draw, m.out_features)
        for i, m in enumerate(model)
        if isinstance(m, nn.Linear) and draw(st.booleans())
    }
    return model, masks, draw(st.booleans())


@settings(max_examples=100, deadline=None)
@given(_mlps())
def test_random_mlps_prune_exactly_and_leave_the_input_alone(case: tuple[nn.Sequential, dict[str, Tensor], bool]) -> None:
    model, masks, prune_bias = case
    before = snapshot(model)
    matches = _matches(model)
    pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    assert_unchanged(model, before)
    first = model[0]
    assert isinstance(first, nn.Linear)
    _assert_exact(model, pruned, masks, matches, prune_bias, torch.randn(5, first.in_features, dtype=torch.float64))
    for fqn, keep in masks.items():
        layer = pruned.get_submodule(fqn.removesuffix(".weight"))
        assert isinstance(layer, nn.Linear) and layer.out_features == int(keep.sum())


@st.composite
def _convnets(draw: st.DrawFn) -> tuple[nn.Sequential, dict[str, Tensor], bool]:
    torch.manual_seed(draw(st.integers(0, 2**16)))
    channels = draw(st.lists(st.integers(1, 6), min_size=3, max_size=4))
    layers: list[nn.Module] = []
    for index, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
        padding = draw(st.sampled_from([0, 1]))
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=draw(st.booleans())))
        if index < len(channels) - 2:
            if draw(st.booleans()):
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(draw(st.sampled_from(_ACTIVATIONS))())
            if draw(st.booleans()):
                layers.append(draw(st.sampled_from([nn.MaxPool2d(2, padding=1), nn.AvgPool2d(2, padding=1), nn.AvgPool2d(2)])))
    model = nn.Sequential(*layers).double().eval()
    masks = {
        f"{i}.weight": _mask(draw, m.out_channels)
        for i, m in enumerate(model)
        if isinstance(m, nn.Conv2d) and draw(st.booleans())
    }
    return model, masks, draw(st.booleans())


@settings(max_examples=100, deadline=None)
@given(_convnets())
def test_random_convnets_prune_exactly_or_refuse_for_a_stated_reason(case: tuple[nn.Sequential, dict[str, Tensor], bool]) -> None:
    model, masks, prune_bias = case
    before = snapshot(model)
    matches = _matches(model)
    try:
        pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    except fprune.PruneError as error:
        # the only refusal here: a non-zero constant meeting zero padding
        assert "zero-padded" in str(error) or "count_include_pad=True" in str(error), str(error)
        assert_unchanged(model, before)
        return
    assert_unchanged(model, before)
    first = model[0]
    assert isinstance(first, nn.Conv2d)
    _assert_exact(model, pruned, masks, matches, prune_bias, torch.randn(2, first.in_channels, 24, 24, dtype=torch.float64))


def _assert_exact(
    model: nn.Sequential, pruned: nn.Module, masks: dict[str, Tensor], matches: tuple[fprune.Match, ...], prune_bias: bool, x: Tensor
) -> None:
    """`pruned(x)` equals the masked model's output (without the removed output channels)."""
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
        got = pruned(x)
    last = f"{len(model) - 1}.weight"
    if last in masks:
        expected = expected[:, masks[last]]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


# --- unfoldable="keep": producers whose constant cannot be folded stay full size, exactly -------


def _keep_prune(model: nn.Module, masks: dict[str, Tensor], prune_bias: bool) -> tuple[Any, str]:
    """apply_prune(..., unfoldable="keep") and the text of the warning it gave ("" if none);
    the model as ``Any``, for reading the pruned layers' attributes."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = fprune.apply_prune(model, masks, _matches(model), prune_bias=prune_bias, unfoldable="keep")
    assert len(caught) <= 1 and all(w.category is UserWarning for w in caught)
    return pruned, str(caught[0].message) if caught else ""


def _masked_output(model: nn.Module, masks: dict[str, Tensor], prune_bias: bool, x: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = functional_call(model, fprune.masked_parameters(model, masks, _matches(model), prune_bias=prune_bias), (x,))
    return out


def _assert_unshrunk(model: nn.Module, pruned: nn.Module, fqn: str, mask: Tensor, *, bias_kept: bool = True) -> None:
    """`fqn` keeps all its rows, the removed ones zero, the kept ones (and the bias) as they were."""
    weight, original = pruned.get_parameter(fqn).detach(), model.get_parameter(fqn).detach()
    assert weight.shape == original.shape
    assert not bool(weight[~mask].any())
    torch.testing.assert_close(weight[mask], original[mask], rtol=0, atol=0)
    bias_fqn = fqn.removesuffix("weight") + "bias"
    bias, original_bias = pruned.get_parameter(bias_fqn).detach(), model.get_parameter(bias_fqn).detach()
    torch.testing.assert_close(bias, original_bias if bias_kept else original_bias * mask, rtol=0, atol=0)


def _padded_convnet() -> nn.Sequential:
    """a -> relu -> b (no pad) -> relu -> c (pad) -> relu -> d (pad): b and c feed padded convs."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)
    ).double().eval()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Conv2d):
                module.bias.uniform_(0.1, 1.0)  # type: ignore[union-attr]  # positive: ReLU passes every removed bias on
    return model


PADDED_MASKS = {
    "0.weight": torch.tensor([True, False, True, False, True, True]),
    "2.weight": torch.tensor([False, True, True, False, True, True]),
    "4.weight": torch.tensor([True, True, False, True, False, True]),
    "6.weight": torch.tensor([True, False, True, True]),
}


def test_keep_leaves_producers_before_padded_convs_unshrunk_and_stays_exact() -> None:
    """b (row cut deferred to a's chain) and c stay full size with zeroed rows, their biases
    whole; a's constant is still folded into b's (full) bias; a and d shrink."""
    model = _padded_convnet()
    before = snapshot(model)
    with pytest.raises(fprune.PruneError, match=r"pruning `4.weight` .*zero-padded Conv2d.*use prune_bias=True"):
        _prune(model, PADDED_MASKS, prune_bias=False)
    pruned, warning = _keep_prune(model, PADDED_MASKS, prune_bias=False)
    assert_unchanged(model, before)

    assert warning.startswith("apply_prune: left 2 producer(s) unshrunk (unfoldable='keep')")
    assert "`2.weight` (chain _2 -> _3 -> _4: zero-padded Conv2d consumer)" in warning and "`4.weight`" in warning
    assert warning.endswith("the result is still exact. Pass prune_bias=True for them to shrink them")
    assert pruned[0].out_channels == 4 and pruned[2].in_channels == 4
    assert pruned[2].out_channels == 6 and pruned[4].in_channels == 6 and pruned[4].out_channels == 6 and pruned[6].in_channels == 6
    assert pruned[6].out_channels == 3
    weight = pruned[2].weight.detach()
    assert not bool(weight[~PADDED_MASKS["2.weight"]].any())
    _assert_unshrunk(model, pruned, "4.weight", PADDED_MASKS["4.weight"])
    x = torch.randn(2, 2, 10, 10, dtype=torch.float64)
    expected = _masked_output(model, PADDED_MASKS, False, x)[:, PADDED_MASKS["6.weight"]]
    torch.testing.assert_close(pruned(x), expected, rtol=1e-9, atol=1e-10)


def test_keep_a_producer_whose_consumer_shrinks_later() -> None:
    """a feeds a padded b; b's own chain shrinks b's rows first (deferred to the cut of its
    columns by a's chain). a's chain is refused half-way and kept: b's rows are still cut."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.Tanh(), nn.Conv2d(5, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 3, 3)).double().eval()
    masks = {"0.weight": torch.tensor([True, False, True, True, False]), "2.weight": torch.tensor([True, False, False, True, True, True])}
    pruned, warning = _keep_prune(model, masks, prune_bias=False)
    assert "`0.weight`" in warning and "`2.weight`" not in warning
    _assert_unshrunk(model, pruned, "0.weight", masks["0.weight"])
    assert tuple(pruned[2].weight.shape) == (4, 5, 3, 3) and tuple(pruned[4].weight.shape) == (3, 4, 3, 3)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), _masked_output(model, masks, False, x), rtol=1e-9, atol=1e-10)


def test_keep_with_prune_bias_zeroes_the_bias_and_batchnorm_entries_too() -> None:
    """prune_bias=True with sigmoid(0) = 0.5 flowing into a padded conv: kept, its removed
    rows, bias entries and BatchNorm affine entries zeroed, as in the masked model."""
    torch.manual_seed(5)
    norm = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), norm, nn.Sigmoid(), nn.Conv2d(4, 3, 3, padding=1)).double().eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    masks = {"0.weight": torch.tensor([True, False, True, False])}
    pruned, warning = _keep_prune(model, masks, prune_bias=True)
    assert "`0.weight`" in warning and warning.endswith("An activation with act(0) = 0 before the padded layer would shrink them")
    _assert_unshrunk(model, pruned, "0.weight", masks["0.weight"], bias_kept=False)
    for name in ("weight", "bias"):
        torch.testing.assert_close(pruned[1].get_parameter(name).detach(), norm.get_parameter(name).detach() * masks["0.weight"])
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), _masked_output(model, masks, True, x), rtol=1e-9, atol=1e-10)


def test_keep_a_padded_average_pool_and_an_lstm_with_its_biases() -> None:
    torch.manual_seed(6)
    pooled = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(4, 3, 3)).double().eval()
    masks = {"0.weight": torch.tensor([True, False, False, True])}
    pruned, warning = _keep_prune(pooled, masks, prune_bias=False)
    assert "`0.weight` (chain _0 -> _1 -> _2: AvgPool2d with padding=1 and count_include_pad=True)" in warning
    _assert_unshrunk(pooled, pruned, "0.weight", masks["0.weight"])
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), _masked_output(pooled, masks, False, x), rtol=1e-9, atol=1e-10)

    from torch.testing._internal.common_pruning import LSTMLinearModel

    lstm_model = LSTMLinearModel(3, 4, 2, 2).double().eval()
    units = torch.tensor([True, False, True, True]).repeat(4)
    lstm_masks = {"lstm.weight_ih_l0": units, "lstm.weight_ih_l1": units}
    pruned, warning = _keep_prune(lstm_model, lstm_masks, prune_bias=False)
    assert "`lstm.weight_ih_l0` (chain lstm -> getitem -> linear: LSTM biases kept on removed units)" in warning
    assert "`lstm.weight_ih_l1`" in warning
    lstm = pruned.get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM) and lstm.hidden_size == 4
    assert all(w is getattr(lstm, n) for w, n in zip(lstm._flat_weights, lstm._flat_weights_names))
    for layer in (0, 1):
        for kind in ("ih", "hh"):
            assert not bool(lstm.get_parameter(f"weight_{kind}_l{layer}")[~units].any())
    sequence = torch.randn(6, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        got = pruned(sequence)
        expected = functional_call(lstm_model, fprune.masked_parameters(lstm_model, lstm_masks, _matches(lstm_model), prune_bias=False), (sequence,))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_keep_is_silent_when_everything_folds_and_checks_its_argument() -> None:
    model = ReferenceMLP()
    masks = _all_weight_masks(model)
    pruned, warning = _keep_prune(model, masks, prune_bias=False)
    assert warning == "" and pruned.get_submodule("seq.0").out_features == 250
    with pytest.raises(fprune.PruneError, match=r"apply_prune: `unfoldable` must be 'refuse' or 'keep', got 'skip'"):
        fprune.apply_prune(model, masks, _matches(model), unfoldable="skip")  # type: ignore[call-overload]
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    assert fprune.apply_prune(model, {"seq.0.weight": masks["seq.0.weight"]}, groups, unfoldable="keep").get_submodule("seq.0").out_features == 250


@settings(max_examples=100, deadline=None)
@given(_convnets())
def test_random_convnets_with_keep_always_prune_exactly(case: tuple[nn.Sequential, dict[str, Tensor], bool]) -> None:
    """Where the default refuses, unfoldable="keep" leaves exactly the warned-about producers
    full size, and the result is exact."""
    model, masks, prune_bias = case
    before = snapshot(model)
    pruned, warning = _keep_prune(model, masks, prune_bias)
    assert_unchanged(model, before)
    first = model[0]
    assert isinstance(first, nn.Conv2d)
    _assert_exact(model, pruned, masks, _matches(model), prune_bias, torch.randn(2, first.in_channels, 24, 24, dtype=torch.float64))
    for fqn, keep in masks.items():
        rows = pruned.get_parameter(fqn).shape[0]
        unshrunk = f"`{fqn}`" in warning
        assert rows == (keep.numel() if unshrunk else int(keep.sum())), (fqn, warning)
