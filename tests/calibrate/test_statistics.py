"""collect_statistics: the moments of every layer's input equal a direct computation from
forward hooks (an MLP, a conv net counted per channel over N*H*W positions, GPT-2's HF Conv1D,
tied weights under every name, a layer called twice); the model is left exactly as it was,
also when a batch raises; the Taylor terms equal autograd's; save / load round trips; batch
types, refusals and the progress bar."""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune
from fprune.calibrate import Batch, Moments, Statistics, collect_statistics

from ..purity import assert_unchanged, snapshot
from .shared import float_batches, layer_inputs, llama, next_token_loss, run, token_ids

requires_hf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- models and references


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)).double()


class ConvNet(nn.Module):
    """conv - BN - ReLU - grouped conv - 1x1 conv - pool - Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, groups=2)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv3(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        out: Tensor = self.fc(h.mean((-2, -1)))
        return out


def _conv() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().double().eval()


def _conv_batches() -> list[Batch]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), torch.randn(1, 3, 7, 5, generator=g, dtype=torch.float64)]


def _assert_moments(moments: Moments, rows: Tensor) -> None:
    """`moments` are those of `rows` ([positions, channels], float64)."""
    assert moments.count == rows.shape[0]
    assert moments.total.dtype == moments.squares.dtype == torch.float64
    pairs = [
        (moments.total, rows.sum(0)),
        (moments.squares, (rows * rows).sum(0)),
        (moments.mean(), rows.mean(0)),
        (moments.variance(), rows.var(0)),  # unbiased
        (moments.norm(), torch.linalg.vector_norm(rows, dim=0)),
        (moments.rms(), rows.pow(2).mean(0).sqrt()),
    ]
    for got, expected in pairs:
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- 1. moments


def test_moments_of_an_mlp_are_those_of_its_layers_inputs() -> None:
    model, batches = _mlp(), float_batches()
    statistics = collect_statistics(model, batches)
    assert set(statistics.inputs) == {"0.weight", "2.weight"} and statistics.batches == 2
    seen = layer_inputs(model, ["0", "2"], batches)
    assert seen["0"].shape == (10, 6)  # 4 + 2 * 3 positions
    _assert_moments(statistics.inputs["0.weight"], seen["0"])
    _assert_moments(statistics.inputs["2.weight"], seen["2"])
    assert statistics.first_order == {}


def test_conv_inputs_are_counted_per_channel_over_every_position() -> None:
    model, batches = _conv(), _conv_batches()
    statistics = collect_statistics(model, batches)
    assert set(statistics.inputs) == {"conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"}
    seen = layer_inputs(model, ["conv1", "conv2", "conv3", "fc"], batches)
    assert seen["conv1"].shape == (2 * 36 + 35, 3)  # N * H * W positions of 3 channels
    assert seen["conv2"].shape[1] == 8  # a grouped conv: all its input channels (its weight has 4 columns)
    for name, rows in seen.items():
        _assert_moments(statistics.inputs[f"{name}.weight"], rows)


def test_an_unbatched_conv_input_counts_its_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(1), nn.Conv1d(4, 2, 1)).double()  # no batch dim: [3, 5, 5]
    x = torch.randn(3, 5, 5, dtype=torch.float64)
    statistics = collect_statistics(model, [x])
    assert statistics.inputs["0.weight"].count == 25 and statistics.inputs["0.weight"].total.shape == (3,)
    _assert_moments(statistics.inputs["0.weight"], x.reshape(3, -1).T)
    _assert_moments(statistics.inputs["3.weight"], layer_inputs(model, ["3"], [x])["3"])  # Conv1d's unbatched [4, 9]
    assert statistics.inputs["3.weight"].count == 9


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).double()
    nn.Module.eval(model)
    return model


@requires_hf
def test_gpt2_conv1d_inputs_and_the_tied_head_under_both_names() -> None:
    model = _gpt2()
    batches: list[Batch] = [{"input_ids": token_ids(1), "use_cache": False}, {"input_ids": token_ids(2, (1, 5)), "use_cache": False}]
    statistics = collect_statistics(model, batches)
    conv1d = [name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 8
    assert set(statistics.inputs) == {f"{n}.weight" for n in conv1d} | {"lm_head.weight", "transformer.wte.weight"}
    seen = layer_inputs(model, [*conv1d, "lm_head"], batches)
    for name in conv1d:
        assert seen[name].shape[0] == 14 + 5  # every token
        _assert_moments(statistics.inputs[f"{name}.weight"], seen[name])
    _assert_moments(statistics.inputs["lm_head.weight"], seen["lm_head"])
    _assert_moments(statistics.inputs["transformer.wte.weight"], seen["lm_head"])  # tied: the head's input, under both names


@requires_hf
def test_a_tied_llama_head_is_recorded_under_both_names_with_and_without_groups() -> None:
    model = llama(tie=True, layers=1)
    batches: list[Batch] = [{"input_ids": token_ids(1), "use_cache": False}]
    program = torch.export.export(model, (token_ids(1),), kwargs={"use_cache": False}, strict=False)
    groups = fprune.channel_groups(program)
    head = layer_inputs(model, ["lm_head"], batches)["lm_head"]
    for statistics in (collect_statistics(model, batches), collect_statistics(model, batches, groups=groups, loss=next_token_loss)):
        _assert_moments(statistics.inputs["lm_head.weight"], head)
        _assert_moments(statistics.inputs["model.embed_tokens.weight"], head)
    assert statistics.first_order[("lm_head.weight", 1)] is not statistics.first_order[("model.embed_tokens.weight", 1)]
    torch.testing.assert_close(statistics.first_order[("lm_head.weight", 1)], statistics.first_order[("model.embed_tokens.weight", 1)])


class Twice(nn.Module):
    """One Linear called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.out(self.fc(torch.tanh(self.fc(x))))
        return out


def test_a_layer_called_twice_accumulates_both_calls() -> None:
    torch.manual_seed(0)
    model = Twice().double()
    batches: list[Batch] = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)]
    statistics = collect_statistics(model, batches)
    seen = layer_inputs(model, ["fc"], batches)["fc"]
    assert seen.shape[0] == 2 * 8
    _assert_moments(statistics.inputs["fc.weight"], seen)
    assert statistics.inputs["out.weight"].count == 8


class Keywords(nn.Module):
    """Layer calls with their tensors passed by keyword: F.linear, HF Conv1D's addmm, conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
        self.conv1d = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))  # [in, out]
        self.bias = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.conv = nn.Parameter(torch.randn(2, 1, 1, 1, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(input=x, weight=self.linear)
        y = torch.addmm(self.bias, mat1=h, mat2=self.conv1d)
        return F.conv2d(input=y[None, None], weight=self.conv)


def test_layer_inputs_passed_by_keyword_are_counted() -> None:
    torch.manual_seed(0)
    model = Keywords()
    x = torch.randn(6, 4, dtype=torch.float64)
    statistics = collect_statistics(model, [x])
    h = x @ model.linear.detach().T
    _assert_moments(statistics.inputs["linear"], x)
    _assert_moments(statistics.inputs["conv1d"], h)
    _assert_moments(statistics.inputs["conv"], torch.addmm(model.bias, h, model.conv1d).detach().reshape(-1, 1))


def test_groups_choose_the_layers_counted() -> None:
    model, batches = _mlp(), float_batches()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    hidden = [g for g in groups if g.producers == ("0.weight",)]
    statistics = collect_statistics(model, batches, groups=hidden)
    assert set(statistics.inputs) == {"0.weight", "2.weight"}  # the producer's and the consumer's inputs
    only_head = [g for g in groups if g.producers == ("2.weight",)]
    assert set(collect_statistics(model, batches, groups=only_head).inputs) == {"2.weight"}


# --------------------------------------------------------------------------- 2. the model is left as it was


def _train_mode_conv() -> ConvNet:
    model = _conv()
    model.train()
    model.conv3.eval()  # a mixed mode stays mixed
    model.fc.weight.requires_grad_(False)
    return model


def _sum_loss(output: object, batch: Batch) -> Tensor:
    assert isinstance(output, Tensor)
    return output.pow(2).sum()


def _assert_left_as_it_was(model: nn.Module, before: object) -> None:
    from ..purity import Snapshot

    assert isinstance(before, Snapshot)
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
    assert not torch.overrides._get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("with_loss", [False, True])
def test_the_model_is_left_as_it_was(with_loss: bool) -> None:
    model = _train_mode_conv()
    before = snapshot(model)
    running_mean = model.bn.running_mean
    statistics = collect_statistics(model, _conv_batches(), loss=_sum_loss if with_loss else None)
    _assert_left_as_it_was(model, before)
    tracked = model.bn.num_batches_tracked
    assert model.bn.running_mean is running_mean and tracked is not None and tracked.item() == 0  # train-mode BN ran on copies
    assert bool(statistics.first_order) == with_loss


class Boom(Exception):
    pass


def _raising_batches(bad: Batch) -> Iterator[Batch]:
    yield _conv_batches()[0]
    yield bad


@pytest.mark.parametrize("with_loss", [False, True])
@pytest.mark.parametrize(
    "bad, error",
    [
        (3, fprune.PruneError),  # not a batch
        (torch.randn(2, 5, 6, 6, dtype=torch.float64), RuntimeError),  # the model's own error: 5 channels for 3
    ],
)
def test_the_model_is_left_as_it_was_when_a_batch_raises(with_loss: bool, bad: Batch, error: type[Exception]) -> None:
    model = _train_mode_conv()
    before = snapshot(model)
    with pytest.raises(error):
        collect_statistics(model, _raising_batches(bad), loss=_sum_loss if with_loss else None)
    _assert_left_as_it_was(model, before)


def test_the_model_is_left_as_it_was_when_the_loss_raises() -> None:
    model = _train_mode_conv()
    before = snapshot(model)

    def loss(output: object, batch: Batch) -> Tensor:
        raise Boom("the loss failed")

    with pytest.raises(Boom):
        collect_statistics(model, _conv_batches(), loss=loss)
    _assert_left_as_it_was(model, before)


# --------------------------------------------------------------------------- 3. Taylor terms


def _autograd_terms(model: nn.Module, batches: Sequence[Batch], loss: Callable[[object, Batch], Tensor]) -> dict[str, Tensor]:
    """Per parameter FQN, the sum over `batches` of ``w * dL/dw``, from backward on a copy of `model`."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for batch in batches:
        torch.autograd.backward(loss(run(model, batch), batch))
    return {fqn: (p.detach() * p.grad).to(torch.float64) for fqn, p in model.named_parameters() if p.grad is not None}


def _summed(product: Tensor, dim: int) -> Tensor:
    other = [d for d in range(product.dim()) if d != dim]
    return product.sum(other) if other else product


def test_taylor_terms_equal_autograd_for_every_parameter_and_dim() -> None:
    model, batches = _conv(), _conv_batches()
    model.conv1.weight.requires_grad_(False)  # frozen parameters get their terms too
    model.bn.bias.requires_grad_(False)
    statistics = collect_statistics(model, batches, loss=_sum_loss)
    expected = _autograd_terms(model, batches, _sum_loss)
    assert set(expected) == {fqn for fqn, _ in model.named_parameters()}
    keys = {(fqn, dim) for fqn, term in expected.items() for dim in range(min(2, term.dim()))}
    assert set(statistics.first_order) == keys  # dims 0 and 1 of each weight, 0 of each bias / norm weight
    for (fqn, dim), term in statistics.first_order.items():
        assert term.dtype == torch.float64
        torch.testing.assert_close(term, _summed(expected[fqn], dim), rtol=1e-9, atol=1e-12)
    assert not model.conv1.weight.requires_grad and model.conv1.weight.grad is None
    for fqn, moments in collect_statistics(model, batches).inputs.items():  # the moments are those without a loss
        torch.testing.assert_close(statistics.inputs[fqn].squares, moments.squares, rtol=1e-12, atol=0)


def test_taylor_terms_with_groups_are_their_members_slices() -> None:
    model, batches = _mlp(), float_batches()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    hidden = [g for g in groups if g.producers == ("0.weight",)]
    statistics = collect_statistics(model, batches, groups=hidden, loss=_sum_loss)
    assert set(statistics.first_order) == {("0.weight", 0), ("0.bias", 0), ("2.weight", 1)}
    expected = _autograd_terms(model, batches, _sum_loss)
    for (fqn, dim), term in statistics.first_order.items():
        torch.testing.assert_close(term, _summed(expected[fqn], dim), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "loss, message",
    [
        (lambda output, batch: output, r"scalar tensor, got shape \[4, 5\]"),
        (lambda output, batch: 1.0, "scalar tensor, got float"),
        (lambda output, batch: torch.tensor(1.0), "does not depend on the model's parameters"),
    ],
)
def test_a_loss_that_is_no_scalar_of_the_parameters_is_refused(loss: Callable[[object, Batch], Tensor], message: str) -> None:
    model = _mlp()
    before = snapshot(model)
    with pytest.raises(fprune.PruneError, match="^collect_statistics: .*" + message):
        collect_statistics(model, float_batches(), loss=loss)
    _assert_left_as_it_was(model, before)


# --------------------------------------------------------------------------- 4. save / load


def test_save_and_load_round_trip(tmp_path: pytest.TempPathFactory) -> None:
    model, batches = _conv(), _conv_batches()
    statistics = collect_statistics(model, batches, loss=_sum_loss)
    path = f"{tmp_path}/statistics.safetensors"
    statistics.save(path)
    loaded = Statistics.load(path)
    assert loaded.batches == statistics.batches == 2
    assert loaded.inputs.keys() == statistics.inputs.keys() and loaded.first_order.keys() == statistics.first_order.keys()
    for fqn, moments in statistics.inputs.items():
        assert loaded.inputs[fqn].count == moments.count
        assert torch.equal(loaded.inputs[fqn].total, moments.total) and loaded.inputs[fqn].total.dtype == torch.float64
        assert torch.equal(loaded.inputs[fqn].squares, moments.squares)
    for key, term in statistics.first_order.items():
        assert torch.equal(loaded.first_order[key], term)


def test_statistics_sharing_a_tensor_save(tmp_path: pytest.TempPathFactory) -> None:
    total = torch.arange(3, dtype=torch.float64)
    shared = Statistics({"a.weight": Moments(2, total, total), "b.weight": Moments(2, total, total)}, {("a.weight", 0): total}, 1)
    shared.save(f"{tmp_path}/shared.safetensors")
    loaded = Statistics.load(f"{tmp_path}/shared.safetensors")
    assert torch.equal(loaded.inputs["b.weight"].squares, total) and torch.equal(loaded.first_order[("a.weight", 0)], total)


def test_load_refuses_files_save_did_not_write(tmp_path: pytest.TempPathFactory) -> None:
    from safetensors.torch import save_file

    other = f"{tmp_path}/weights.safetensors"
    save_file({"weight": torch.zeros(2)}, other)
    with pytest.raises(fprune.PruneError, match="^Statistics.load: .* is not a file written by Statistics.save"):
        Statistics.load(other)
    save_file({"weight": torch.zeros(2)}, other, metadata={"format": "pt"})
    with pytest.raises(fprune.PruneError, match="^Statistics.load: "):
        Statistics.load(other)
    junk = f"{tmp_path}/junk.safetensors"
    with open(junk, "wb") as file:
        file.write(b"not a safetensors file at all")
    with pytest.raises(fprune.PruneError, match="^Statistics.load: .* is not a safetensors file"):
        Statistics.load(junk)


# --------------------------------------------------------------------------- 5. batch types and refusals


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)

    def forward(self, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
        out: Tensor = (self.a(x) + self.b(y)) * scale
        return out


def test_tensor_tuple_list_and_mapping_batches() -> None:
    torch.manual_seed(0)
    model = TwoInputs().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    batches: list[Batch] = [(x, y), [x, y], {"x": x, "y": y, "scale": 2.0}]
    statistics = collect_statistics(model, batches)
    assert statistics.batches == 3
    _assert_moments(statistics.inputs["a.weight"], torch.cat([x, x, x]))
    _assert_moments(statistics.inputs["b.weight"], torch.cat([y, y, y]))
    mlp = _mlp()
    tensor = torch.randn(3, 6, dtype=torch.float64)
    _assert_moments(collect_statistics(mlp, [tensor]).inputs["0.weight"], tensor)


@requires_hf
def test_a_hugging_face_keyword_batch() -> None:
    model = _gpt2()
    statistics = collect_statistics(model, [{"input_ids": token_ids(1), "use_cache": False}])
    assert statistics.inputs["lm_head.weight"].count == 14


@pytest.mark.parametrize("bad", [3, "tokens", None, {1, 2}])
def test_a_batch_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(fprune.PruneError, match=f"^collect_statistics: a batch must be .* got {type(bad).__name__}"):
        collect_statistics(_mlp(), [bad])  # type: ignore[list-item]


def test_no_batches_is_refused() -> None:
    with pytest.raises(fprune.PruneError, match="^collect_statistics: no layer .*no batches"):
        collect_statistics(_mlp(), [])
    with pytest.raises(fprune.PruneError, match="^collect_statistics: no layer"):
        collect_statistics(_mlp(), iter([]), loss=_sum_loss)


def test_groups_of_another_model_are_refused() -> None:
    conv = _conv()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(conv), example_inputs=(_conv_batches()[0],))
    with pytest.raises(fprune.PruneError, match="^collect_statistics: no layer of the groups was called"):
        collect_statistics(_mlp(), float_batches(), groups=groups)


def test_not_a_module_is_refused() -> None:
    with pytest.raises(fprune.PruneError, match="^collect_statistics: expects an nn.Module, got function"):
        collect_statistics(lambda x: x, [torch.zeros(1)])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 6. progress


def test_progress_false_writes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    collect_statistics(_mlp(), float_batches(), progress=False)
    assert capfd.readouterr() == ("", "")


def test_progress_true_writes_a_bar_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    collect_statistics(_mlp(), float_batches(), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "fprune: calibrating:   0%|" in err and "0/2 [" in err


def test_progress_by_default_only_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    collect_statistics(_mlp(), float_batches())
    assert capsys.readouterr() == ("", "")  # stderr is no terminal here

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    collect_statistics(_mlp(), float_batches())
    assert "fprune: calibrating" in terminal.getvalue()


@pytest.mark.parametrize("bad", [5, None, torch.randn(3, 6), {"x": torch.randn(3, 6)}])
def test_batches_that_are_no_iterable_of_batches_are_refused(bad: object) -> None:
    with pytest.raises(fprune.PruneError, match=r"^collect_statistics: `batches` must be an iterable of batches"):
        collect_statistics(nn.Linear(6, 2), bad)  # type: ignore[arg-type]
    if bad is not None:  # None is prune_channels' "no calibration"
        with pytest.raises(fprune.PruneError, match=r"^prune_channels: .*`batches` must be an iterable"):
            fprune.prune_channels(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), 0.5, calibration=bad, criterion="flap")  # type: ignore[arg-type]
