"""torch.ao's own structured-pruner test suite, rewritten against ``fprune.sparsifier``.

PyTorch tests its experimental pruner in ``test/ao/sparsity/test_structured_sparsifier.py``
(22 tests). Each test below reproduces one of them: the same models from
``torch.testing._internal.common_pruning``, the same configs, pruners and inputs, and the same
assertions in spirit. Its docstring names the torch.ao test. Only what fprune does differently
by design is adapted, and each adaptation is stated where it happens:

- ``prune()`` returns a new model and leaves the prepared model parametrized, so shapes and
  weights are read from the returned model, and "the masks are gone" is checked on it;
- ``LSTMSaliencyPruner`` removes whole hidden units (the same in all four gates) where torch.ao
  picks each gate's rows separately: ``test_lstm_saliency_pruner_update_mask`` asserts
  fprune's documented choice instead of torch.ao's;
- the fixed tolerances of torch.ao (rtol 1e-3 for convs) are kept, and fprune's exactness is
  checked on top where torch.ao could not (the LSTM tests compare the pruned model with the
  masked one, not with itself).

Warnings are errors in this suite, so the one ``UserWarning`` that ``prune()`` emits for
producers it leaves unshrunk (prune_bias=False before a zero-padded conv, as torch.ao does)
is recorded and checked wherever a torch.ao test produces that case.
"""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.testing._internal.common_pruning import (
    Conv2dActivation,
    Conv2dBias,
    Conv2dPadBias,
    Conv2dPool,
    Conv2dPoolFlatten,
    Conv2dPoolFlattenFunctional,
    LinearActivation,
    LinearActivationFunctional,
    LinearBias,
    LSTMLayerNormLinearModel,
    LSTMLinearModel,
    SimpleConv2d,
    SimpleLinear,
    rows_are_subset,
)

from fprune.sparsifier import (
    BaseStructuredSparsifier,
    FakeStructuredSparsity,
    FPGMPruner,
    LSTMSaliencyPruner,
    SaliencyPruner,
)

Config = list[dict[str, object]]

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """ImplementedPruner draws its rows with `random`; models draw their weights with torch."""
    random.seed(0)
    torch.manual_seed(0)
    yield


# --------------------------------------------------------------------------------------------
# the three pruners torch.ao's suite defines, written as torch.ao users write them
# --------------------------------------------------------------------------------------------


class SimplePruner(BaseStructuredSparsifier):
    """Removes row 1 of every configured tensor."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        getattr(module.parametrizations, tensor_name)[0].mask[1] = False


class ImplementedPruner(BaseStructuredSparsifier):
    """Removes a random third of the rows (``random.sample``)."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        parametrizations: Any = module.parametrizations
        num_rows = len(parametrizations[tensor_name][0].mask)
        prune = random.sample(list(range(num_rows)), num_rows // 3)
        parametrizations[tensor_name][0].mask[prune] = False


class BottomHalfLSTMPruner(BaseStructuredSparsifier):
    """Removes the bottom half of each gate's rows, replacing the mask's data (``mask.data = ...``)."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        for p in getattr(module.parametrizations, tensor_name):
            if isinstance(p, FakeStructuredSparsity):
                mask = p.mask
                masks = torch.split(mask, len(mask) // 4)
                for small in masks:
                    small[len(small) // 2 :] = False
                mask.data = torch.cat(masks).data


# --------------------------------------------------------------------------------------------
# torch.ao's checks, with fprune's adaptations
# --------------------------------------------------------------------------------------------


def group_modules(pruner: BaseStructuredSparsifier) -> list[Any]:
    """The module of every config group (``Any``: torch.ao's checks reach into parametrizations)."""
    return [group["module"] for group in pruner.groups]


def check_pruner_prepared(pruner: BaseStructuredSparsifier, device: torch.device) -> None:
    for group, module in zip(pruner.groups, group_modules(pruner)):
        assert module.weight.device.type == device.type
        assert group["tensor_fqn"] in pruner.state
        assert parametrize.is_parametrized(module)
        assert hasattr(module, "parametrizations")
        assert type(module.parametrizations.weight[0]) is FakeStructuredSparsity


def check_pruner_valid_before_step(pruner: BaseStructuredSparsifier, device: torch.device) -> None:
    for module in group_modules(pruner):
        assert module.weight.device.type == device.type
        assert module.parametrizations.weight[0].mask.dtype == torch.bool


def check_pruner_valid_after_step(pruner: BaseStructuredSparsifier, removed: int, device: torch.device) -> None:
    for module in group_modules(pruner):
        assert module.weight.device.type == device.type
        total = module.parametrizations.weight[0].mask.numel()
        assert module.parametrizations.weight[0].mask.count_nonzero() == total - removed


def check_pruner_pruned(pruned: nn.Module, pruner: BaseStructuredSparsifier) -> None:
    """torch.ao checks that its (in-place) pruned modules lost their masks. fprune's prepared
    model keeps them, by design; the model ``prune()`` returns has none."""
    for group in pruner.groups:
        module = pruned.get_submodule(str(group["module_fqn"]))
        assert not hasattr(module, "parametrizations")
        assert not hasattr(module, "mask")
        assert parametrize.is_parametrized(pruner.model.get_submodule(str(group["module_fqn"])))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_recording_unshrunk(pruner: BaseStructuredSparsifier) -> tuple[nn.Module, list[str]]:
    """``pruner.prune()`` and the configured tensors it left unshrunk (full size although their
    mask removes rows), after checking that it warned once, naming them, exactly when it
    left some."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = pruner.prune()
    unshrunk = [
        fqn
        for fqn, state in pruner.state.items()
        if pruned.get_parameter(fqn).shape[0] == state["mask"].numel() and not bool(state["mask"].all())
    ]
    assert len(caught) == (1 if unshrunk else 0), [str(w.message) for w in caught]
    for record in caught:
        assert record.category is UserWarning
        message = str(record.message)
        assert message.startswith("prune(): left") and all(f"`{fqn}`" in message for fqn in unshrunk), message
    return pruned, unshrunk


def run_linear(model: nn.Module, config: Config, expected_shape: tuple[int, ...], device: torch.device, also_prune_bias: bool) -> None:
    """torch.ao's ``_test_linear_on_device``."""
    model = model.to(device)
    model.eval()
    num_original_params = num_params(model)
    x = torch.ones(128, 7, device=device)

    pruner = ImplementedPruner({"prune_bias": also_prune_bias})
    pruner.prepare(model, config)
    pruner.enable_mask_update = True
    pruner.step()

    y_expected = model(x)
    assert y_expected.shape == (128, 10)
    check_pruner_prepared(pruner, device)

    pruned, unshrunk = prune_recording_unshrunk(pruner)
    assert unshrunk == []  # no padded convs here: everything shrinks
    y_pruned = pruned(x)
    assert y_pruned.shape == expected_shape
    check_pruner_pruned(pruned, pruner)
    if y_pruned.shape == y_expected.shape:
        assert torch.isclose(y_expected, y_pruned, rtol=1e-05, atol=1e-07).all()
        assert num_params(pruned) < num_original_params


def run_conv2d(model: nn.Module, config: Config, x: Tensor, expected_shape: tuple[int, ...], device: torch.device, also_prune_bias: bool) -> list[str]:
    """torch.ao's ``_test_conv2d_on_device``; returns the tensors left unshrunk."""
    model = model.to(device)
    num_original_params = num_params(model)
    model.eval()

    pruner = ImplementedPruner({"prune_bias": also_prune_bias})
    pruner.prepare(model, config)
    pruner.enable_mask_update = True
    pruner.step()

    y_expected = model(x)
    assert y_expected.shape == expected_shape
    check_pruner_prepared(pruner, device)

    pruned, unshrunk = prune_recording_unshrunk(pruner)
    y_pruned = pruned(x)
    assert y_pruned.shape == expected_shape
    check_pruner_pruned(pruned, pruner)
    if y_pruned.shape == y_expected.shape:
        assert torch.isclose(y_expected, y_pruned, rtol=1e-3, atol=1e-3).all(), f"fail for {type(model)}"
        assert num_params(pruned) <= num_original_params
    if also_prune_bias:
        assert unshrunk == []  # unlike torch.ao, which leaves these layers unshrunk too
    return unshrunk


def lstm_input() -> Tensor:
    return torch.ones((1, 8))


def original_of(model: nn.Module, fqn: str) -> Tensor:
    """The unmasked tensor behind `fqn` of a prepared model."""
    module_fqn, _, name = fqn.rpartition(".")
    module = model.get_submodule(module_fqn)
    if parametrize.is_parametrized(module, name):
        lists: Any = module.parametrizations
        original: Tensor = getattr(lists, name).original
        return original.detach()
    return model.get_parameter(fqn).detach()


def check_lstm_parameters_are_subsets(prepared: nn.Module, pruned: nn.Module, pruner: BaseStructuredSparsifier) -> None:
    """torch.ao's multi-layer check (``rows_are_subset`` for every parameter, no name lost or
    added), made to compare the pruned model with the prepared one (torch.ao compares its
    model with itself). A pruned LSTM weight also loses the input columns of removed units,
    so its rows are looked up among the original's rows restricted to the kept columns, and
    must equal exactly the kept rows and columns."""
    lstm = prepared.get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM)
    units = [pruner.state[f"lstm.weight_ih_l{layer}"]["mask"].reshape(4, -1)[0] for layer in range(lstm.num_layers)]
    expected_params = {name: original_of(prepared, name) for name, _ in pruned.named_parameters()}
    assert set(expected_params) == {name.replace(".parametrizations", "").replace(".original", "") for name, _ in prepared.named_parameters()}
    for name, param in pruned.named_parameters():
        original = expected_params.pop(name)
        rows: Tensor | None = None
        columns: Tensor | None = None
        if name.startswith("lstm."):
            layer = int(name.rpartition("_l")[2])
            rows = units[layer].repeat(4)
            if name.startswith("lstm.weight_hh"):
                columns = units[layer]
            elif name.startswith("lstm.weight_ih") and layer > 0:
                columns = units[layer - 1]
        elif name.startswith("norm."):
            rows = units[-1]
        elif name == "linear.weight":
            columns = units[-1]
        if columns is not None:
            original = original[:, columns]
        assert rows_are_subset(param.detach(), original), name
        expected = original if rows is None else original[rows]
        assert torch.equal(param.detach(), expected), name
    assert len(expected_params) == 0


# --------------------------------------------------------------------------------------------
# TestSaliencyPruner
# --------------------------------------------------------------------------------------------


def test_saliency_pruner_update_mask() -> None:
    """torch.ao: TestSaliencyPruner.test_saliency_pruner_update_mask.

    The rows of lowest L1 norm go: rows of 1s and 2s at level 0.5."""
    model = SimpleLinear()
    with torch.no_grad():
        model.linear1.weight = nn.Parameter(torch.Tensor([[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]]))
    pruning_config: Config = [{"tensor_fqn": "linear1.weight", "sparsity_level": 0.5}]
    pruner = SaliencyPruner({})

    pruner.prepare(model, pruning_config)
    pruner.enable_mask_update = True
    pruner.step()
    pruned_model: Any = pruner.prune()  # read as torch.ao's tests do: attribute by attribute

    expected = torch.Tensor([[3, 3, 3, 3], [4, 4, 4, 4]])
    pruned = pruned_model.linear1.weight
    assert expected.shape == pruned.shape
    assert torch.isclose(expected, pruned, rtol=1e-05, atol=1e-07).all()


def test_lstm_saliency_pruner_update_mask() -> None:
    """torch.ao: TestSaliencyPruner.test_lstm_saliency_pruner_update_mask -- the documented
    difference: fprune's LSTMSaliencyPruner removes whole hidden units.

    The hand-set weights give each gate a different lowest-norm unit: unit 0 in gates 0 and 2,
    unit 1 in gates 1 and 3. torch.ao keeps each gate's largest row (rows 1, 2, 5, 6: hidden
    units 1, 0, 1, 0), masks that no smaller LSTM can compute exactly. fprune scores each unit
    over its four gate rows: both score 12, the tie goes to the lower index, so unit 0 goes
    in every gate and in weight_hh alike, and the pruned LSTM computes what the masked one does.
    """
    model = LSTMLinearModel(input_dim=2, hidden_dim=2, output_dim=2, num_layers=1)
    manual_weights = torch.Tensor([[1, 1], [2, 2], [2, 2], [1, 1], [-1, -1], [-2, -2], [-2, -2], [-1, -1]])
    with torch.no_grad():
        model.lstm.weight_ih_l0 = nn.Parameter(manual_weights)
        model.lstm.weight_hh_l0 = nn.Parameter(torch.Tensor(manual_weights))
        model.lstm.bias_ih_l0 = nn.Parameter(manual_weights[:, 0])
        model.lstm.bias_hh_l0 = nn.Parameter(manual_weights[:, 0])

    config: Config = [{"tensor_fqn": "lstm.weight_ih_l0"}, {"tensor_fqn": "lstm.weight_hh_l0"}]
    x = torch.ones((1, 2))
    fx_pruner = LSTMSaliencyPruner({"sparsity_level": 0.5})
    fx_pruner.prepare(model, config)
    fx_pruner.enable_mask_update = True
    fx_pruner.step()

    model.eval()
    pruned_model: Any = fx_pruner.prune()
    pruned_model.eval()

    # both models run, and (unlike torch.ao's) they agree on the kept unit
    decoded, output = model(x)
    pruned_decoded, pruned_output = pruned_model(x)
    torch.testing.assert_close(pruned_decoded, decoded)
    torch.testing.assert_close(pruned_output, output[:, 1:])

    unit_mask = torch.tensor([False, True] * 4)
    assert torch.equal(fx_pruner.state["lstm.weight_ih_l0"]["mask"], unit_mask)
    assert torch.equal(fx_pruner.state["lstm.weight_hh_l0"]["mask"], unit_mask)
    torch_ao_choice = torch.Tensor([[2, 2], [2, 2], [-2, -2], [-2, -2]])  # rows 1, 2, 5, 6: units 1, 0, 1, 0

    lstm = pruned_model.lstm
    assert lstm.hidden_size == 1
    expected = torch.Tensor([[2, 2], [1, 1], [-2, -2], [-1, -1]])  # rows 1, 3, 5, 7: unit 1
    assert expected.shape == lstm.weight_ih_l0.shape == torch_ao_choice.shape
    assert torch.isclose(expected, lstm.weight_ih_l0, rtol=1e-05, atol=1e-07).all()
    assert not torch.equal(lstm.weight_ih_l0.detach(), torch_ao_choice)

    expected = torch.Tensor([[2], [1], [-2], [-1]])  # and unit 1's column
    assert expected.shape == lstm.weight_hh_l0.shape
    assert torch.isclose(expected, lstm.weight_hh_l0, rtol=1e-05, atol=1e-07).all()

    expected = torch.Tensor([2, 1, -2, -1])
    for pruned in (lstm.bias_ih_l0, lstm.bias_hh_l0):
        assert expected.shape == pruned.shape
        assert torch.isclose(expected, pruned, rtol=1e-05, atol=1e-07).all()


# --------------------------------------------------------------------------------------------
# TestBaseStructuredSparsifier
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_constructor(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_constructor."""
    with pytest.raises(TypeError, match="BaseStructuredSparsifier.*update_mask"):
        BaseStructuredSparsifier()  # type: ignore[abstract]
    model = SimpleLinear()
    model1 = copy.deepcopy(model).to(device)
    pruner = SimplePruner(None)
    pruner.prepare(model1, None)
    pruner.enable_mask_update = True
    for module in group_modules(pruner):
        assert module.weight.device.type == device.type
    assert len(pruner.groups) == 5
    pruner.step()
    # can instantiate the model with configs
    model2 = copy.deepcopy(model).to(device)
    pruner = SimplePruner({"test": 3})
    pruner.prepare(model2, [{"tensor_fqn": "seq.0.weight"}])
    assert len(pruner.groups) == 1
    assert pruner.groups[0]["module_fqn"] == "seq.0"
    assert "test" in pruner.groups[0]
    assert pruner.groups[0]["test"] == 3


LINEAR_MODELS = [SimpleLinear, LinearBias, LinearActivation, LinearActivationFunctional]  # without and with bias


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prepare_linear(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prepare_linear."""
    for make in LINEAR_MODELS:
        model = make().to(device)
        x = torch.ones(128, 7, device=device)
        pruner = SimplePruner(None)
        pruner.prepare(model, None)
        check_pruner_prepared(pruner, device)
        assert model(x).shape == (128, 10)


CONV_MODELS = [SimpleConv2d, Conv2dBias, Conv2dActivation, Conv2dPadBias, Conv2dPool]
CONV_SHAPES = [(1, 52, 20, 20), (1, 52, 18, 18), (1, 52, 18, 18), (1, 52, 24, 24), (1, 52, 3, 3)]


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prepare_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prepare_conv2d."""
    for make, shape in zip(CONV_MODELS, CONV_SHAPES):
        model = make().to(device)
        x = torch.ones((1, 1, 28, 28), device=device)
        pruner = SimplePruner(None)
        pruner.prepare(model, None)
        check_pruner_prepared(pruner, device)
        assert model(x).shape == shape


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_step_linear(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_step_linear."""
    for make in LINEAR_MODELS:
        model = make().to(device)
        pruner = SimplePruner(None)
        pruner.prepare(model, None)
        pruner.enable_mask_update = True
        check_pruner_valid_before_step(pruner, device)
        pruner.step()
        check_pruner_valid_after_step(pruner, 1, device)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_step_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_step_conv2d."""
    for make, shape in zip(CONV_MODELS, CONV_SHAPES):
        model = make().to(device)
        x = torch.ones((1, 1, 28, 28), device=device)
        pruner = SimplePruner(None)
        pruner.prepare(model, None)
        pruner.enable_mask_update = True
        check_pruner_valid_before_step(pruner, device)
        pruner.step()
        check_pruner_valid_after_step(pruner, 1, device)
        assert model(x).shape == shape


def fqns(*names: str) -> Config:
    return [{"tensor_fqn": name} for name in names]


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_linear_linear(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_linear_linear."""
    configs = [
        fqns("seq.0.weight", "seq.1.weight", "seq.2.weight"),
        fqns("seq.0.weight", "seq.1.weight", "seq.2.weight", "linear1.weight"),
        fqns("seq.0.weight", "seq.2.weight"),
    ]
    for also_prune_bias in (True, False):
        for config in configs:
            run_linear(SimpleLinear(), config, (128, 10), device, also_prune_bias)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_linear_bias_linear(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_linear_bias_linear."""
    configs = [
        fqns("seq.0.weight", "seq.1.weight"),  # linear(bias) -> linear(no bias)
        fqns("seq.2.weight", "seq.3.weight"),  # linear(bias) -> linear(bias)
        fqns("seq.0.weight", "seq.1.weight", "seq.2.weight"),  # linear(no bias) -> linear(bias)
    ]
    for also_prune_bias in (True, False):
        for config in configs:
            run_linear(LinearBias(), config, (128, 10), device, also_prune_bias)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_linear_activation_linear(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_linear_activation_linear."""
    config = fqns("seq.0.weight", "seq.2.weight", "seq.4.weight", "linear1.weight")
    for also_prune_bias in (True, False):
        run_linear(LinearActivation(), config, (128, 10), device, also_prune_bias)  # activation modules
        run_linear(LinearActivationFunctional(), config, (128, 10), device, also_prune_bias)  # functional


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_conv2d_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_conv2d_conv2d."""
    configs = [
        fqns("seq.0.weight"),  # within a Sequential
        fqns("seq.0.weight", "seq.1.weight", "conv2d1.weight"),  # across Sequential blocks
    ]
    x = torch.ones((1, 1, 28, 28), device=device)
    for also_prune_bias in (True, False):
        for config in configs:
            run_conv2d(SimpleConv2d(), config, x, (1, 52, 20, 20), device, also_prune_bias)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_conv2d_bias_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_conv2d_bias_conv2d."""
    configs = [
        fqns("seq.0.weight", "seq.1.weight"),  # conv2d(bias) -> conv2d(bias)
        fqns("seq.0.weight", "seq.1.weight", "conv2d1.weight"),  # conv2d(no bias) -> conv2d(bias)
        fqns("seq.0.weight", "seq.1.weight", "seq.2.weight"),  # conv2d(bias) -> conv2d(no bias)
    ]
    x = torch.ones((1, 1, 28, 28), device=device)
    for also_prune_bias in (True, False):
        for config in configs:
            run_conv2d(Conv2dBias(), config, x, (1, 52, 18, 18), device, also_prune_bias)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_conv2d_activation_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_conv2d_activation_conv2d."""
    configs = [
        fqns("seq.4.weight"),  # conv2d(no bias) -> activation -> conv2d(no bias)
        fqns("seq.0.weight", "seq.2.weight"),  # conv2d(bias) -> activation -> conv2d(bias)
        fqns("seq.2.weight", "seq.4.weight"),  # conv2d(bias) -> activation -> conv2d(no bias)
        fqns("conv2d1.weight"),  # conv2d(no bias) -> activation -> conv2d(bias)
    ]
    x = torch.ones((1, 1, 28, 28), device=device)
    for also_prune_bias in (True, False):
        for config in configs:
            run_conv2d(Conv2dActivation(), config, x, (1, 52, 18, 18), device, also_prune_bias)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_conv2d_padding_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_conv2d_padding_conv2d.

    With prune_bias=False, a producer whose removed channels carry their bias into a
    zero-padded conv stays full size with its removed rows zeroed (torch.ao does the same),
    with one warning; it used to raise PruneError here. With prune_bias=True everything shrinks."""
    configs = [
        fqns("seq.4.weight"),  # conv(padded, bias) -> conv(padded, bias)
        fqns("seq.2.weight"),  # conv(no bias, no pad) -> conv(padded, bias)
        fqns("seq.0.weight"),  # conv(padded, bias) -> conv(no bias, no pad)
        fqns("seq.6.weight"),  # conv(pad, bias) -> conv(no pad, bias)
        fqns("seq.8.weight"),  # conv(no pad, bias) -> conv(pad, bias)
    ]
    x = torch.ones((1, 1, 28, 28), device=device)
    unshrunk: list[str] = []
    for also_prune_bias in (True, False):
        for config in configs:
            unshrunk += run_conv2d(Conv2dPadBias(), config, x, (1, 52, 24, 24), device, also_prune_bias)
    # the two producers with a bias before a padded conv: ReLU / Tanh of random biases is not all 0
    assert sorted(unshrunk) == ["seq.4.weight", "seq.8.weight"]


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_prune_conv2d_pool_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_conv2d_pool_conv2d.

    With prune_bias=False every producer here feeds a padded conv or a padded average pool, so
    all four stay full size (zeroed rows) with one warning; it used to raise PruneError."""
    config = fqns("seq.0.weight", "seq.3.weight", "conv2d1.weight", "conv2d2.weight")
    x = torch.ones((1, 1, 28, 28), device=device)
    assert run_conv2d(Conv2dPool(), config, x, (1, 52, 3, 3), device, True) == []
    unshrunk = run_conv2d(Conv2dPool(), config, x, (1, 52, 3, 3), device, False)
    assert sorted(unshrunk) == ["conv2d1.weight", "conv2d2.weight", "seq.0.weight", "seq.3.weight"]


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_complex_conv2d(device: torch.device) -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_complex_conv2d (Conv2d -> pool -> flatten ->
    Linear, functional and module flatten). With prune_bias=False the producers before the
    padded conv and the padded average pool stay full size, with one warning; conv2d2, whose
    consumer is the Linear after an adaptive pool, shrinks."""
    config = fqns("seq.0.weight", "seq.3.weight", "conv2d1.weight", "conv2d2.weight")
    x = torch.ones((1, 1, 28, 28), device=device)
    for also_prune_bias in (True, False):
        for make in (Conv2dPoolFlattenFunctional, Conv2dPoolFlatten):
            unshrunk = run_conv2d(make(), config, x, (1, 13), device, also_prune_bias)
            assert "conv2d2.weight" not in unshrunk
            assert also_prune_bias or unshrunk


def bottom_half_lstm(model: nn.Module, layers: int) -> BottomHalfLSTMPruner:
    config = [{"tensor_fqn": f"lstm.weight_{kind}_l{layer}"} for layer in range(layers) for kind in ("ih", "hh")]
    fx_pruner = BottomHalfLSTMPruner({"sparsity_level": 0.5})
    fx_pruner.prepare(model, config)
    fx_pruner.enable_mask_update = True
    fx_pruner.step()
    return fx_pruner


def test_prune_lstm_linear_multiple_layer() -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_lstm_linear_multiple_layer.

    The prepared model runs a forward with autograd on before ``prune()`` (this used to crash
    copying the LSTM's cached masked weights). Each pruned parameter holds the kept rows and
    columns of the original, and the pruned model computes what the masked model computes."""
    model = LSTMLinearModel(input_dim=8, hidden_dim=8, output_dim=8, num_layers=2)
    fx_pruner = bottom_half_lstm(model, 2)

    model.eval()
    out_expected, lstm_out_expected = model(lstm_input())
    pruned_model = fx_pruner.prune()
    pruned_model.eval()
    out_pruned, lstm_out_pruned = pruned_model(lstm_input())

    check_lstm_parameters_are_subsets(model, pruned_model, fx_pruner)
    torch.testing.assert_close(out_pruned, out_expected)
    torch.testing.assert_close(lstm_out_pruned, lstm_out_expected[:, :4])


def _lstm_linear_single_layer() -> tuple[Tensor, Tensor]:
    """torch.ao's single-layer LSTM -> Linear scenario (two of its tests run it): the pruned
    LSTM's output is the first half of the masked one's; the Linear's output keeps its shape.
    Returns the (masked, pruned) Linear outputs."""
    model = LSTMLinearModel(input_dim=8, hidden_dim=8, output_dim=8, num_layers=1)
    fx_pruner = bottom_half_lstm(model, 1)
    model.eval()

    out_expected, lstm_out_expected = model(lstm_input())
    pruned_model = fx_pruner.prune()
    pruned_model.eval()
    out_pruned, lstm_out_pruned = pruned_model(lstm_input())
    _, c = lstm_out_expected.size()

    assert torch.isclose(lstm_out_expected[:, : c // 2], lstm_out_pruned, rtol=1e-05, atol=1e-07).all()
    assert out_expected.shape == out_pruned.shape
    return out_expected, out_pruned


def test_prune_lstm_linear_single_layer() -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_lstm_linear_single_layer.

    The kept units are the first half (BottomHalfLSTMPruner), so the pruned LSTM's output is
    the first half of the masked one's; the Linear's output keeps its shape."""
    out_expected, out_pruned = _lstm_linear_single_layer()
    torch.testing.assert_close(out_pruned, out_expected)  # fprune: the same values too


def test_prune_lstm_layernorm_linear_multiple_layer() -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_lstm_layernorm_linear_multiple_layer.

    LSTM -> LayerNorm -> Linear, 2 layers, a forward with autograd on before ``prune()``. The
    LayerNorm normalizes over the kept units only after pruning (as in torch.ao), so the
    outputs are not compared; the parameters are, and so is the returned (h, c) state."""
    model = LSTMLayerNormLinearModel(input_dim=8, output_dim=8, hidden_dim=8, num_layers=2)
    fx_pruner = bottom_half_lstm(model, 2)

    model.eval()
    out_expected, (h_expected, c_expected) = model(lstm_input())
    pruned_model = fx_pruner.prune()
    pruned_model.eval()
    out_pruned, (h_pruned, c_pruned) = pruned_model(lstm_input())

    check_lstm_parameters_are_subsets(model, pruned_model, fx_pruner)
    assert out_pruned.shape == out_expected.shape
    torch.testing.assert_close(h_pruned, h_expected[:, :4])
    torch.testing.assert_close(c_pruned, c_expected[:, :4])


def test_prune_lstm_layernorm_linear_single_layer() -> None:
    """torch.ao: TestBaseStructuredSparsifier.test_prune_lstm_layernorm_linear_single_layer.

    torch.ao's test builds an LSTMLinearModel despite its name; that scenario is run as
    written, then the same checks on the LSTMLayerNormLinearModel the name promises (whose
    Linear output is not compared: the LayerNorm renormalizes over the kept units)."""
    _lstm_linear_single_layer()

    norm_model = LSTMLayerNormLinearModel(input_dim=8, hidden_dim=8, output_dim=8, num_layers=1)
    norm_pruner = bottom_half_lstm(norm_model, 1)
    norm_model.eval()
    out_expected, (h_expected, _) = norm_model(lstm_input())
    norm_pruned: Any = norm_pruner.prune()
    out_pruned, (h_pruned, _) = norm_pruned(lstm_input())
    assert out_expected.shape == out_pruned.shape
    assert torch.isclose(h_expected[:, :4], h_pruned, rtol=1e-05, atol=1e-07).all()
    assert norm_pruned.norm.normalized_shape == (4,)


# --------------------------------------------------------------------------------------------
# TestFPGMPruner
# --------------------------------------------------------------------------------------------


class SimpleConvFPGM(nn.Module):
    """conv2d1 (1 -> 3, filters all 3.0, 2.0, 0.1) -> conv2d2 (3 -> 4, filters 6, 7, 0.4, 0.5),
    both padded and bias-free. By norm the 0.1 filter would go; by FPGM the 2.0 filter, the
    one nearest the others."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d1 = nn.Conv2d(in_channels=1, out_channels=3, kernel_size=3, padding=1, bias=False)
        with torch.no_grad():
            self.conv2d1.weight.copy_(torch.ones(self.conv2d1.weight.shape) * torch.tensor([3.0, 2.0, 0.1])[:, None, None, None])
        self.conv2d2 = nn.Conv2d(in_channels=3, out_channels=4, kernel_size=3, padding=1, bias=False)
        with torch.no_grad():
            self.conv2d2.weight.copy_(torch.ones(self.conv2d2.weight.shape) * torch.tensor([6.0, 7.0, 0.4, 0.5])[:, None, None, None])

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2d2(self.conv2d1(x))
        return out


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_compute_distance(device: torch.device) -> None:
    """torch.ao: TestFPGMPruner.test_compute_distance.

    The distance matrix of the flattened filters is [[0, 3, 8.7], [3, 0, 5.7], [8.7, 5.7, 0]],
    so the summed distances are [11.7, 8.7, 14.4]."""
    model = SimpleConvFPGM().to(device)
    pruner = FPGMPruner(0.3)
    dist_conv1 = pruner._compute_distance(model.conv2d1.weight)

    flattened_filters = torch.tensor([3.0, 2.0, 0.1], device=device)[:, None].expand(3, 9)
    expected_dist_matrix_conv1 = torch.cdist(flattened_filters, flattened_filters, p=2)
    expected_dist_conv1 = torch.sum(torch.abs(expected_dist_matrix_conv1), 1)
    assert torch.isclose(dist_conv1, expected_dist_conv1, rtol=1e-05, atol=1e-07).all()
    torch.testing.assert_close(dist_conv1.cpu(), torch.tensor([11.7, 8.7, 14.4]))


def fpgm_single_layer(expected_conv1: Tensor, device: torch.device) -> None:
    """torch.ao's ``_test_update_mask_on_single_layer``."""
    model = SimpleConvFPGM().to(device)
    x = torch.ones((1, 1, 32, 32), device=device)
    pruner = FPGMPruner(0.3)
    pruner.prepare(model, fqns("conv2d1.weight"))
    pruner.enable_mask_update = True
    pruner.step()
    assert group_modules(pruner)[0].parametrizations.weight[0].mask[-1].item() is not False, "do not prune the least-norm filter"

    pruned_model: Any = pruner.prune()
    pruned_y = pruned_model(x)
    expected_conv1 = expected_conv1.to(device)
    assert pruned_y.shape == (1, 4, 32, 32)
    assert pruned_model.conv2d1.weight.shape == expected_conv1.shape
    assert pruned_model.conv2d2.weight.shape == (4, 2, 3, 3), "conv2d2 should have input channel pruned"
    assert torch.isclose(pruned_model.conv2d1.weight, expected_conv1, rtol=1e-05, atol=1e-07).all()


def fpgm_multiple_layer(expected_conv1: Tensor, expected_conv2: Tensor, device: torch.device) -> None:
    """torch.ao's ``_test_update_mask_on_multiple_layer``."""
    model = SimpleConvFPGM().to(device)
    x = torch.ones((1, 1, 32, 32), device=device)
    pruner = FPGMPruner(0.3)
    pruner.prepare(model, [{"tensor_fqn": "conv2d1.weight"}, {"tensor_fqn": "conv2d2.weight", "sparsity_level": 0.5}])
    pruner.enable_mask_update = True
    pruner.step()
    mask = group_modules(pruner)[0].parametrizations.weight[0].mask
    assert mask[-1].item() is not False or mask[-2].item() is not False, "Do not prune all least-norm filters"

    pruned_model: Any = pruner.prune()
    pruned_y = pruned_model(x)
    expected_conv1 = expected_conv1.to(device)
    expected_conv2 = expected_conv2.to(device)
    assert pruned_y.shape == (1, 2, 32, 32)
    assert pruned_model.conv2d1.weight.shape == expected_conv1.shape
    assert pruned_model.conv2d2.weight.shape == expected_conv2.shape
    assert torch.isclose(pruned_model.conv2d1.weight, expected_conv1, rtol=1e-05, atol=1e-07).all()
    assert torch.isclose(pruned_model.conv2d2.weight, expected_conv2, rtol=1e-05, atol=1e-07).all()


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_update_mask(device: torch.device) -> None:
    """torch.ao: TestFPGMPruner.test_update_mask (one layer at 0.3: the 2.0 filter goes; then
    conv2d2 at 0.5 too: its 6.0 and 0.5 filters go)."""
    expected_conv1 = torch.ones((2, 1, 3, 3)) * torch.tensor([3.0, 0.1])[:, None, None, None]
    expected_conv2 = torch.ones((2, 2, 3, 3)) * torch.tensor([7.0, 0.4])[:, None, None, None]
    fpgm_single_layer(expected_conv1, device)
    fpgm_multiple_layer(expected_conv1, expected_conv2, device)


def test_this_suite_has_one_test_per_torch_ao_test() -> None:
    """The 22 torch.ao tests, each named in exactly one docstring here."""
    torch_ao_tests: Sequence[str] = (
        "TestSaliencyPruner.test_saliency_pruner_update_mask",
        "TestSaliencyPruner.test_lstm_saliency_pruner_update_mask",
        *(
            f"TestBaseStructuredSparsifier.test_{name}"
            for name in (
                "constructor", "prepare_linear", "prepare_conv2d", "step_linear", "step_conv2d",
                "prune_linear_linear", "prune_linear_bias_linear", "prune_linear_activation_linear",
                "prune_conv2d_conv2d", "prune_conv2d_bias_conv2d", "prune_conv2d_activation_conv2d",
                "prune_conv2d_padding_conv2d", "prune_conv2d_pool_conv2d", "complex_conv2d",
                "prune_lstm_linear_multiple_layer", "prune_lstm_linear_single_layer",
                "prune_lstm_layernorm_linear_multiple_layer", "prune_lstm_layernorm_linear_single_layer",
            )
        ),  # fmt: skip
        "TestFPGMPruner.test_compute_distance",
        "TestFPGMPruner.test_update_mask",
    )
    assert len(torch_ao_tests) == 22
    docs = [
        (name, value.__doc__ or "")
        for name, value in globals().items()
        if name.startswith("test_") and callable(value) and name != "test_this_suite_has_one_test_per_torch_ao_test"
    ]
    assert len(docs) == 22
    for torch_ao_test in torch_ao_tests:
        holders = [name for name, doc in docs if f"torch.ao: {torch_ao_test}" in doc]
        assert holders == [f"test_{torch_ao_test.rpartition('.test_')[2]}"], torch_ao_test
