"""Differential tests: fprune against torch.ao's experimental structured pruner.

torch.ao (``torch.ao.pruning._experimental.pruner``, shipped with torch) is driven with the
*same* keep-masks as fprune: a ``SaliencyPruner`` is prepared on a deep copy of the model,
its ``FakeStructuredSparsity`` masks are overwritten with ours, and ``prune()`` is called
(no ``step()``, so torch.ao's own mask criterion never runs).

Where torch.ao is right, fprune must produce the same parameters (by state_dict key) and
outputs. Where torch.ao is wrong, the tests below assert both behaviours as observed on the
installed torch: what torch.ao does (wrong outputs, crashes, unshrunk layers, a mutated input
model) and that fprune either reproduces the masked model exactly or refuses with a
``PruneError`` that says why.

The reference for "right" is the masked model:
``torch.func.functional_call(model, fprune.masked_parameters(model, masks, ...), x)``,
restricted to the kept output channels where the last layer is pruned.
"""

from __future__ import annotations

import copy
import importlib
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, fx, nn
from torch.func import functional_call
from torch.nn.utils import parametrize
from torch.testing._internal import common_pruning as cp

import fprune

from ..models import REFERENCE_PRUNED_SHAPES, ReferenceMLP

# torch.ao's pruner is untyped; keep it behind one `Any`.
AO: Any = importlib.import_module("torch.ao.pruning._experimental.pruner")

ATOL = 1e-5

# One pattern dict for the whole file: match_patterns caches its index per dict.
PATTERNS = fprune.default_patterns()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def trace_matches(model: nn.Module) -> tuple[fprune.Match, ...]:
    """fprune's matches for `model` with the default patterns (the documented pipeline)."""
    return fprune.match_patterns(fx.symbolic_trace(model), PATTERNS)


def fprune_prune(model: nn.Module, masks: Mapping[str, Tensor], *, prune_bias: bool) -> nn.Module:
    return fprune.apply_prune(model, masks, trace_matches(model), prune_bias=prune_bias)


def masked_outputs(model: nn.Module, masks: Mapping[str, Tensor], x: Tensor, *, prune_bias: bool) -> list[Tensor]:
    matches = trace_matches(model)
    params = fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias)
    with torch.no_grad():
        return flatten_outputs(functional_call(model, params, (x,)))


def ao_prepare(model: nn.Module, masks: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[Any, nn.Module]:
    """torch.ao's pruner prepared on a deep copy of `model`, with `masks` as its masks."""
    prepared = copy.deepcopy(model)
    pruner: Any = AO.SaliencyPruner({})
    pruner.prepare(prepared, [{"tensor_fqn": fqn, "prune_bias": prune_bias} for fqn in masks])
    for fqn, mask in masks.items():
        module_fqn, _, name = fqn.rpartition(".")
        module = prepared.get_submodule(module_fqn)
        getattr(module.parametrizations, name)[0].mask.data.copy_(mask)
    return pruner, prepared


def ao_prune(model: nn.Module, masks: Mapping[str, Tensor], *, prune_bias: bool) -> nn.Module:
    """torch.ao's pruned model (a GraphModule) for a deep copy of `model`."""
    pruner, _ = ao_prepare(model, masks, prune_bias=prune_bias)
    pruned: nn.Module = pruner.prune()
    return pruned


def ao_default_fqns(model: nn.Module) -> list[str]:
    """The tensors torch.ao's default config prunes (``prepare(model, None)``).

    torch.ao's default entry for an LSTM is ``"lstm.weight"``, which its own ``prepare``
    cannot handle (see ``test_torch_ao_default_config_crashes_on_an_lstm``); it is expanded
    here to the per-layer ``weight_ih_l*`` / ``weight_hh_l*`` that torch.ao's LSTM pruning uses.
    """
    pruner: Any = AO.SaliencyPruner({})
    pruner.make_config_from_model(model)
    fqns: list[str] = []
    for entry in pruner.config:
        fqn = str(entry["tensor_fqn"])
        module = model.get_submodule(fqn.rpartition(".")[0])
        if isinstance(module, nn.LSTM):
            owner = fqn.rpartition(".")[0]
            for layer in range(module.num_layers):
                fqns += [f"{owner}.weight_ih_l{layer}", f"{owner}.weight_hh_l{layer}"]
        else:
            fqns.append(fqn)
    return fqns


def random_masks(model: nn.Module, fqns: list[str], *, seed: int) -> dict[str, Tensor]:
    """Seeded random keep-masks of about 50% for `fqns`.

    An LSTM layer keeps ``hidden // 2`` random units, the same unit pattern in all 4 gates and
    for both ``weight_ih`` and ``weight_hh`` (all layers keep the same count).
    """
    generator = torch.Generator().manual_seed(seed)
    masks: dict[str, Tensor] = {}
    for fqn in fqns:
        module_fqn, _, name = fqn.rpartition(".")
        module = model.get_submodule(module_fqn)
        if isinstance(module, nn.LSTM):
            if name.startswith("weight_hh_l"):
                continue
            hidden = module.hidden_size
            units = torch.zeros(hidden, dtype=torch.bool)
            units[torch.randperm(hidden, generator=generator)[: hidden // 2]] = True
            masks[fqn] = units.repeat(4)
            masks[fqn.replace("weight_ih_l", "weight_hh_l")] = units.repeat(4)
            continue
        rows = model.get_parameter(fqn).shape[0]
        keep = torch.rand(rows, generator=generator) < 0.5
        keep[int(torch.randint(rows, (1,), generator=generator))] = True
        if bool(keep.all()):
            keep[int(torch.randint(rows, (1,), generator=generator))] = False
        masks[fqn] = keep
    return masks


def flatten_outputs(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flatten_outputs(item)]
    raise TypeError(f"unexpected output type {type(out).__name__}")


def run(model: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return flatten_outputs(model(x))


def kept_units(masks: Mapping[str, Tensor], fqn: str) -> Tensor:
    mask = masks[fqn]
    if ".weight_ih_l" in fqn or ".weight_hh_l" in fqn:
        return mask[: mask.shape[0] // 4]  # one gate's worth: the hidden units
    return mask


def restrict(outputs: list[Tensor], masks: Mapping[str, Tensor], pruned_by: tuple[tuple[str | None, int], ...]) -> list[Tensor]:
    """The masked model's outputs with the channels the pruned model drops removed."""
    assert len(outputs) == len(pruned_by)
    result: list[Tensor] = []
    for out, (fqn, dim) in zip(outputs, pruned_by):
        if fqn is None or fqn not in masks:
            result.append(out)
        else:
            result.append(out.index_select(dim, kept_units(masks, fqn).nonzero().squeeze(1)))
    return result


def assert_outputs_close(got: list[Tensor], expected: list[Tensor], *, atol: float = ATOL) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=1e-5)


def max_difference(got: list[Tensor], expected: list[Tensor]) -> float:
    return max(float((g - e).abs().max()) for g, e in zip(got, expected))


def assert_same_parameters(fp: nn.Module, ao: nn.Module) -> None:
    """Same state_dict keys, shapes and values; a bias only one side has must be all zero
    (torch.ao gives a bias-less consumer a new bias even when the folded constant is 0)."""
    fp_state, ao_state = fp.state_dict(), ao.state_dict()
    for key in set(fp_state) ^ set(ao_state):
        only = fp_state.get(key, ao_state.get(key))
        assert key.endswith(".bias") and only is not None and not bool(only.any()), key
    for key, value in fp_state.items():
        if key not in ao_state:
            continue
        assert value.shape == ao_state[key].shape, key
        torch.testing.assert_close(value, ao_state[key], atol=1e-6, rtol=1e-5, msg=key)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# the models of torch.testing._internal.common_pruning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One reference model.

    Attributes:
        make: builds the model.
        input_shape: a random input's shape.
        pruned_by: per returned tensor, the mask FQN that prunes its dim (None: never pruned)
            and that dim; used to restrict the masked model's outputs.
        no_ao_pattern: tensors in torch.ao's default config that no torch.ao pattern covers
            (a layer followed by an activation and the output): torch.ao's ``prune()`` raises
            when they are in the config, so the head-to-head comparison leaves them out.
        layer_norm: the LSTM -> LayerNorm -> Linear model, whose pruned output differs from
            the masked model by design (the LayerNorm renormalises over the kept units).
    """

    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    pruned_by: tuple[tuple[str | None, int], ...]
    no_ao_pattern: tuple[str, ...] = ()
    layer_norm: bool = False


IMAGE = (2, 1, 16, 16)
SEQUENCE = (3, 2, 8)  # (time, batch, features); batch 2 != output size 5 on purpose


def _lstm_linear(layers: int) -> Callable[[], nn.Module]:
    return lambda: cp.LSTMLinearModel(8, 10, 5, layers)


def _lstm_layernorm_linear(layers: int) -> Callable[[], nn.Module]:
    return lambda: cp.LSTMLayerNormLinearModel(8, 10, 5, layers)


CASES: dict[str, Case] = {
    "SimpleLinear": Case(cp.SimpleLinear, (4, 7), (("linear2.weight", 1),)),
    "LinearBias": Case(cp.LinearBias, (4, 7), (("seq.4.weight", 1),)),
    "LinearActivation": Case(cp.LinearActivation, (4, 7), (("linear2.weight", 1),), ("linear2.weight",)),
    "LinearActivationFunctional": Case(
        cp.LinearActivationFunctional, (4, 7), (("linear3.weight", 1),), ("linear3.weight",)
    ),
    "SimpleConv2d": Case(cp.SimpleConv2d, IMAGE, (("conv2d2.weight", 1),)),
    "Conv2dBias": Case(cp.Conv2dBias, IMAGE, (("conv2d2.weight", 1),)),
    "Conv2dActivation": Case(cp.Conv2dActivation, IMAGE, (("conv2d2.weight", 1),), ("conv2d2.weight",)),
    "Conv2dPadBias": Case(cp.Conv2dPadBias, IMAGE, (("conv2d2.weight", 1),), ("conv2d2.weight",)),
    "Conv2dPool": Case(cp.Conv2dPool, IMAGE, (("conv2d3.weight", 1),)),
    "Conv2dPoolFlatten": Case(cp.Conv2dPoolFlatten, IMAGE, (("fc.weight", 1),)),
    "Conv2dPoolFlattenFunctional": Case(cp.Conv2dPoolFlattenFunctional, IMAGE, (("fc.weight", 1),)),
    "LSTMLinearModel-1layer": Case(
        _lstm_linear(1), SEQUENCE, (("linear.weight", 2), ("lstm.weight_ih_l0", 2))
    ),
    "LSTMLinearModel-2layers": Case(
        _lstm_linear(2), SEQUENCE, (("linear.weight", 2), ("lstm.weight_ih_l1", 2))
    ),
    # outputs: linear, h_n, c_n (h_n/c_n of every layer: not restricted, never compared to masked)
    "LSTMLayerNormLinearModel-1layer": Case(
        _lstm_layernorm_linear(1), SEQUENCE, (("linear.weight", 2), (None, 2), (None, 2)), layer_norm=True
    ),
    "LSTMLayerNormLinearModel-2layers": Case(
        _lstm_layernorm_linear(2), SEQUENCE, (("linear.weight", 2), (None, 2), (None, 2)), layer_norm=True
    ),
}

NON_LSTM = [name for name in CASES if not name.startswith("LSTM")]


def build(name: str) -> tuple[Case, nn.Module, Tensor]:
    """The case, its model (eval mode, seeded init) and a seeded random input."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make().eval()
    x = torch.randn(case.input_shape)
    return case, model, x


def default_masks(model: nn.Module) -> dict[str, Tensor]:
    """Random masks for everything torch.ao's default config prunes."""
    return random_masks(model, ao_default_fqns(model), seed=1)


def head_to_head_masks(case: Case, model: nn.Module) -> dict[str, Tensor]:
    """The default-config masks minus the tensors torch.ao has no pattern for."""
    masks = default_masks(model)
    for fqn in case.no_ao_pattern:
        del masks[fqn]
    return masks


# (model, prune_bias) pairs where torch.ao is right: same parameters and outputs as fprune.
AGREE: list[tuple[str, bool]] = [
    ("SimpleLinear", True),
    ("SimpleLinear", False),
    ("LinearBias", True),
    ("LinearActivation", True),
    ("LinearActivation", False),
    ("LinearActivationFunctional", True),
    ("LinearActivationFunctional", False),
    ("SimpleConv2d", True),
    ("SimpleConv2d", False),
    ("Conv2dBias", True),
    ("Conv2dActivation", True),
    ("Conv2dActivation", False),
    ("LSTMLinearModel-1layer", True),
    ("LSTMLinearModel-2layers", True),
    ("LSTMLayerNormLinearModel-1layer", True),
    ("LSTMLayerNormLinearModel-2layers", True),
]


# --------------------------------------------------------------------------------------------
# 1. the reference MLP
# --------------------------------------------------------------------------------------------




def reference_mlp() -> tuple[ReferenceMLP, dict[str, Tensor], Tensor]:
    torch.manual_seed(0)
    model = ReferenceMLP().eval()
    masks = {name: fprune.saliency_mask(p, 0.5) for name, p in model.named_parameters() if name.endswith("weight")}
    x = torch.randn(16, 700)
    return model, masks, x


def test_reference_mlp_fprune_equals_torch_ao_with_exact_shapes() -> None:
    model, masks, x = reference_mlp()
    assert sum(p.numel() for p in model.parameters()) == 1233500

    fp = fprune_prune(model, masks, prune_bias=True)
    ao = ao_prune(model, masks, prune_bias=True)

    assert isinstance(fp, ReferenceMLP)
    assert isinstance(ao, fx.GraphModule)
    assert shapes(fp) == REFERENCE_PRUNED_SHAPES
    assert sum(p.numel() for p in fp.parameters()) == 396150
    assert_same_parameters(fp, ao)

    fp_out, ao_out = run(fp, x), run(ao, x)
    assert fp_out[0].shape == (16, 2)
    assert_outputs_close(fp_out, ao_out)
    expected = restrict(masked_outputs(model, masks, x, prune_bias=True), masks, (("linear.weight", 1),))
    assert_outputs_close(fp_out, expected)


def test_reference_mlp_torch_ao_mutates_its_input_fprune_leaves_it_unchanged() -> None:
    model, masks, x = reference_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {k: id(p) for k, p in model.named_parameters()}
    out_before = run(model, x)

    fp = fprune.apply_prune(model, masks, trace_matches(model), prune_bias=True)
    fprune.masked_parameters(model, masks, prune_bias=True)
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {k: id(p) for k, p in model.named_parameters()} == params_before
    assert not any(parametrize.is_parametrized(m) or m._forward_hooks for m in model.modules())
    assert fp.seq[0] is not model.seq[0]
    assert all(torch.equal(a, b) for a, b in zip(run(model, x), out_before))

    # torch.ao given the model itself: prepare() and prune() rewrite it in place, and the
    # returned GraphModule shares its submodules.
    pruner: Any = AO.SaliencyPruner({})
    pruner.prepare(model, [{"tensor_fqn": fqn, "prune_bias": True} for fqn in masks])
    assert parametrize.is_parametrized(model.seq[0])
    for fqn, mask in masks.items():
        module_fqn, _, name = fqn.rpartition(".")
        getattr(model.get_submodule(module_fqn).parametrizations, name)[0].mask.data.copy_(mask)
    ao: nn.Module = pruner.prune()
    assert ao.get_submodule("seq.0") is model.seq[0]
    assert shapes(model) == shapes(fp)  # the caller's model is now the pruned one
    assert run(model, x)[0].shape == (16, 2)


# --------------------------------------------------------------------------------------------
# 2. the common_pruning models, head to head
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune_bias", [True, False], ids=["prune_bias", "keep_bias"])
@pytest.mark.parametrize("name", NON_LSTM)
def test_masked_parameters_reproduce_torch_ao_parametrized_model(name: str, prune_bias: bool) -> None:
    """fprune's masked model == torch.ao's prepared (parametrized, not yet pruned) model."""
    case, model, x = build(name)
    masks = default_masks(model)
    _, prepared = ao_prepare(model, masks, prune_bias=prune_bias)
    assert_outputs_close(masked_outputs(model, masks, x, prune_bias=prune_bias), run(prepared, x))


@pytest.mark.parametrize(("name", "prune_bias"), AGREE, ids=[f"{n}-{'prune_bias' if b else 'keep_bias'}" for n, b in AGREE])
def test_fprune_equals_torch_ao_and_the_masked_model(name: str, prune_bias: bool) -> None:
    case, model, x = build(name)
    masks = head_to_head_masks(case, model)

    fp = fprune_prune(model, masks, prune_bias=prune_bias)
    ao = ao_prune(model, masks, prune_bias=prune_bias)
    assert type(fp) is type(model)
    assert_same_parameters(fp, ao)
    fp_params = dict(fp.named_parameters())
    for fqn, mask in masks.items():  # every masked tensor kept exactly its True rows
        assert fp_params[fqn].shape[0] == int(mask.sum()) < mask.shape[0]

    fp_out = run(fp, x)
    assert_outputs_close(fp_out, run(ao, x))
    if not case.layer_norm:
        masked = masked_outputs(model, masks, x, prune_bias=prune_bias)
        assert_outputs_close(fp_out, restrict(masked, masks, case.pruned_by))


NO_AO_PATTERN = [
    (name, prune_bias)
    for name in CASES
    if CASES[name].no_ao_pattern
    for prune_bias in (True, False)
    if (name, prune_bias) != ("Conv2dPadBias", False)  # fprune refuses it: see below
]


@pytest.mark.parametrize(
    ("name", "prune_bias"), NO_AO_PATTERN, ids=[f"{n}-{'prune_bias' if b else 'keep_bias'}" for n, b in NO_AO_PATTERN]
)
def test_fprune_prunes_last_layers_torch_ao_has_no_pattern_for(name: str, prune_bias: bool) -> None:
    """torch.ao's default config includes a last Linear/Conv2d followed by an activation and
    the output, but no torch.ao pattern covers it: prune() raises after it has already shrunk
    other layers of its model. fprune prunes it and matches the masked model."""
    case, model, x = build(name)
    masks = default_masks(model)

    pruner, prepared = ao_prepare(model, masks, prune_bias=prune_bias)
    with pytest.raises(Exception, match="still contains FakeStructuredSparsity parametrizations"):
        pruner.prune()
    assert any(shapes(prepared)[k] != v for k, v in shapes(model).items() if k in shapes(prepared))

    fp = fprune_prune(model, masks, prune_bias=prune_bias)
    fp_params = dict(fp.named_parameters())
    for fqn, mask in masks.items():
        assert fp_params[fqn].shape[0] == int(mask.sum())
    masked = masked_outputs(model, masks, x, prune_bias=prune_bias)
    assert_outputs_close(run(fp, x), restrict(masked, masks, case.pruned_by))


# --------------------------------------------------------------------------------------------
# 3. where torch.ao is wrong
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Conv2dPadBias", "Conv2dPool", "Conv2dPoolFlatten", "Conv2dPoolFlattenFunctional"])
def test_torch_ao_skips_padded_consumers_and_is_wrong_without_a_prior_forward_fprune_is_exact(name: str) -> None:
    """prune_bias=True, consumer conv with padding, producer with a bias: torch.ao's
    prune_conv2d_padded shrinks nothing and keeps the producer's full bias. Its BiasHook zeroes
    the removed channels' bias in place only during a forward pass, so the result depends on
    whether the prepared model was run before prune(). fprune shrinks these layers exactly."""
    case, model, x = build(name)
    masks = head_to_head_masks(case, model)
    expected = restrict(masked_outputs(model, masks, x, prune_bias=True), masks, case.pruned_by)

    fp = fprune_prune(model, masks, prune_bias=True)
    assert_outputs_close(run(fp, x), expected)
    fp_params = dict(fp.named_parameters())
    for fqn, mask in masks.items():
        assert fp_params[fqn].shape[0] == int(mask.sum())

    ao = ao_prune(model, masks, prune_bias=True)
    original = shapes(model)
    ao_shapes = shapes(ao)
    unshrunk = [fqn for fqn in masks if ao_shapes[fqn][0] == original[fqn][0] and bool((~masks[fqn]).any())]
    assert unshrunk, "torch.ao was expected to leave padded-consumer producers full size"
    assert max_difference(run(ao, x), expected) > 1e-3

    pruner, prepared = ao_prepare(model, masks, prune_bias=True)
    run(prepared, x)  # BiasHook zeroes the removed channels' _bias in place
    assert_outputs_close(run(pruner.prune(), x), expected)


@pytest.mark.parametrize(("name", "last"), [("LinearBias", "seq.4"), ("Conv2dBias", "conv2d2")])
def test_torch_ao_keep_bias_gives_the_last_layer_an_unpruned_bias_and_crashes_fprune_is_exact(name: str, last: str) -> None:
    """prune_bias=False: the bias propagated into the bias-less last layer has its full size,
    and prune_linear / prune_conv2d only slice a bias when prune_bias is set."""
    case, model, x = build(name)
    masks = head_to_head_masks(case, model)

    ao = ao_prune(model, masks, prune_bias=False)
    rows = int(masks[f"{last}.weight"].sum())
    assert ao.get_parameter(f"{last}.weight").shape[0] == rows
    assert ao.get_parameter(f"{last}.bias").shape[0] == model.get_parameter(f"{last}.weight").shape[0] != rows
    with pytest.raises(RuntimeError):
        run(ao, x)

    fp = fprune_prune(model, masks, prune_bias=False)
    assert fp.get_parameter(f"{last}.bias").shape[0] == rows  # the folded constant, sliced
    masked = masked_outputs(model, masks, x, prune_bias=False)
    assert_outputs_close(run(fp, x), restrict(masked, masks, case.pruned_by))


def test_conv2d_pad_bias_keep_bias_torch_ao_leaves_layers_unshrunk_fprune_raises() -> None:
    case, model, x = build("Conv2dPadBias")
    masks = head_to_head_masks(case, model)

    ao = ao_prune(model, masks, prune_bias=False)
    original, ao_shapes = shapes(model), shapes(ao)
    unshrunk = sorted(fqn for fqn in masks if ao_shapes[fqn][0] == original[fqn][0])
    assert unshrunk == ["conv2d1.weight", "seq.2.weight", "seq.4.weight", "seq.8.weight"]
    assert [fqn for fqn in masks if fqn not in unshrunk] == ["seq.0.weight", "seq.6.weight"]
    # full-size layers with zero rows: correct outputs, nothing saved
    assert_outputs_close(run(ao, x), masked_outputs(model, masks, x, prune_bias=False))

    with pytest.raises(fprune.PruneError, match=r"zero-padded Conv2d.*use prune_bias=True"):
        fprune_prune(model, masks, prune_bias=False)


def test_conv2d_pool_keep_bias_torch_ao_drops_the_last_bias_fprune_raises() -> None:
    case, model, x = build("Conv2dPool")
    masks = head_to_head_masks(case, model)

    ao = ao_prune(model, masks, prune_bias=False)
    state = ao.state_dict()
    assert "conv2d3.bias" not in state and state["conv2d3._bias"].shape == (52,)
    keep = masks["conv2d3.weight"]
    expected = restrict(masked_outputs(model, masks, x, prune_bias=False), masks, case.pruned_by)[0]
    got = run(ao, x)[0]
    # off by exactly the dropped bias of the kept channels
    torch.testing.assert_close(expected - got, model.get_parameter("conv2d3.bias").detach()[keep].reshape(1, -1, 1, 1).expand_as(got))

    with pytest.raises(fprune.PruneError, match="use prune_bias=True"):
        fprune_prune(model, masks, prune_bias=False)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar:UserWarning")
@pytest.mark.parametrize("name", ["Conv2dPoolFlatten", "Conv2dPoolFlattenFunctional"])
def test_conv2d_pool_flatten_keep_bias_torch_ao_crashes_fprune_raises(name: str) -> None:
    case, model, x = build(name)
    masks = head_to_head_masks(case, model)

    ao = ao_prune(model, masks, prune_bias=False)
    assert ao.get_parameter("fc.weight").shape[0] == int(masks["fc.weight"].sum())
    assert ao.get_parameter("fc.bias").shape == (13,)
    with pytest.raises(RuntimeError):
        run(ao, x)

    with pytest.raises(fprune.PruneError, match="use prune_bias=True"):
        fprune_prune(model, masks, prune_bias=False)


@pytest.mark.parametrize("name", ["LSTMLinearModel-1layer", "LSTMLinearModel-2layers"])
def test_lstm_keep_bias_torch_ao_ignores_it_fprune_raises(name: str) -> None:
    """torch.ao's LSTM pruning drops the removed units' biases whatever prune_bias says, so it
    does not compute the prune_bias=False masked model; fprune refuses (such a unit's state
    changes over time and feeds the kept units)."""
    case, model, x = build(name)
    # the LSTM alone: torch.ao would also drop the last Linear's bias (see the Conv2dPool test)
    masks = {k: v for k, v in default_masks(model).items() if k.startswith("lstm.")}

    ao_keep = ao_prune(model, masks, prune_bias=False)
    ao_drop = ao_prune(model, masks, prune_bias=True)
    assert_same_parameters(ao_keep, ao_drop)
    masked = restrict(masked_outputs(model, masks, x, prune_bias=False), masks, case.pruned_by)
    assert max_difference(run(ao_keep, x), masked) > 1e-3

    with pytest.raises(fprune.PruneError, match=r"non-zero on removed units.*use prune_bias=True"):
        fprune_prune(model, masks, prune_bias=False)


def test_lstm_gate_inconsistent_mask_torch_ao_mis_prunes_fprune_raises() -> None:
    """A mask keeping different units in each gate (what LSTMSaliencyPruner produces): torch.ao
    prunes it to a model that differs from the masked model; fprune refuses."""
    case, model, x = build("LSTMLinearModel-1layer")
    units = torch.zeros(10, dtype=torch.bool)
    units[:5] = True
    gates = torch.cat([units.roll(gate) for gate in range(4)])
    masks = {"lstm.weight_ih_l0": gates, "lstm.weight_hh_l0": gates}

    ao = ao_prune(model, masks, prune_bias=True)
    masked = masked_outputs(model, masks, x, prune_bias=True)
    assert run(ao, x)[0].shape == masked[0].shape
    assert max_difference(run(ao, x)[:1], masked[:1]) > 1e-3

    with pytest.raises(fprune.PruneError, match="differs between its 4 gates"):
        fprune_prune(model, masks, prune_bias=True)


@pytest.mark.parametrize("name", ["LSTMLinearModel-2layers", "LSTMLayerNormLinearModel-2layers"])
def test_torch_ao_parametrized_lstm_model_cannot_run_forward(name: str) -> None:
    """torch.ao's BiasHook adds the Linear's bias along dim 1, the batch dim of the LSTM's
    (time, batch, features) output; fprune's masked model runs."""
    case, model, x = build(name)
    masks = default_masks(model)
    _, prepared = ao_prepare(model, masks, prune_bias=True)
    with pytest.raises(RuntimeError, match="must match the size"):
        run(prepared, x)
    out = masked_outputs(model, masks, x, prune_bias=True)
    assert out[0].shape == (3, 2, 5)


def test_torch_ao_default_config_crashes_on_an_lstm() -> None:
    """torch.ao's default config names an LSTM's tensor ``lstm.weight``, which does not exist."""
    _, model, _ = build("LSTMLinearModel-1layer")
    pruner: Any = AO.SaliencyPruner({})
    with pytest.raises(AttributeError, match="has no attribute 'weight'"):
        pruner.prepare(copy.deepcopy(model), None)
    assert ao_default_fqns(model) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "linear.weight"]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        out: Tensor = self.fc3(self.fc2(h) + h)
        return out


def test_residual_torch_ao_follows_the_first_user_and_crashes_fprune_refuses_naming_the_module() -> None:
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 8)
    masks = {"fc1.weight": torch.tensor([True, False] * 4)}

    ao = ao_prune(model, masks, prune_bias=True)  # fc1 -> fc2 matched; the add is ignored
    assert ao.get_parameter("fc1.weight").shape == (4, 8)
    assert ao.get_parameter("fc2.weight").shape == (8, 4)
    with pytest.raises(RuntimeError, match="must match the size"):
        run(ao, x)

    with pytest.raises(fprune.PruneError, match=r"`fc1\.weight`.*`fc1`.*residual add"):
        fprune_prune(model, masks, prune_bias=True)


# --------------------------------------------------------------------------------------------
# regression: an LSTM whose state is unpacked but unused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LSTMLinearModel-1layer", "LSTMLinearModel-2layers"])
def test_lstm_with_an_unused_state_getitem_is_matched_like_torch_ao_does(name: str) -> None:
    """``output, _hidden = self.lstm(x)`` traces a ``getitem(1)`` node with no users. fprune
    used to count it as a use of the LSTM's outputs and refuse the model (PruneError "the
    outputs of `lstm` are used elsewhere ..."), while torch.ao prunes it correctly."""
    _, model, x = build(name)
    gm = fx.symbolic_trace(model)
    assert any(n.target is operator.getitem and n.args[1] == 1 and not n.users for n in gm.graph.nodes)
    matches = fprune.match_patterns(gm, PATTERNS)
    assert [m.module_fqns for m in matches] == [("lstm", "linear"), ("linear",)]
    masks = default_masks(model)
    fp = fprune.apply_prune(model, masks, matches, prune_bias=True)
    ao = ao_prune(model, masks, prune_bias=True)
    assert_same_parameters(fp, ao)
    assert_outputs_close(run(fp, x), run(ao, x))
