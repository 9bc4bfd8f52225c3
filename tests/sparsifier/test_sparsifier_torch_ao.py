"""Differential tests: fprune.sparsifier against torch.ao's pruner, driven the same way.

Each test runs the same program twice: the same model, config and pruner, once with
``torch.ao.pruning._experimental.pruner`` and once with ``fprune.sparsifier`` (prepare, step,
prune). Where torch.ao is right, both choose the same masks and give pruned models with the same
parameters and outputs. The fprune model also equals its own prepared (masked) model.

Where torch.ao is wrong, the test asserts both behaviours. torch.ao follows only the first user
of a branching node, mutates the prepared model, leaves padded convs unshrunk, chooses LSTM gate
masks per gate, and drops a bias folded into a neighbour with another prune_bias. fprune is
exact or refuses at prepare. The models, helpers and the ``Any``-typed torch.ao handle come from
test_torch_ao_reference.py, which compares the functional core with torch.ao given the same
masks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

import fprune
from fprune.sparsifier import BaseStructuredSparsifier, FPGMPruner, LSTMSaliencyPruner, SaliencyPruner

from ..models import ReferenceMLP
from ..pipeline.test_torch_ao_reference import (
    AGREE,
    AO,
    CASES,
    NON_LSTM,
    Residual,
    assert_outputs_close,
    assert_same_parameters,
    build,
    max_difference,
    restrict,
    run,
    shapes,
)

Config = list[dict[str, object]]


def readme_update_mask(self: object, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
    """torch.ao README's ``SaliencyPruner.update_mask``, verbatim."""
    weights = getattr(module, tensor_name)
    mask = getattr(module.parametrizations, tensor_name)[0].mask
    saliency = -weights.norm(dim=tuple(range(1, weights.dim())), p=1)
    num_to_pick = int(len(mask) * kwargs["sparsity_level"])
    prune = saliency.topk(num_to_pick).indices
    mask.data[prune] = False


def drive(pruner: Any, model: nn.Module, config: Config) -> tuple[nn.Module, Any, dict[str, Tensor]]:
    """prepare / step / prune `pruner` on `model` (changed in place); returns the prepared
    model, the pruned one and the masks after step."""
    pruner.prepare(model, copy.deepcopy(config))
    pruner.enable_mask_update = True
    pruner.step()
    masks = {str(fqn): state["mask"].clone() for fqn, state in pruner.state.items()}
    return model, pruner.prune(), masks


def head_to_head_config(name: str, prune_bias: bool) -> Config:
    """torch.ao's default tensors for the case, less those no torch.ao pattern covers."""
    case, model, _ = build(name)
    pruner: Any = AO.SaliencyPruner({})
    pruner.make_config_from_model(model)
    fqns = [str(entry["tensor_fqn"]) for entry in pruner.config]
    return [{"tensor_fqn": fqn, "prune_bias": prune_bias} for fqn in fqns if fqn not in case.no_ao_pattern]


PRUNERS: dict[str, tuple[Callable[[], Any], Callable[[], BaseStructuredSparsifier]]] = {
    "saliency": (lambda: AO.SaliencyPruner({"sparsity_level": 0.5}), lambda: SaliencyPruner({"sparsity_level": 0.5})),
    "fpgm": (lambda: AO.FPGMPruner(0.3), lambda: FPGMPruner(0.3)),
    "fpgm-l1": (lambda: AO.FPGMPruner(0.5, dist=1), lambda: FPGMPruner(0.5, dist=1)),
}
NON_LSTM_AGREE = [(name, bias) for name, bias in AGREE if name in NON_LSTM]


# --------------------------------------------------------------------------------------------
# where torch.ao is right: same masks, same pruned model, same outputs
# --------------------------------------------------------------------------------------------


def test_readme_program_gives_torch_ao_s_model_with_396150_parameters() -> None:
    torch.manual_seed(0)
    model = ReferenceMLP().eval()
    x = torch.randn(16, 700)
    config: Config = [{"tensor_fqn": f, "sparsity_level": 0.5} for f in ("seq.0.weight", "seq.2.weight", "seq.4.weight", "linear.weight")]
    ao_class = type("SaliencyPruner", (AO.BaseStructuredSparsifier,), {"update_mask": readme_update_mask})
    fp_class = type("SaliencyPruner", (BaseStructuredSparsifier,), {"update_mask": readme_update_mask})

    _, ao, ao_masks = drive(ao_class({"prune_bias": True}), copy.deepcopy(model), config)
    prepared, fp, fp_masks = drive(fp_class({"prune_bias": True}, patterns=fprune.default_patterns()), copy.deepcopy(model), config)

    assert fp_masks.keys() == ao_masks.keys() and all(torch.equal(fp_masks[k], ao_masks[k]) for k in ao_masks)
    assert isinstance(ao, fx.GraphModule) and type(fp) is ReferenceMLP
    assert sum(p.numel() for p in fp.parameters()) == sum(p.numel() for p in ao.parameters()) == 396150
    assert_same_parameters(fp, ao)
    assert_outputs_close(run(fp, x), run(ao, x))
    assert_outputs_close(run(fp, x), restrict(run(prepared, x), fp_masks, (("linear.weight", 1),)))


@pytest.mark.parametrize("pruner", PRUNERS)
@pytest.mark.parametrize(("name", "prune_bias"), NON_LSTM_AGREE, ids=[f"{n}-{'prune_bias' if b else 'keep_bias'}" for n, b in NON_LSTM_AGREE])
def test_same_pruner_and_config_give_torch_ao_s_masks_and_model(name: str, prune_bias: bool, pruner: str) -> None:
    case, model, x = build(name)
    config = head_to_head_config(name, prune_bias)
    make_ao, make_fp = PRUNERS[pruner]

    _, ao, ao_masks = drive(make_ao(), copy.deepcopy(model), config)
    prepared, fp, fp_masks = drive(make_fp(), copy.deepcopy(model), config)

    assert fp_masks.keys() == ao_masks.keys()
    for fqn in ao_masks:
        assert torch.equal(fp_masks[fqn], ao_masks[fqn]), fqn
        assert fp.get_parameter(fqn).shape[0] == int(fp_masks[fqn].sum()) < fp_masks[fqn].shape[0]
    assert type(fp) is type(model)
    assert_same_parameters(fp, ao)
    fp_out = run(fp, x)
    assert_outputs_close(fp_out, run(ao, x))
    assert_outputs_close(fp_out, restrict(run(prepared, x), fp_masks, case.pruned_by))


def unit_ordered_lstm(name: str) -> tuple[nn.Module, Tensor, Config]:
    """An LSTM case whose hidden units have the same saliency order in every gate and in both
    packed weights (row (gate, unit) = scale[unit] * random signs), so that torch.ao's per-gate
    choice and fprune's whole-unit choice coincide."""
    case, model, x = build(name)
    lstm = model.get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM)
    generator = torch.Generator().manual_seed(2)
    config: Config = []
    for layer in range(lstm.num_layers):
        scale = torch.randperm(lstm.hidden_size, generator=generator).to(torch.float32) + 1.0
        for kind in ("ih", "hh"):
            weight = getattr(lstm, f"weight_{kind}_l{layer}")
            signs = torch.randint(0, 2, weight.shape, generator=generator).to(torch.float32) * 2 - 1
            with torch.no_grad():
                weight.copy_(signs * scale.repeat(4).unsqueeze(1) / lstm.hidden_size)
            config.append({"tensor_fqn": f"lstm.weight_{kind}_l{layer}"})
    return model, x, config


LSTM_CASES = [name for name in CASES if name.startswith("LSTM")]


@pytest.mark.parametrize("name", LSTM_CASES)
def test_lstm_pruner_gives_torch_ao_s_model_when_gates_agree(name: str) -> None:
    model, x, config = unit_ordered_lstm(name)
    _, ao, ao_masks = drive(AO.LSTMSaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    prepared, fp, fp_masks = drive(LSTMSaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)

    assert all(torch.equal(fp_masks[fqn], ao_masks[fqn]) for fqn in ao_masks)
    assert fp.get_submodule("lstm").hidden_size == 5
    assert_same_parameters(fp, ao)
    assert_outputs_close(run(fp, x), run(ao, x))
    if not CASES[name].layer_norm:  # LayerNorm renormalises over the kept units, by design
        assert_outputs_close(run(fp, x), restrict(run(prepared, x), fp_masks, CASES[name].pruned_by))


def test_config_none_lists_the_tensors_torch_ao_lists() -> None:
    for name in NON_LSTM:
        _, model, _ = build(name)
        ao: Any = AO.SaliencyPruner({})
        ao.make_config_from_model(model)
        fp = SaliencyPruner({"sparsity_level": 0.5})
        fp.prepare(copy.deepcopy(model), None)
        assert [g["tensor_fqn"] for g in fp.groups] == [entry["tensor_fqn"] for entry in ao.config], name


# --------------------------------------------------------------------------------------------
# where torch.ao is wrong
# --------------------------------------------------------------------------------------------


def test_torch_ao_prunes_the_prepared_model_in_place_fprune_returns_a_new_one() -> None:
    torch.manual_seed(0)
    model = ReferenceMLP().eval()
    x = torch.randn(4, 700)
    config: Config = [{"tensor_fqn": f"seq.{i}.weight"} for i in (0, 2, 4)]

    ao_prepared, ao, _ = drive(AO.SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    assert ao.get_submodule("seq.0") is ao_prepared.get_submodule("seq.0")
    assert not parametrize.is_parametrized(ao_prepared.get_submodule("seq.0"))  # its masks are gone
    assert shapes(ao_prepared) == shapes(ao)  # the prepared model is now the pruned one

    fp_prepared, fp, _ = drive(SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    assert fp.get_submodule("seq.0") is not fp_prepared.get_submodule("seq.0")
    assert parametrize.is_parametrized(fp_prepared.get_submodule("seq.0"))
    assert getattr(fp_prepared.get_submodule("seq.0").parametrizations, "weight").original.shape == (500, 700)
    assert_outputs_close(run(fp, x), run(ao, x))
    assert_outputs_close(run(fp, x), run(fp_prepared, x))


@pytest.mark.parametrize("name", ["Conv2dPadBias", "Conv2dPool", "Conv2dPoolFlatten", "Conv2dPoolFlattenFunctional"])
def test_torch_ao_leaves_producers_before_padded_convs_unshrunk_fprune_prunes_them(name: str) -> None:
    case, model, x = build(name)
    config = head_to_head_config(name, True)
    _, ao, ao_masks = drive(AO.SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    prepared, fp, fp_masks = drive(SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)

    assert all(torch.equal(fp_masks[fqn], ao_masks[fqn]) for fqn in ao_masks)
    original = shapes(model)
    unshrunk = [fqn for fqn in ao_masks if shapes(ao)[fqn] == original[fqn]]
    assert unshrunk, "torch.ao was expected to leave producers before padded convs full size"
    for fqn, mask in fp_masks.items():
        assert fp.get_parameter(fqn).shape[0] == int(mask.sum()) < mask.shape[0]
    assert sum(p.numel() for p in fp.parameters()) < sum(p.numel() for p in ao.parameters())
    assert_outputs_close(run(fp, x), restrict(run(prepared, x), fp_masks, case.pruned_by))


def test_torch_ao_lstm_pruner_picks_gates_separately_fprune_removes_whole_units() -> None:
    """With a random init, torch.ao's LSTMSaliencyPruner keeps different units in each gate and
    in weight_ih / weight_hh, and its pruned LSTM differs from its masked one. fprune's keeps
    whole units, the same for both weights, and is exact."""
    case, model, x = build("LSTMLinearModel-1layer")
    config: Config = [{"tensor_fqn": "lstm.weight_ih_l0"}, {"tensor_fqn": "lstm.weight_hh_l0"}]

    ao_model = copy.deepcopy(model)
    ao_pruner: Any = AO.LSTMSaliencyPruner({"sparsity_level": 0.5})
    ao_pruner.prepare(ao_model, copy.deepcopy(config))
    ao_pruner.step()
    ao_masks = {fqn: state["mask"] for fqn, state in ao_pruner.state.items()}
    gates = ao_masks["lstm.weight_ih_l0"].reshape(4, 10)
    assert not bool((gates == gates[0]).all())
    assert not torch.equal(ao_masks["lstm.weight_ih_l0"], ao_masks["lstm.weight_hh_l0"])
    ao_masked = run(ao_model, x)
    assert max_difference(run(ao_pruner.prune(), x)[:1], ao_masked[:1]) > 1e-3

    prepared, fp, fp_masks = drive(LSTMSaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    units = fp_masks["lstm.weight_ih_l0"].reshape(4, 10)
    assert bool((units == units[0]).all()) and int(units[0].sum()) == 5
    assert torch.equal(fp_masks["lstm.weight_ih_l0"], fp_masks["lstm.weight_hh_l0"])
    assert_outputs_close(run(fp, x), restrict(run(prepared, x), fp_masks, case.pruned_by))


def test_torch_ao_drops_a_bias_folded_into_a_neighbour_with_another_prune_bias_fprune_is_exact() -> None:
    """seq.4 keeps its bias (folded into linear1), linear1 prunes its own: torch.ao's
    prune_linear overwrites the folded bias with linear1's sliced ``_bias``."""
    case, model, x = build("LinearActivation")
    config: Config = [{"tensor_fqn": "seq.4.weight", "prune_bias": False}, {"tensor_fqn": "linear1.weight", "prune_bias": True}]

    _, ao, ao_masks = drive(AO.SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    prepared, fp, fp_masks = drive(SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    assert all(torch.equal(fp_masks[fqn], ao_masks[fqn]) for fqn in ao_masks)
    masked = run(prepared, x)
    assert max_difference(run(ao, x), masked) > 1e-2
    assert_outputs_close(run(fp, x), masked)


def test_torch_ao_follows_the_first_user_of_a_branch_fprune_refuses_at_prepare() -> None:
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 8)
    config: Config = [{"tensor_fqn": "fc1.weight"}]

    _, ao, _ = drive(AO.SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    assert ao.get_parameter("fc1.weight").shape == (4, 8)  # fc1 -> fc2 matched, the add ignored
    with pytest.raises(RuntimeError, match="must match the size"):
        run(ao, x)

    with pytest.raises(fprune.PruneError, match=r"`fc1\.weight`: no match prunes it: `fc1` \(Linear\).*residual add"):
        SaliencyPruner({"sparsity_level": 0.5}).prepare(model, config)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("name", ["Conv2dPadBias", "Conv2dPool"])
def test_keep_bias_before_padded_convs_both_leave_producers_unshrunk_fprune_fewer_and_warns(name: str) -> None:
    """prune_bias=False: torch.ao keeps every producer with a bias before a padded conv full
    size, silently. fprune keeps those whose removed channels really emit a constant into a
    padding (or a padded average pool), with one warning, and shrinks the others; its result
    is the masked model. (torch.ao's Conv2dPoolFlatten models crash here: see
    test_torch_ao_reference.py.)"""
    case, model, x = build(name)
    config = head_to_head_config(name, False)
    _, ao, ao_masks = drive(AO.SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    with pytest.warns(UserWarning, match=r"^prune\(\): left") as caught:
        prepared, fp, fp_masks = drive(SaliencyPruner({"sparsity_level": 0.5}), copy.deepcopy(model), config)
    assert len(caught) == 1
    assert all(torch.equal(fp_masks[fqn], ao_masks[fqn]) for fqn in ao_masks)

    original = shapes(model)
    ao_unshrunk = {fqn for fqn in ao_masks if shapes(ao)[fqn][0] == original[fqn][0]}
    fp_unshrunk = {fqn for fqn in fp_masks if fp.get_parameter(fqn).shape[0] == original[fqn][0]}
    assert fp_unshrunk and fp_unshrunk <= ao_unshrunk
    assert all(f"`{fqn}`" in str(caught[0].message) for fqn in fp_unshrunk)
    assert sum(p.numel() for p in fp.parameters()) <= sum(p.numel() for p in ao.parameters())
    assert_outputs_close(run(fp, x), restrict(run(prepared, x), fp_masks, case.pruned_by))
