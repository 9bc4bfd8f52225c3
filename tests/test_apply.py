"""apply_prune and masked_parameters: exact, pure, state-preserving, loud on bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune

from .models import Branching, ConvBNNet, HardCodedView, ReferenceMLP, TwiceCalled


def _all_weight_masks(model: nn.Module, level: float = 0.5) -> dict[str, Tensor]:
    return {
        fqn: fprune.saliency_mask(w, level)
        for fqn, w in model.named_parameters()
        if fqn.endswith("weight") and w.dim() > 1
    }


def _prune(model: nn.Module, masks: dict[str, Tensor], prune_bias: bool = True) -> nn.Module:
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    return fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)


def _snapshot(model: nn.Module) -> dict[str, tuple[int, Tensor]]:
    state = {f"p:{k}": (id(v), v.detach().clone()) for k, v in model.named_parameters()}
    state.update({f"b:{k}": (id(v), v.clone()) for k, v in model.named_buffers()})
    state.update({f"m:{k}": (id(m), torch.tensor(0)) for k, m in model.named_modules()})
    return state


def _assert_unchanged(model: nn.Module, before: dict[str, tuple[int, Tensor]]) -> None:
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for key, (ident, value) in before.items():
        assert after[key][0] == ident, f"{key} was replaced"
        assert torch.equal(after[key][1], value), f"{key} changed value"


def test_reference_mlp_prunes_to_the_documented_shapes_and_count() -> None:
    torch.manual_seed(0)
    model = ReferenceMLP()
    assert sum(p.numel() for p in model.parameters()) == 1233500
    pruned = _prune(model, _all_weight_masks(model))
    shapes = {k: tuple(v.shape) for k, v in pruned.named_parameters()}
    assert shapes == {
        "seq.0.weight": (250, 700),
        "seq.0.bias": (250,),
        "seq.2.weight": (400, 250),
        "seq.4.weight": (300, 400),
        "seq.4.bias": (300,),
        "linear.weight": (2, 300),
    }
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


def test_input_model_is_left_exactly_as_it_was() -> None:
    torch.manual_seed(3)
    model = ConvBNNet()
    calls: list[int] = []
    handle = model.conv2.register_forward_hook(lambda m, i, o: calls.append(1))
    model.eval()
    before = _snapshot(model)
    hooks_before = dict(model.conv2._forward_hooks)
    masks = _all_weight_masks(model)
    pruned = _prune(model, masks, prune_bias=False)
    _assert_unchanged(model, before)
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
    before = _snapshot(model)
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
    _assert_unchanged(model, before)


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
        (torch.ones(500, dtype=torch.bool, device="meta"), r"mask for `seq.0.weight` is on meta, but the tensor is on cpu"),
        ([True] * 500, r"mask for `seq.0.weight` is a list; expected a torch.bool tensor"),
    ],
)
def test_bad_masks_raise_prune_error_naming_the_fqn(mask: object, message: str) -> None:
    model = ReferenceMLP()
    before = _snapshot(model)
    with pytest.raises(fprune.PruneError, match=message):
        fprune.apply_prune(model, {"seq.0.weight": mask}, _matches(model))  # type: ignore[dict-item]
    with pytest.raises(fprune.PruneError, match=message):
        fprune.masked_parameters(model, {"seq.0.weight": mask})  # type: ignore[dict-item]
    _assert_unchanged(model, before)


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
    with pytest.raises(fprune.PruneError, match=r"`fc1` \(Linear\): no pattern continues with `view` \(method .view\(\)\)"):
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
    model = ConvBNNet(padding=1)
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
