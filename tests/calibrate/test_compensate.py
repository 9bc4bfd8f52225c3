"""Bias compensation (``apply_prune(..., compensate=statistics)``, FLAP, An et al. 2024): the
pruned copy computes exactly what the model computes with the removed channels replaced by
their calibration means where each consumer reads them. The reference is built apart from
fprune's compensation: the masked model (``masked_parameters``) on a deep copy whose consumer
layers get forward pre-hooks that overwrite the removed input channels with the means."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.calibrate import Moments, Statistics, collect_statistics
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes
from ..purity import assert_unchanged, snapshot


def _removed_inputs(groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[str, list[int]]:
    """Per consumer weight FQN, the input positions (along its member dim) the masks remove."""
    removed: dict[str, set[int]] = {}
    for group in groups:
        keep: dict[int, bool] = {}
        for member in group.members:
            if member.role == "producer" and member.fqn in masks:
                for position, channel in zip(member.positions, member.channels):
                    keep[channel] = bool(masks[member.fqn][position])
        if not keep or all(keep.values()):
            continue
        for member in group.members:
            if member.role == "consumer":
                gone = {p for p, c in zip(member.positions, member.channels) if not keep[c]}
                removed.setdefault(member.fqn, set()).update(gone)
    return {fqn: sorted(p) for fqn, p in removed.items() if p}


def _reference(
    model: nn.Module, groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor], statistics: Statistics
) -> Callable[..., object]:
    """The masked model whose consumers read the removed channels' means instead (a deep copy
    with pre-hooks: `model` is not touched)."""
    reference = copy.deepcopy(model)
    params = fprune.masked_parameters(reference, masks, groups)
    for fqn, positions in _removed_inputs(groups, masks).items():
        module = reference.get_submodule(fqn.rpartition(".")[0])
        mean = statistics.inputs[fqn].mean()
        index = torch.tensor(positions)
        dim = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1

        def hook(module: nn.Module, args: tuple[Tensor, ...], index: Tensor = index, mean: Tensor = mean, dim: int = dim) -> tuple[Tensor, ...]:
            x = args[0].clone()
            values = mean[index].to(x.dtype)
            shape = [1] * x.dim()
            shape[dim] = -1
            x.index_copy_(dim, index, values.reshape(shape).expand(*[n if d != dim % x.dim() else len(index) for d, n in enumerate(x.shape)]))
            return (x, *args[1:])

        module.register_forward_pre_hook(hook)

    def run(*args: object, **kwargs: object) -> object:
        with torch.no_grad():
            return functional_call(reference, params, args, kwargs)

    return run


def _batches(shape: tuple[int, ...], count: int = 4, shift: float = 0.5) -> Iterator[Tensor]:
    generator = torch.Generator().manual_seed(3)
    for _ in range(count):
        yield torch.randn(*shape, generator=generator, dtype=torch.float64) + shift


class _Mlp(nn.Module):
    """fc1 -> relu -> fc2 (no bias) -> relu -> fc3 (bias): fc2 reads one pruned group and
    produces another, so its new bias is sliced too."""

    def __init__(self, act: Callable[[Tensor], Tensor] = torch.relu, bias: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 12, bias=bias), nn.Linear(12, 4)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))
        return out


def _prune(
    model: nn.Module, x: Tensor, level: float = 0.5, statistics: Statistics | None = None
) -> tuple[nn.Module, tuple[ChannelGroup, ...], dict[str, Tensor], Statistics]:
    groups = groups_with_shapes(model, x)
    masks = fprune.group_masks(model, groups, level)
    assert masks
    stats = statistics if statistics is not None else collect_statistics(model, _batches(tuple(x.shape)), groups=groups, progress=False)
    before = snapshot(model)
    pruned = fprune.apply_prune(model, masks, groups, compensate=stats)
    assert_unchanged(model, before)
    return pruned, groups, masks, stats


def test_mlp_linears_with_and_without_bias_are_exact() -> None:
    torch.manual_seed(0)
    model, x = _Mlp().double(), torch.randn(5, 8, dtype=torch.float64)
    pruned, groups, masks, stats = _prune(model, x)
    assert getattr(model.fc2, "bias") is None
    bias = pruned.get_submodule("fc2").bias
    assert isinstance(bias, nn.Parameter) and bias.requires_grad and bias.dtype == torch.float64
    fc2, fc3 = pruned.get_submodule("fc2"), pruned.get_submodule("fc3")
    assert isinstance(fc2, nn.Linear) and isinstance(fc3, nn.Linear)
    assert bias.shape == (fc2.out_features,) == (6,) and fc3.in_features == 6  # sliced with fc2's kept rows
    torch.testing.assert_close(pruned(x), _reference(model, groups, masks, stats)(x), rtol=1e-10, atol=1e-10)
    plain = fprune.apply_prune(model, masks, groups)  # without compensation: the masked model, no bias added
    assert plain.get_submodule("fc2").bias is None
    assert not torch.allclose(plain(x), pruned(x))


def test_traced_graph_module_is_exact() -> None:
    """A GraphModule calls its Linears as modules: the bias added to fc2 is read."""
    torch.manual_seed(0)
    model, x = torch.fx.symbolic_trace(_Mlp().double()), torch.randn(5, 8, dtype=torch.float64)
    pruned, groups, masks, stats = _prune(model, x)
    assert isinstance(pruned, torch.fx.GraphModule) and isinstance(pruned.get_submodule("fc2").bias, nn.Parameter)
    torch.testing.assert_close(pruned(x), _reference(model, groups, masks, stats)(x), rtol=1e-10, atol=1e-10)


def test_compensation_replaces_a_fold() -> None:
    """After a sigmoid the masked model's removed channels hold 0.5 (folded into fc2's bias
    without compensate); with it, fc2 reads their means instead, not 0.5 + mean."""
    torch.manual_seed(1)
    model, x = _Mlp(act=torch.sigmoid, bias=True).double(), torch.randn(5, 8, dtype=torch.float64)
    groups = groups_with_shapes(model, x)
    assert any(g.folds for g in groups)
    pruned, groups, masks, stats = _prune(model, x)
    torch.testing.assert_close(pruned(x), _reference(model, groups, masks, stats)(x), rtol=1e-10, atol=1e-10)


class _ConvNet(nn.Module):
    def __init__(self, padding: int = 0, padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 1, bias=False)
        self.conv3 = nn.Conv2d(12, 10, 3, padding=padding, padding_mode=padding_mode)
        self.fc = nn.Linear(10, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        out: Tensor = self.fc(x.mean((2, 3)))
        return out


@pytest.mark.parametrize("padding_mode", [None, "reflect", "replicate", "circular"])
def test_conv_consumers_are_exact(padding_mode: Literal["reflect", "replicate", "circular"] | None) -> None:
    """1x1 and unpadded 3x3 consumers; padding that repeats the input's values is exact too."""
    torch.manual_seed(2)
    model = (_ConvNet() if padding_mode is None else _ConvNet(1, padding_mode)).double().eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    pruned, groups, masks, stats = _prune(model, x)
    assert model.conv2.bias is None and isinstance(pruned.get_submodule("conv2").bias, nn.Parameter)
    assert pruned.get_submodule("conv3").in_channels == 6
    torch.testing.assert_close(pruned(x), _reference(model, groups, masks, stats)(x), rtol=1e-10, atol=1e-10)


def test_zero_padded_conv_is_refused() -> None:
    torch.manual_seed(2)
    model, x = _ConvNet(padding=1).double().eval(), torch.randn(2, 3, 9, 9, dtype=torch.float64)
    before = snapshot(model)
    with pytest.raises(fprune.PruneError, match=r"apply_prune: compensate: `conv3` .*zeros.*without `compensate`.*ignore"):
        _prune(model, x)
    assert_unchanged(model, before)


def test_missing_or_mismatched_statistics_are_refused() -> None:
    torch.manual_seed(0)
    model, x = _Mlp().double(), torch.randn(5, 8, dtype=torch.float64)
    groups = groups_with_shapes(model, x)
    stats = collect_statistics(model, _batches((5, 8)), groups=groups, progress=False)
    missing = Statistics({k: v for k, v in stats.inputs.items() if k != "fc2.weight"})
    with pytest.raises(fprune.PruneError, match=r"`fc2.weight`.*run collect_statistics with these groups over batches that reach it"):
        _prune(model, x, statistics=missing)
    moments = stats.inputs["fc3.weight"]
    wrong = Statistics({**stats.inputs, "fc3.weight": Moments(moments.count, moments.total[:5], moments.squares[:5])})
    with pytest.raises(fprune.PruneError, match=r"`fc3.weight` count \(5,\) input channels, but the weight reads 12"):
        _prune(model, x, statistics=wrong)


def test_pattern_matches_are_refused() -> None:
    torch.manual_seed(0)
    model, x = _Mlp().double(), torch.randn(5, 8, dtype=torch.float64)
    stats = collect_statistics(model, _batches((5, 8)), progress=False)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {"fc1.weight": torch.arange(16) % 2 == 0}
    with pytest.raises(fprune.PruneError, match="apply_prune: `compensate` .* channel groups only.*channel_groups"):
        fprune.apply_prune(model, masks, matches, compensate=stats)


class _Tied(nn.Module):
    """Two layers that share one weight both read the pruned channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)
        self.fc3.weight = self.fc2.weight

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x))
        out: Tensor = self.fc2(h) + self.fc3(h)
        return out


def test_tied_consumers_are_refused() -> None:
    torch.manual_seed(0)
    model, x = _Tied().double(), torch.randn(5, 8, dtype=torch.float64)
    groups = groups_with_shapes(model, x)
    masks = {"fc1.weight": torch.arange(16) % 2 == 0}
    stats = collect_statistics(model, _batches((5, 8)), groups=groups, progress=False)
    with pytest.raises(fprune.PruneError, match="tied"):
        fprune.apply_prune(model, masks, groups, compensate=stats)


def test_hf_conv1d_consumer_is_exact() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class Gpt2Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc, self.c_proj = Conv1D(16, 8), Conv1D(4, 16)  # type: ignore[no-untyped-call]  # Conv1D(nf=out, nx=in)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.c_proj(torch.relu(self.c_fc(x)))
            return out

    torch.manual_seed(4)
    model, x = Gpt2Mlp().double(), torch.randn(2, 3, 8, dtype=torch.float64)
    nn.init.normal_(model.c_fc.bias)
    groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"c_fc.weight"}
    stats = collect_statistics(model, _batches((2, 3, 8)), groups=groups, progress=False)
    pruned = fprune.apply_prune(model, masks, groups, compensate=stats)
    bias = pruned.get_submodule("c_proj").bias
    assert isinstance(bias, Tensor) and not torch.equal(bias, model.c_proj.bias)
    torch.testing.assert_close(pruned(x), _reference(model, groups, masks, stats)(x), rtol=1e-10, atol=1e-10)


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).double()
    nn.Module.eval(model)
    return model


def _llama_batches() -> list[dict[str, object]]:
    generator = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 64, (2, 9), generator=generator), "use_cache": False} for _ in range(3)]


def test_llama_mlp_and_heads_are_exact_and_round_trip() -> None:
    pytest.importorskip("transformers")
    from ..hf.exact import logits

    model, ids, kw = _llama(), torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1)), {"use_cache": False}
    groups = fprune.channel_groups(torch.export.export(model, (ids,), kwargs=kw, strict=False))
    masks = fprune.group_masks(model, groups, 0.5, ignore=["model.embed_tokens", "lm_head"])
    assert any(".mlp." in m for m in masks) and any(".self_attn." in m for m in masks)
    assert not any("embed_tokens" in m for m in masks)
    stats = collect_statistics(model, _llama_batches(), groups=groups, progress=False)
    before, config_before = snapshot(model), getattr(model, "config").to_dict()
    pruned = fprune.apply_prune(model, masks, groups, compensate=stats)
    assert_unchanged(model, before)
    assert getattr(model, "config").to_dict() == config_before
    config = getattr(pruned, "config")
    assert config.mlp_bias is True and config.attention_bias is True
    assert getattr(model, "config").mlp_bias is False
    layer = pruned.get_submodule("model.layers.1")
    for name in ("mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        bias = layer.get_submodule(name).bias
        assert isinstance(bias, nn.Parameter) and bias.dtype == torch.float64 and not bool(bias.any()), name
    for name in ("mlp.down_proj", "self_attn.o_proj"):
        bias = layer.get_submodule(name).bias
        assert isinstance(bias, nn.Parameter) and bool(bias.any()), name
    with torch.no_grad():
        got = logits(pruned(ids, **kw))
    expected = logits(_reference(model, groups, masks, stats)(ids, **kw))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # HF's RMSNorm computes in float32
    uncompensated = logits(fprune.apply_prune(model, masks, groups)(ids, **kw))
    assert (got - uncompensated).abs().max() > 1e-3
    with tempfile.TemporaryDirectory() as path:
        fprune.hf.save_pretrained(pruned, path)
        reloaded = type(pruned).from_pretrained(path, dtype=torch.float64).eval()  # type: ignore[attr-defined]
    saved, loaded = pruned.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    for parameter in reloaded.parameters():  # fresh memory: BLAS rounds a matmul over a misaligned mmap'd weight otherwise
        parameter.data = parameter.data.clone()
    with torch.no_grad():
        torch.testing.assert_close(logits(reloaded(ids, **kw)), got, rtol=0, atol=0)


def test_llama_bias_no_flag_rebuilds_is_not_saved() -> None:
    """Pruning the hidden size too gives lm_head a bias, which no Llama config flag builds: the
    copy is exact, the config is left as it was and save_pretrained refuses it."""
    pytest.importorskip("transformers")
    from ..hf.exact import logits

    model, ids, kw = _llama(), torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1)), {"use_cache": False}
    groups = fprune.channel_groups(torch.export.export(model, (ids,), kwargs=kw, strict=False))
    masks = fprune.group_masks(model, groups, 0.5)
    assert "model.embed_tokens.weight" in masks
    stats = collect_statistics(model, _llama_batches(), groups=groups, progress=False)
    pruned = fprune.apply_prune(model, masks, groups, compensate=stats)
    assert isinstance(pruned.get_submodule("lm_head").bias, nn.Parameter)
    assert getattr(pruned, "config").mlp_bias is False and getattr(pruned, "config").attention_bias is False
    with torch.no_grad():
        got = logits(pruned(ids, **kw))
    torch.testing.assert_close(got, logits(_reference(model, groups, masks, stats)(ids, **kw)), rtol=1e-6, atol=1e-6)
    with tempfile.TemporaryDirectory() as path:
        with pytest.raises(fprune.PruneError, match=r"save_pretrained: .*`lm_head.bias`.*bias compensation.*without `compensate`"):
            fprune.hf.save_pretrained(pruned, path)
