"""fprune.sparsifier: torch.ao's prepare / step / prune workflow over the functional core.

The invariant behind most tests: after ``step()``, the prepared (masked) model computes what
``prune()``'s model computes (removed output channels dropped), and ``prune()`` leaves the
prepared model as it was. Differential tests against torch.ao are in test_sparsifier_torch_ao.py.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import fprune
from fprune import sparsifier
from fprune.sparsifier import (
    BaseStructuredSparsifier,
    FakeStructuredSparsity,
    FPGMPruner,
    LSTMSaliencyPruner,
    SaliencyPruner,
)

from ..models import Branching, ConvBNNet, LSTMNet, ReferenceMLP, Untraceable
from ..typing import sparsifier_usage

README = Path(__file__).resolve().parent.parent.parent / "README.md"
MLP_CONFIG: list[dict[str, object]] = [
    {"tensor_fqn": fqn, "sparsity_level": 0.5} for fqn in ("seq.0.weight", "seq.2.weight", "seq.4.weight", "linear.weight")
]
ATOL = 1e-5


def prepared_mlp(defaults: dict[str, object] | None = None) -> tuple[SaliencyPruner, ReferenceMLP]:
    torch.manual_seed(0)
    model = ReferenceMLP().eval()
    pruner = SaliencyPruner({"prune_bias": True} if defaults is None else defaults)
    pruner.prepare(model, MLP_CONFIG)
    return pruner, model


def mask_of(pruner: BaseStructuredSparsifier, fqn: str) -> Tensor:
    return pruner.state[fqn]["mask"]


def masked_and_pruned(pruner: BaseStructuredSparsifier, x: Tensor, out_fqn: str | None, dim: int = 1) -> tuple[Tensor, Tensor]:
    """The prepared model's output (restricted to the kept outputs of `out_fqn`) and the pruned one's."""
    with torch.no_grad():
        masked = pruner.model(x)
        pruned = pruner.prune()(x)
    if out_fqn is not None:
        masked = masked.index_select(dim, mask_of(pruner, out_fqn).nonzero().squeeze(1))
    return masked, pruned


def parametrizations_of(model: nn.Module, fqn: str) -> parametrize.ParametrizationList:
    module_fqn, _, name = fqn.rpartition(".")
    lists = model.get_submodule(module_fqn).parametrizations
    assert isinstance(lists, nn.ModuleDict)
    found = lists[name]
    assert isinstance(found, parametrize.ParametrizationList)
    return found


def fake_of(model: nn.Module, fqn: str) -> FakeStructuredSparsity:
    first = parametrizations_of(model, fqn)[0]
    assert isinstance(first, FakeStructuredSparsity)
    return first


def original_of(model: nn.Module, fqn: str) -> Tensor:
    """The unmasked tensor behind a parametrized `fqn`."""
    original = parametrizations_of(model, fqn).original
    assert isinstance(original, Tensor)
    return original


def tensor_of(model: nn.Module, fqn: str) -> Tensor:
    """`fqn` as the model computes with it (masked where parametrized)."""
    module_fqn, _, name = fqn.rpartition(".")
    value = getattr(model.get_submodule(module_fqn), name)
    assert isinstance(value, Tensor)
    return value


def parametrization_kinds(model: nn.Module) -> dict[str, list[str]]:
    return {
        f"{fqn}.{name}": [type(p).__name__ for p in plist]
        for fqn, module in model.named_modules()
        if parametrize.is_parametrized(module)
        for name, plist in module.parametrizations.items()
    }


# --------------------------------------------------------------------------------------------
# the README's migration program, and the typed usage snippet
# --------------------------------------------------------------------------------------------


def test_readme_migration_example_runs_and_prints_396150_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL) if "from fprune.sparsifier import" in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {"__name__": "migration_example"}
    exec(compile(blocks[0], "README.md migration example", "exec"), namespace)
    out = capsys.readouterr().out
    before, after = out.split("after pruning:")
    assert re.search(r"^total\s+1233500$", before, flags=re.MULTILINE)
    assert re.search(r"^total\s+396150$", after, flags=re.MULTILINE)
    assert re.search(r"^seq\.2\.weight\s+\(400, 250\)\s+100000$", after, flags=re.MULTILINE)
    model, pruned = namespace["model"], namespace["pruned"]
    assert isinstance(model, nn.Module) and isinstance(pruned, nn.Module)
    assert type(pruned) is type(model)
    assert parametrize.is_parametrized(model.get_submodule("seq.0"))  # the prepared model is still prepared


def test_typed_usage_snippet_runs() -> None:
    ao_style, narrowing, fpgm = sparsifier_usage.run()
    assert [tuple(p.shape) for p in ao_style.parameters()] == [(4, 4), (4,), (3, 4), (3,), (2, 3), (2,)]
    assert [tuple(p.shape) for p in narrowing.parameters()] == [(6, 4), (6,), (5, 6), (5,), (2, 5), (2,)]
    assert [tuple(p.shape) for p in fpgm.parameters()] == [(8, 4), (8,), (3, 8), (3,), (2, 3), (2,)]


def test_public_names_are_explicit_and_documented() -> None:
    names = {name for name in vars(sparsifier) if not name.startswith("_")}
    assert names == {
        "BaseStructuredSparsifier",
        "FPGMPruner",
        "FakeStructuredSparsity",
        "LSTMSaliencyPruner",
        "SaliencyPruner",
        "masked_weight_and_mask",
        "sparsity_level",
    }
    for name in names:
        assert inspect.getdoc(getattr(sparsifier, name)), name
    assert not names & set(vars(fprune))  # not re-exported at the top level
    assert inspect.isabstract(BaseStructuredSparsifier)


# --------------------------------------------------------------------------------------------
# state: defaults, groups, state, model
# --------------------------------------------------------------------------------------------


def test_prepare_fills_groups_and_state_like_torch_ao() -> None:
    pruner, model = prepared_mlp({"prune_bias": True, "note": [1]})
    assert pruner.model is model
    assert pruner.defaults == {"prune_bias": True, "note": [1]}
    assert pruner.enable_mask_update is True
    assert [g["tensor_fqn"] for g in pruner.groups] == ["seq.0.weight", "seq.2.weight", "seq.4.weight", "linear.weight"]
    first = pruner.groups[0]
    assert first == {
        "prune_bias": True,
        "note": [1],
        "sparsity_level": 0.5,
        "module": model.seq[0],
        "module_fqn": "seq.0",
        "tensor_name": "weight",
        "tensor_fqn": "seq.0.weight",
    }
    assert first["note"] is not pruner.defaults["note"]  # defaults are deep-copied per group, as in torch.ao
    for fqn, rows in [("seq.0.weight", 500), ("seq.2.weight", 800), ("seq.4.weight", 600), ("linear.weight", 4)]:
        parametrization = fake_of(model, fqn)
        assert parametrization.mask is mask_of(pruner, fqn)
        assert mask_of(pruner, fqn).dtype == torch.bool and mask_of(pruner, fqn).shape == (rows,)
        assert bool(mask_of(pruner, fqn).all())


def test_prepare_masks_the_bias_with_its_rows_and_keeps_parameter_identity() -> None:
    torch.manual_seed(0)
    model = ReferenceMLP()
    params = dict(model.named_parameters())
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, MLP_CONFIG[:3])
    assert parametrization_kinds(model) == {
        "seq.0.weight": ["FakeStructuredSparsity"],
        "seq.0.bias": ["_FollowMask"],
        "seq.2.weight": ["FakeStructuredSparsity"],
        "seq.4.weight": ["FakeStructuredSparsity"],
        "seq.4.bias": ["_FollowMask"],
    }
    assert original_of(model, "seq.0.weight") is params["seq.0.weight"]
    assert original_of(model, "seq.0.bias") is params["seq.0.bias"]
    assert model.linear.weight is params["linear.weight"]


def test_prepare_with_prune_bias_false_leaves_the_bias_unmasked() -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    pruner = SaliencyPruner({"sparsity_level": 0.5, "prune_bias": False})
    pruner.prepare(model, [{"tensor_fqn": "conv1.weight"}, {"tensor_fqn": "conv2.weight", "prune_bias": True}])
    assert parametrization_kinds(model) == {
        "conv1.weight": ["FakeStructuredSparsity"],
        "conv2.weight": ["FakeStructuredSparsity"],
        "conv2.bias": ["_FollowMask"],
        "bn2.weight": ["_FollowMask"],
        "bn2.bias": ["_FollowMask"],
    }


def test_config_none_prunes_every_linear_conv2d_and_lstm_child_in_torch_ao_order() -> None:
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(ReferenceMLP(), None)
    assert [g["tensor_fqn"] for g in pruner.groups] == ["linear.weight", "seq.0.weight", "seq.2.weight", "seq.4.weight"]

    saliency = SaliencyPruner({"sparsity_level": 0.5})
    saliency.prepare(nn.Sequential(LSTMNet(layers=2)), None)  # torch.ao would name `0.lstm.weight`
    assert [g["tensor_fqn"] for g in saliency.groups] == [
        "0.lstm.weight_ih_l0", "0.lstm.weight_hh_l0", "0.lstm.weight_ih_l1", "0.lstm.weight_hh_l1", "0.linear.weight",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# step
# --------------------------------------------------------------------------------------------


class Recorder(BaseStructuredSparsifier):
    """Records each update_mask call; clears row 0."""

    def __init__(self) -> None:
        super().__init__({"sparsity_level": 0.5, "custom": "x"})
        self.calls: list[tuple[nn.Module, str, dict[str, object], bool]] = []

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        self.calls.append((module, tensor_name, kwargs, torch.is_grad_enabled()))
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        mask.data[0] = False


def test_step_calls_update_mask_with_every_config_key_under_no_grad() -> None:
    model = ReferenceMLP()
    pruner = Recorder()
    pruner.prepare(model, [{"tensor_fqn": "seq.2.weight", "prune_bias": False}, {"tensor_fqn": "linear.weight"}])
    pruner.enable_mask_update = False
    pruner.step()
    assert pruner.calls == []
    assert bool(mask_of(pruner, "seq.2.weight").all())

    pruner.enable_mask_update = True
    pruner.groups[1]["sparsity_level"] = 0.75  # a scheduler edits groups between steps
    pruner.step()
    assert [(module, name) for module, name, _, _ in pruner.calls] == [(model.seq[2], "weight"), (model.linear, "weight")]
    assert pruner.calls[0][2] == {
        "sparsity_level": 0.5, "custom": "x", "prune_bias": False, "module_fqn": "seq.2", "tensor_fqn": "seq.2.weight",
    }  # fmt: skip
    assert pruner.calls[1][2]["sparsity_level"] == 0.75 and "prune_bias" not in pruner.calls[1][2]
    assert not any(grad for *_, grad in pruner.calls)
    assert mask_of(pruner, "linear.weight").tolist() == [False, True, True, True]


def test_saliency_pruner_golden_rows() -> None:
    """torch.ao's golden test: rows of 1s, 2s, 3s, 4s at level 0.5 keep the 3s and 4s."""
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model.get_parameter("0.weight").copy_(torch.arange(1.0, 5.0).reshape(4, 1).expand(4, 4))
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "0.weight"}])
    pruner.step()
    pruned = pruner.prune()
    assert pruned.get_parameter("0.weight").tolist() == [[3.0] * 4, [4.0] * 4]
    assert pruned.get_parameter("1.weight").shape == (2, 2)


def test_fpgm_pruner_golden_filters_and_distances() -> None:
    """torch.ao's golden FPGM filters [3, 2, 0.1] x ones(1, 3, 3): distances [11.7, 8.7, 14.4],
    so at level 0.3 (round(0.9) = 1 filter) the 2.0 filter goes; dist=1 and a callable agree."""
    results = []
    for dist in (None, 2, 1, lambda rows: torch.cdist(rows, rows, p=1.0)):
        conv = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.Conv2d(3, 2, 1))
        with torch.no_grad():
            conv.get_parameter("0.weight").copy_(torch.tensor([3.0, 2.0, 0.1]).reshape(3, 1, 1, 1).expand(3, 1, 3, 3))
        pruner = FPGMPruner(0.3, dist=dist)
        assert pruner.defaults == {"sparsity_level": 0.3}
        pruner.prepare(conv, [{"tensor_fqn": "0.weight"}])
        pruner.step()
        results.append(mask_of(pruner, "0.weight").tolist())
    assert results == [[True, False, True]] * 4
    rows = torch.tensor([3.0, 2.0, 0.1]).reshape(3, 1).expand(3, 9)
    torch.testing.assert_close(fprune.fpgm_scores(rows), torch.tensor([11.7, 8.7, 14.4]))


def test_masks_accumulate_across_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "0.weight"}])
    pruner.step()
    first = mask_of(pruner, "0.weight").clone()
    pruner.step()  # the removed rows are zero now, so they are the lowest again: no change
    assert torch.equal(mask_of(pruner, "0.weight"), first) and int(first.sum()) == 4
    pruner.groups[0]["sparsity_level"] = 0.75
    pruner.step()
    assert int(mask_of(pruner, "0.weight").sum()) == 2
    assert not bool((mask_of(pruner, "0.weight") & ~first).any())  # a subset of what was kept


def test_state_follows_the_mask_buffer_when_the_model_moves() -> None:
    """``model.to(device)`` replaces buffers; the bias follows the weight's current mask and
    ``step`` points ``state`` at the new buffer (simulated by cloning every buffer, as ``to`` does)."""
    pruner, model = prepared_mlp({"prune_bias": True})
    old = mask_of(pruner, "seq.0.weight")
    for module in model.modules():
        for name, buffer in module._buffers.items():
            module._buffers[name] = None if buffer is None else buffer.clone()
    new = fake_of(model, "seq.0.weight").mask
    assert new is not old
    pruner.step()
    assert mask_of(pruner, "seq.0.weight") is new and int(new.sum()) == 250 and bool(old.all())
    assert int((tensor_of(model, "seq.0.bias") == 0).sum()) == 250
    masked, pruned = masked_and_pruned(pruner, torch.randn(4, 700), "linear.weight")
    torch.testing.assert_close(pruned, masked, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# prune: a new model, equal to the masked one; the prepared model stays usable
# --------------------------------------------------------------------------------------------


def test_prune_returns_a_new_model_and_leaves_the_prepared_model_as_it_was() -> None:
    pruner, model = prepared_mlp()
    pruner.step()
    x = torch.randn(8, 700)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: id(p) for k, p in model.named_parameters()}
    masks = {fqn: mask_of(pruner, fqn) for fqn in pruner.state}
    with torch.no_grad():
        before = model(x)

    pruned = pruner.prune()
    assert type(pruned) is ReferenceMLP
    assert [(k, tuple(p.shape)) for k, p in pruned.named_parameters()] == [
        ("seq.0.weight", (250, 700)), ("seq.0.bias", (250,)), ("seq.2.weight", (400, 250)),
        ("seq.4.weight", (300, 400)), ("seq.4.bias", (300,)), ("linear.weight", (2, 300)),
    ]  # fmt: skip
    assert sum(p.numel() for p in pruned.parameters()) == 396150
    assert not any(parametrize.is_parametrized(m) for m in pruned.modules())
    model_storage = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    assert not any(t.untyped_storage().data_ptr() in model_storage for t in pruned.parameters())

    # self.model: same parametrizations, masks, parameters and outputs
    assert sorted(model.state_dict()) == sorted(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert {k: id(p) for k, p in model.named_parameters()} == params
    assert all(mask_of(pruner, fqn) is mask for fqn, mask in masks.items())
    with torch.no_grad():
        assert torch.equal(model(x), before)
        torch.testing.assert_close(pruned(x), before[:, masks["linear.weight"]], atol=ATOL, rtol=1e-5)

    # ... and usable: train it, step again, prune again
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.autograd.backward(torch.nn.functional.mse_loss(model(x), torch.zeros(8, 4)))
    optimizer.step()
    pruner.groups[0]["sparsity_level"] = 0.75
    pruner.step()
    masked, again = masked_and_pruned(pruner, x, "linear.weight")
    first = pruner.prune().get_submodule("seq.0")
    assert again.shape == (8, 2) and isinstance(first, nn.Linear) and first.out_features == 125
    torch.testing.assert_close(again, masked, atol=ATOL, rtol=1e-5)


def _bn_with_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            with torch.no_grad():
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    return model.eval()


CONV_BN_CONFIG: list[dict[str, object]] = [{"tensor_fqn": "conv1.weight"}, {"tensor_fqn": "conv2.weight"}]
LSTM_CONFIG: list[dict[str, object]] = [{"tensor_fqn": f"lstm.weight_{k}_l{i}"} for i in (0, 1) for k in ("ih", "hh")]
MASKED_EQUALS_PRUNED: dict[str, tuple[Callable[[], nn.Module], Callable[[], BaseStructuredSparsifier], list[dict[str, object]], tuple[int, ...], str | None, int]] = {
    "mlp-saliency": (ReferenceMLP, lambda: SaliencyPruner({"sparsity_level": 0.5}), MLP_CONFIG, (4, 700), "linear.weight", 1),
    "mlp-keep-bias": (ReferenceMLP, lambda: SaliencyPruner({"sparsity_level": 0.5, "prune_bias": False}), MLP_CONFIG, (4, 700), "linear.weight", 1),
    "mlp-fpgm": (ReferenceMLP, lambda: FPGMPruner(0.3), MLP_CONFIG, (4, 700), "linear.weight", 1),
    "conv-bn-prune-bias": (lambda: _bn_with_statistics(ConvBNNet()), lambda: SaliencyPruner({"sparsity_level": 0.5}), CONV_BN_CONFIG, (2, 3, 14, 14), None, 1),
    "conv-bn-keep-bias": (lambda: _bn_with_statistics(ConvBNNet()), lambda: FPGMPruner(0.5), [{**c, "prune_bias": False} for c in CONV_BN_CONFIG], (2, 3, 14, 14), None, 1),
    "conv-bn-padded": (lambda: _bn_with_statistics(ConvBNNet(padding=1)), lambda: SaliencyPruner({"sparsity_level": 0.5}), CONV_BN_CONFIG, (2, 3, 10, 10), None, 1),
    "lstm-2-layers": (lambda: LSTMNet(layers=2), lambda: LSTMSaliencyPruner({"sparsity_level": 0.5}), LSTM_CONFIG, (2, 5, 5), None, 2),
}  # fmt: skip


@pytest.mark.parametrize("name", MASKED_EQUALS_PRUNED)
def test_the_masked_model_after_step_equals_the_pruned_model(name: str) -> None:
    make, make_pruner, config, shape, out_fqn, dim = MASKED_EQUALS_PRUNED[name]
    torch.manual_seed(0)
    model = make().eval()
    pruner = make_pruner()
    pruner.prepare(model, config)
    pruner.step()
    assert all(int((~mask_of(pruner, str(c["tensor_fqn"]))).sum()) > 0 for c in config)
    masked, pruned = masked_and_pruned(pruner, torch.randn(shape), out_fqn, dim)
    assert pruned.shape == masked.shape
    torch.testing.assert_close(pruned, masked, atol=ATOL, rtol=1e-5)


class Sigmoids(nn.Module):
    """Linear layers with biases joined by sigmoids (act(0) != 0: removed rows emit a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 7), nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.d(torch.sigmoid(self.c(torch.sigmoid(self.b(torch.sigmoid(self.a(x)))))))
        return out


@pytest.mark.parametrize("prune_bias", list(itertools.product([True, False], repeat=3)), ids=str)
def test_prune_bias_is_honoured_per_tensor_even_between_neighbours(prune_bias: tuple[bool, bool, bool]) -> None:
    """torch.ao overwrites the bias folded into a neighbour whose prune_bias differs. Here every
    combination is exact; (True, False, ...) needs `b` pruned before `a`'s constant is folded."""
    torch.manual_seed(0)
    model = Sigmoids().eval()
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": f"{n}.weight", "prune_bias": b} for n, b in zip("abc", prune_bias)])
    pruner.step()
    masked, pruned = masked_and_pruned(pruner, torch.randn(5, 6), None)
    torch.testing.assert_close(pruned, masked, atol=ATOL, rtol=1e-5)

    # each consumer's bias: its own, plus what the producer's removed rows emit, through its kept
    # rows' weights: sigmoid(0) = 0.5 with prune_bias, sigmoid(the producer's bias) without
    new = pruner.prune()
    weight = {n: original_of(model, f"{n}.weight").detach() for n in "abc"} | {"d": model.d.weight.detach()}
    bias = {n: (original_of(model, f"{n}.bias") if pb else model.get_parameter(f"{n}.bias")).detach() for n, pb in zip("abc", prune_bias)}
    bias["d"] = model.d.bias.detach()
    for producer, consumer, pb in zip("abc", "bcd", prune_bias):
        removed = ~mask_of(pruner, f"{producer}.weight")
        rows = mask_of(pruner, f"{consumer}.weight") if consumer != "d" else torch.ones(3, dtype=torch.bool)
        const = torch.full((int(removed.sum()),), 0.5) if pb else torch.sigmoid(bias[producer][removed])
        expected = bias[consumer][rows] + weight[consumer][rows][:, removed] @ const
        torch.testing.assert_close(new.get_parameter(f"{consumer}.bias").detach(), expected, msg=f"{consumer} after {producer}")


def test_lstm_pruner_masks_ih_and_hh_alike_and_whole_units() -> None:
    torch.manual_seed(0)
    model = LSTMNet(layers=2, norm=True)
    pruner = LSTMSaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, LSTM_CONFIG)
    assert parametrization_kinds(model)["lstm.weight_hh_l0"] == ["FakeStructuredSparsity", "_FollowMask"]
    assert parametrization_kinds(model)["norm.weight"] == ["_FollowMask", "_FollowMask"]  # the last layer's ih and hh
    pruner.step()
    for layer in (0, 1):
        ih, hh = mask_of(pruner, f"lstm.weight_ih_l{layer}"), mask_of(pruner, f"lstm.weight_hh_l{layer}")
        assert torch.equal(ih, hh) and bool((ih.reshape(4, 8) == ih[:8]).all()) and int(ih[:8].sum()) == 4
    pruned = pruner.prune()
    lstm = pruned.get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM) and lstm.hidden_size == 4
    unit = mask_of(pruner, "lstm.weight_ih_l1")[:8]
    torch.testing.assert_close(pruned.get_parameter("norm.weight"), original_of(model, "norm.weight").detach()[unit])


def test_squash_mask_leaves_the_masked_values_in_the_same_parameters() -> None:
    pruner, model = prepared_mlp()
    pruner.step()
    x = torch.randn(3, 700)
    ids = {fqn.replace("parametrizations.", "").replace(".original", ""): id(p) for fqn, p in model.named_parameters()}
    with torch.no_grad():
        masked = model(x)
        first = pruner.prune()(x)
    pruner.squash_mask(params_to_keep=("sparsity_level",), params_to_keep_per_layer={"seq.0": ("prune_bias",)})
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [fqn for fqn, _ in model.named_parameters()] == list(ReferenceMLP().state_dict())
    assert {fqn: id(p) for fqn, p in model.named_parameters()} == ids
    assert int((model.get_parameter("seq.0.weight").abs().sum(dim=1) == 0).sum()) == 250
    assert int((model.get_parameter("seq.0.bias") == 0).sum()) == 250
    assert getattr(model.seq[0], "sparse_params") == {"sparsity_level": 0.5, "prune_bias": True}
    assert getattr(model.linear, "sparse_params") == {"sparsity_level": 0.5}
    with torch.no_grad():
        assert torch.equal(model(x), masked)
        torch.testing.assert_close(pruner.prune()(x), first)  # prune() still works from the kept masks
    pruner.squash_mask()  # a second call changes nothing
    with pytest.raises(fprune.PruneError, match=r"^step\(\): called after squash_mask\(\)"):
        pruner.step()


def test_prepared_model_deep_copies_and_saves_its_masks() -> None:
    pruner, model = prepared_mlp()
    pruner.step()
    x = torch.randn(2, 700)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(x), model(x))
    assert torch.equal(model.state_dict()["seq.0.parametrizations.weight.0.mask"], mask_of(pruner, "seq.0.weight"))
    assert "Group 3" in repr(pruner) and "tensor_fqn: linear.weight" in repr(pruner)


# --------------------------------------------------------------------------------------------
# errors: each a PruneError that names the tensor
# --------------------------------------------------------------------------------------------


def _prepare(config: list[dict[str, object]], model: nn.Module | None = None) -> None:
    SaliencyPruner({"sparsity_level": 0.5}).prepare(model if model is not None else ReferenceMLP(), config)


def _step_with(level: object) -> None:
    pruner = SaliencyPruner({"sparsity_level": level})
    pruner.prepare(ReferenceMLP(), [{"tensor_fqn": "seq.2.weight"}])
    pruner.step()


class Replacer(BaseStructuredSparsifier):
    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        getattr(module.parametrizations, tensor_name)[0].mask = torch.zeros(3)


def _replacing_step() -> None:
    pruner = Replacer()
    pruner.prepare(ReferenceMLP(), [{"tensor_fqn": "linear.weight"}])
    pruner.step()


def _all_false_prune() -> None:
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(ReferenceMLP(), [{"tensor_fqn": "seq.4.weight"}])
    mask_of(pruner, "seq.4.weight").fill_(False)
    pruner.prune()


def _prepare_twice() -> None:
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(ReferenceMLP(), MLP_CONFIG)
    pruner.prepare(ReferenceMLP(), MLP_CONFIG)


def _prepare_prepared() -> None:
    model = ReferenceMLP()
    _prepare(MLP_CONFIG, model)
    _prepare(MLP_CONFIG, model)


ERRORS: dict[str, tuple[Callable[[], object], str]] = {
    "no tensor_fqn": (lambda: _prepare([{"sparsity_level": 0.5}]), r"config entry 0 has no `tensor_fqn`"),
    "unknown tensor_fqn": (lambda: _prepare([{"tensor_fqn": "seq.9.weight"}]), r"`seq\.9\.weight` names no parameter.*seq\.0\.weight"),
    "fewer than 2 dims": (lambda: _prepare([{"tensor_fqn": "seq.0.bias"}]), r"`seq\.0\.bias` has 1 dim\(s\) \(shape \(500,\)\)"),
    "no pattern prunes it": (lambda: _prepare([{"tensor_fqn": "fc1.weight"}], Branching()), r"`fc1\.weight`: no match prunes it: `fc1` \(Linear\).*residual add"),
    "module type no pattern shrinks": (lambda: _prepare([{"tensor_fqn": "0.weight"}], nn.Sequential(nn.Conv1d(2, 4, 3), nn.Conv2d(4, 2, 1))), r"`0\.weight`: no match prunes it: `0` \(Conv1d\): no pattern (starts with it|continues with `_1`)"),
    "prune before prepare": (lambda: SaliencyPruner({}).prune(), r"^prune\(\): called before prepare"),
    "step before prepare": (lambda: SaliencyPruner({}).step(), r"^step\(\): called before prepare"),
    "model before prepare": (lambda: SaliencyPruner({}).model, r"^model: called before prepare"),
    "squash before prepare": (lambda: SaliencyPruner({}).squash_mask(), r"^squash_mask\(\): called before prepare"),
    "prepare twice": (_prepare_twice, r"^prepare\(\): already called"),
    "already parametrized": (_prepare_prepared, r"module `seq\.0` already carries parametrizations"),
    "config not a list": (lambda: _prepare({"tensor_fqn": "seq.0.weight"}), r"`config` must be a list of dicts"),  # type: ignore[arg-type]
    "entry not a dict": (lambda: _prepare(["seq.0.weight"]), r"config entry 0 is a str"),  # type: ignore[list-item]
    "tensor twice": (lambda: _prepare([{"tensor_fqn": "linear.weight"}] * 2), r"`linear\.weight` appears in more than one"),
    "mask key": (lambda: _prepare([{"tensor_fqn": "linear.weight", "mask": torch.ones(4, dtype=torch.bool)}]), r"`linear\.weight` has the key 'mask'"),
    "disagreeing module_fqn": (lambda: _prepare([{"tensor_fqn": "linear.weight", "module_fqn": "seq.0"}]), r"`linear\.weight` gives module_fqn='seq\.0'"),
    "prune_bias not a bool": (lambda: _prepare([{"tensor_fqn": "linear.weight", "prune_bias": 1}]), r"`prune_bias` for `linear\.weight` must be True or False"),
    "lstm ih and hh prune_bias differ": (lambda: _prepare([{"tensor_fqn": "lstm.weight_ih_l0"}, {"tensor_fqn": "lstm.weight_hh_l0", "prune_bias": False}], LSTMNet(layers=1)), r"`lstm\.weight_ih_l0` and `lstm\.weight_hh_l0` are pruned together.*different `prune_bias`"),
    "untraceable model": (lambda: _prepare([{"tensor_fqn": "fc.weight"}], Untraceable()), r"prepare\(\): torch\.fx could not trace the model"),
    "missing sparsity_level": (lambda: _step_with(None), r"update_mask for `seq\.2\.weight`: sparsity_level: the config of `seq\.2\.weight` has no `sparsity_level`"),
    "sparsity_level 1": (lambda: _step_with(1.0), r"update_mask for `seq\.2\.weight`: saliency_mask: `level` must be in \[0, 1\)"),
    "mask replaced by a float tensor": (_replacing_step, r"update_mask left the mask of `linear\.weight` with dtype torch\.float32"),
    "all-False mask": (_all_false_prune, r"mask for `seq\.4\.weight` is all False"),
    "fpgm dist": (lambda: FPGMPruner(dist=-1), r"`dist` must be 1, 2, another p > 0"),
}  # fmt: skip


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_raises_a_prune_error_naming_the_tensor(name: str) -> None:
    call, message = ERRORS[name]
    with pytest.raises(fprune.PruneError, match=message):
        call()


def test_a_refused_prepare_leaves_the_model_untouched() -> None:
    model = Branching()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    with pytest.raises(fprune.PruneError, match="residual add"):
        pruner.prepare(model, [{"tensor_fqn": "fc3.weight"}, {"tensor_fqn": "fc1.weight"}])
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert pruner.groups == [] and pruner.state == {}
    pruner.prepare(model, [{"tensor_fqn": "fc3.weight"}])  # the sparsifier is still fresh


# --------------------------------------------------------------------------------------------
# prune_bias=False before a zero-padded conv: left unshrunk, exactly, with one warning
# --------------------------------------------------------------------------------------------


def test_prune_leaves_producers_before_padded_convs_unshrunk_with_one_warning() -> None:
    """torch.ao keeps such a producer full size; so does the facade (it used to raise). The
    pruned model equals the masked one in float64, the masks stay as step() left them, and
    one UserWarning names the tensors."""
    from torch.func import functional_call
    from torch.testing._internal.common_pruning import Conv2dPadBias

    torch.manual_seed(0)
    model = Conv2dPadBias().double().eval()
    original = copy.deepcopy(model)
    config: list[dict[str, object]] = [
        {"tensor_fqn": fqn, "prune_bias": False} for fqn in ("seq.0.weight", "seq.2.weight", "seq.4.weight", "seq.6.weight", "seq.8.weight", "conv2d1.weight")
    ]
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, config)
    pruner.step()
    masks = {fqn: mask_of(pruner, fqn).clone() for fqn in pruner.state}
    with pytest.warns(UserWarning) as caught:
        pruned = pruner.prune()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("prune(): left 3 tensor(s) unshrunk")
    assert all(f"`{fqn}` (chain" in message for fqn in ("seq.4.weight", "seq.8.weight", "conv2d1.weight"))
    assert "Set prune_bias=True in their config entries" in message
    assert all(torch.equal(mask_of(pruner, fqn), mask) for fqn, mask in masks.items())  # the masks are kept

    for fqn, mask in masks.items():
        weight = pruned.get_parameter(fqn).detach()
        if fqn in ("seq.4.weight", "seq.8.weight", "conv2d1.weight"):
            assert weight.shape[0] == mask.numel() and not bool(weight[~mask].any())
            bias = fqn.removesuffix("weight") + "bias"  # the removed rows' biases stay (kept rows may get a folded constant)
            torch.testing.assert_close(pruned.get_parameter(bias)[~mask], original.get_parameter(bias)[~mask], rtol=0, atol=0)
        else:
            assert weight.shape[0] == int(mask.sum())
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(original), fprune.default_patterns())
    with torch.no_grad():
        expected = functional_call(original, fprune.masked_parameters(original, masks, matches, prune_bias=False), (x,))
        torch.testing.assert_close(pruned(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-10, atol=1e-12)


def test_prune_with_prune_bias_before_padded_convs_shrinks_everything_silently() -> None:
    from torch.testing._internal.common_pruning import Conv2dPadBias

    torch.manual_seed(0)
    model = Conv2dPadBias().eval()
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": f"seq.{i}.weight"} for i in (0, 2, 4, 6, 8)])
    pruner.step()
    pruned = pruner.prune()  # warnings are errors here
    for fqn in pruner.state:
        assert pruned.get_parameter(fqn).shape[0] == int(mask_of(pruner, fqn).sum())


def test_fpgm_compute_distance_is_torch_ao_s() -> None:
    """FPGMPruner._compute_distance(t): the summed distances of t's flattened rows, by `dist`."""
    weight = torch.tensor([3.0, 2.0, 0.1])[:, None, None, None] * torch.ones(3, 1, 3, 3)
    torch.testing.assert_close(FPGMPruner(0.3)._compute_distance(weight), torch.tensor([11.7, 8.7, 14.4]))
    torch.testing.assert_close(FPGMPruner(0.3, dist=1)._compute_distance(weight), torch.tensor([9 + 26.1, 9 + 17.1, 26.1 + 17.1]))
    manhattan = FPGMPruner(0.3, dist=lambda rows: torch.cdist(rows, rows, p=1))
    torch.testing.assert_close(manhattan._compute_distance(weight), FPGMPruner(0.3, dist=1)._compute_distance(weight))
    assert not torch.equal(weight, torch.zeros(1))  # unchanged input
    with pytest.raises(fprune.PruneError, match=r"_compute_distance: expects a weight with 2\+ dims"):
        manhattan._compute_distance(torch.ones(3))
