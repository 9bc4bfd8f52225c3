"""Encoders pruned through torch.export: a tiny BERT (heads and MLP exact, the hidden stream kept
whole by its LayerNorms) and a tiny ViT (the patch embedding an ``aten.conv2d``: the hidden stream
through it, the cls token and the position embedding is one group, blocked by its LayerNorms, and
prunable with ``norms="renormalize"``, inexact). The attention modules' head attributes and the
config follow; BERT's config cannot describe pruned heads (its head size is derived), so
``fprune.hf.save_pretrained`` refuses; ViT's can (``config.head_dim``), so it round-trips."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification, ViTModel

import fprune
from fprune.groups import ChannelGroup

from .exact import config as hf_config
from .exact import exported_groups, logits, prune_hf_exactly, round_trip, tiny

_LEVELS = [0.3, 0.5]
_HEADS, _HEAD_SIZE, _HIDDEN, _MLP = 4, 8, 32, 48


def _bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=_HIDDEN, num_hidden_layers=2, num_attention_heads=_HEADS, intermediate_size=_MLP,
        max_position_embeddings=64,
    )  # fmt: skip
    return tiny(BertModel(config))


def _vit_config() -> ViTConfig:
    return ViTConfig(image_size=16, patch_size=4, hidden_size=_HIDDEN, num_hidden_layers=2, num_attention_heads=_HEADS, intermediate_size=_MLP)


def _vit(classifier: bool) -> ViTModel | ViTForImageClassification:
    torch.manual_seed(0)
    return tiny(ViTForImageClassification(_vit_config()) if classifier else ViTModel(_vit_config()))


def _ids() -> Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def _pixels() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _kept(level: float, size: int) -> int:
    """What group_masks keeps of `size` channels (or heads) at `level`."""
    return int(round((1 - level) * 100) / 100 * size + 1e-9)


def _attention_attributes(model: nn.Module) -> list[tuple[int, int, int]]:
    """(heads, head size, all heads' width) of each attention module: BERT's
    ``num_attention_heads`` / ``attention_head_size`` / ``all_head_size``; ViT's
    ``num_attention_heads`` / ``head_dim`` (width: heads * head_dim)."""
    found = []
    for module in model.modules():
        heads = vars(module).get("num_attention_heads")
        size = vars(module).get("attention_head_size", vars(module).get("head_dim"))
        if isinstance(heads, int) and isinstance(size, int):
            width = vars(module).get("all_head_size", heads * size)
            assert isinstance(width, int)
            found.append((heads, size, width))
    return found


def _projection_rows(model: nn.Module, suffix: str) -> set[int]:
    return {m.out_features for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.endswith(suffix)}


def _hidden_group(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    (found,) = [g for g in groups if producer in g.producers]
    return found


def _prune_only(model: nn.Module, groups: tuple[ChannelGroup, ...], level: float, suffix: str, kwargs: Mapping[str, object], inputs: tuple[object, ...]) -> nn.Module:
    """`model` with only the groups whose producers end with `suffix` pruned at `level`; checked
    exact against the masked model."""
    masks = {k: v for k, v in fprune.group_masks(model, groups, level).items() if k.endswith(suffix)}
    assert masks
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = logits(functional_call(model, fprune.masked_parameters(model, masks, groups), inputs, dict(kwargs)))
        torch.testing.assert_close(logits(pruned(*inputs, **kwargs)), expected, rtol=1e-10, atol=1e-10)
    return pruned


# --- BERT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", _LEVELS)
def test_bert_heads_and_mlp_prune_exactly(level: float) -> None:
    model, ids = _bert(), _ids()
    pruned, groups, _ = prune_hf_exactly(model, (ids,), {}, level)
    heads = _kept(level, _HEADS)
    assert _projection_rows(pruned, "self.query") == {heads * _HEAD_SIZE}
    assert _projection_rows(pruned, "intermediate.dense") == {_kept(level, _MLP)}
    assert _attention_attributes(pruned) == [(heads, _HEAD_SIZE, heads * _HEAD_SIZE)] * 2
    assert _attention_attributes(model) == [(_HEADS, _HEAD_SIZE, _HEADS * _HEAD_SIZE)] * 2  # the original's stay
    hidden = _hidden_group(groups, "embeddings.word_embeddings.weight")  # kept whole by its LayerNorms
    assert not hidden.prunable and "normalizes across the channels" in hidden.blockers[0].reason
    config = hf_config(pruned)
    assert config.intermediate_size == _kept(level, _MLP) and config.hidden_size == _HIDDEN
    assert config.num_attention_heads == _HEADS  # BERT derives its head size: no value says 2 heads of 8
    with pytest.raises(fprune.PruneError, match="does not describe its pruned shapes"):
        fprune.hf.save_pretrained(pruned, "unused")


def test_bert_with_an_attention_mask_prunes_exactly() -> None:
    model, ids = _bert(), _ids()
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    pruned, _, _ = prune_hf_exactly(model, (ids,), {"attention_mask": mask}, 0.5)
    assert _attention_attributes(pruned) == [(2, _HEAD_SIZE, 2 * _HEAD_SIZE)] * 2
    with torch.no_grad():  # the mask matters: other outputs without it
        assert not torch.allclose(logits(pruned(ids, attention_mask=mask)), logits(pruned(ids)))


@pytest.mark.parametrize("level", _LEVELS)
def test_bert_mlp_alone_round_trips(level: float) -> None:
    model, ids = _bert(), _ids()
    groups = exported_groups(model, (ids,), {})
    pruned = _prune_only(model, groups, level, "intermediate.dense.weight", {}, (ids,))
    assert hf_config(pruned).intermediate_size == _kept(level, _MLP) and hf_config(model).intermediate_size == _MLP
    round_trip(pruned, (ids,), {})


# --- ViT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("classifier", [False, True], ids=["ViTModel", "ViTForImageClassification"])
@pytest.mark.parametrize("level", _LEVELS)
def test_vit_heads_and_mlp_prune_exactly_and_round_trip(level: float, classifier: bool) -> None:
    model, pixels = _vit(classifier), _pixels()
    pruned, groups, masks = prune_hf_exactly(model, (pixels,), {}, level)
    prefix = "vit." if classifier else ""
    heads = _kept(level, _HEADS)
    assert _projection_rows(pruned, "attention.q_proj") == {heads * _HEAD_SIZE}
    assert _projection_rows(pruned, "mlp.fc1") == {_kept(level, _MLP)}
    assert _attention_attributes(pruned) == [(heads, _HEAD_SIZE, heads * _HEAD_SIZE)] * 2
    assert _attention_attributes(model) == [(_HEADS, _HEAD_SIZE, _HEADS * _HEAD_SIZE)] * 2
    # the patch embedding (aten.conv2d), the cls token, the position embedding and the residual adds: one stream
    hidden = _hidden_group(groups, f"{prefix}embeddings.patch_embeddings.projection.weight")
    assert f"{prefix}layers.1.mlp.fc2.weight" in hidden.producers
    carried = {m.fqn for m in hidden.members if m.role == "carrier"}
    assert {f"{prefix}embeddings.cls_token", f"{prefix}embeddings.position_embeddings"} <= carried
    assert not hidden.prunable and "normalizes across the channels" in hidden.blockers[0].reason
    if classifier:  # its num_labels outputs reach the output: never pruned
        (head,) = [g for g in groups if "classifier.weight" in g.producers]
        assert head.reaches_output and "classifier.weight" not in masks
        assert isinstance(pruned, ViTForImageClassification) and pruned.classifier.out_features == 2
    config = hf_config(pruned)
    assert config.num_attention_heads == heads and config.intermediate_size == _kept(level, _MLP)
    assert getattr(config, "head_dim") == _HEAD_SIZE  # ViT reads config.head_dim: its config holds pruned heads
    assert hf_config(model).num_attention_heads == _HEADS and "head_dim" not in hf_config(model).to_dict()
    round_trip(pruned, (pixels,), {})


def test_vit_mlp_alone_round_trips() -> None:
    model, pixels = _vit(True), _pixels()
    groups = exported_groups(model, (pixels,), {})
    pruned = _prune_only(model, groups, 0.5, "mlp.fc1.weight", {}, (pixels,))
    assert hf_config(pruned).intermediate_size == 24 and hf_config(pruned).num_attention_heads == _HEADS
    round_trip(pruned, (pixels,), {})


@pytest.mark.parametrize("level", _LEVELS)
def test_vit_hidden_stream_prunes_with_renormalize(level: float) -> None:
    model, pixels = _vit(True), _pixels()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = exported_groups(model, (pixels,), {}, norms="renormalize")
    hidden = _hidden_group(groups, "vit.embeddings.patch_embeddings.projection.weight")
    assert hidden.prunable and hidden.inexact and not hidden.reaches_output
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    assert isinstance(pruned, ViTForImageClassification)
    width = _kept(level, _HIDDEN)
    vit = pruned.vit
    assert vit.embeddings.patch_embeddings.projection.weight.shape == (width, 3, 4, 4)
    assert vit.embeddings.cls_token.shape == (1, 1, width) and vit.embeddings.position_embeddings.shape == (1, 17, width)
    assert pruned.classifier.weight.shape == (2, width)
    with torch.no_grad():
        assert logits(pruned(pixels)).shape == (2, 2)
    assert hf_config(pruned).hidden_size == width and hf_config(model).hidden_size == _HIDDEN
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    round_trip(pruned, (pixels,), {})


# --- F.conv2d as torch.export records a conv --------------------------------------------------


class _Convs(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, groups=groups)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return out


@pytest.mark.parametrize("decomposed", [False, True], ids=["aten.conv2d", "aten.convolution"])
def test_exported_convs_prune_exactly(decomposed: bool) -> None:
    torch.manual_seed(0)
    model, x = _Convs(1).double().eval(), torch.randn(2, 3, 9, 9, dtype=torch.float64)
    program = torch.export.export(model, (x,), strict=False)
    if decomposed:  # core ATen: the conv is an aten.convolution
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecated pytree use
            program = program.run_decompositions()
    groups = fprune.channel_groups(program)
    by_producer = {g.producers[0]: g for g in groups}
    assert by_producer["a.weight"].prunable and by_producer["b.weight"].prunable
    assert by_producer["c.weight"].reaches_output
    assert not any(m.fqn == "a.weight" and m.dim == 1 for g in groups for m in g.members)  # the image's channels: none
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    assert isinstance(pruned, _Convs) and pruned.a.out_channels == 4 and pruned.b.in_channels == 4
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
        torch.testing.assert_close(pruned(x), expected, rtol=1e-10, atol=1e-10)


def test_exported_grouped_conv_ties_in_group_positions() -> None:
    model, x = _Convs(2).eval(), torch.randn(2, 3, 9, 9)
    groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
    (into,) = [g for g in groups if "a.weight" in g.producers]
    assert into.prunable and set(into.units) == {(j, j + 4) for j in range(4)}  # more in tests/groups/test_export.py
