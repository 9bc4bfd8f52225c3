"""Fused projections through torch.export: Phi-3's ``qkv_proj`` cut into query / key / value at
literal positions (the slice bounds follow pruning, whole key / value heads with their query
heads) and its ``gate_up_proj`` chunked in two; GPT-2's ``Conv1D`` layers (``torch.addmm``), its
fused ``c_attn`` split into query / key / value, the MLP with GELU written out, tied embeddings.
The pruned copies compute what the masked models compute; the config follows where it can
describe the copy, and ``fprune.hf.save_pretrained`` refuses where it cannot."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor
from torch.func import functional_call
from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention
from transformers.models.phi3.modeling_phi3 import Phi3Attention

import fprune
from fprune.groups import ChannelGroup

from .exact import config as hf_config
from .exact import exported_groups, logits, prune_hf_exactly, round_trip, tiny

_KW = {"use_cache": False}


def _ids() -> Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def _phi3() -> Phi3ForCausalLM:
    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    return tiny(Phi3ForCausalLM(config))


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return tiny(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)))


def _group(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    return next(g for g in groups if producer in g.producers)


def _kept(level: float, size: int) -> int:
    return int(round((1 - level) * 100) * size / 100 + 1e-9)


# --- Phi-3: qkv_proj sliced at literal positions ---------------------------------------------------


def _check_qkv_bounds(groups: tuple[ChannelGroup, ...]) -> None:
    qkv = _group(groups, "model.layers.0.self_attn.qkv_proj.weight")
    assert qkv.prunable, qkv.blockers
    bounds = sorted((lit.index < 0, lit.value) for lit in qkv.literals if lit.node.startswith("slice"))
    # ends of the query and key pieces (32, 48 of 64 rows), starts of the key and value pieces (~dim: negative)
    assert bounds == [(False, 32), (False, 48), (True, 32), (True, 48)]
    assert all(len(lit.heads) == lit.value for lit in qkv.literals if lit.node.startswith("slice"))  # the channels before
    assert _group(groups, "model.layers.0.mlp.gate_up_proj.weight").prunable


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_phi3_prunes_exactly_and_round_trips(level: float) -> None:
    model, ids = _phi3(), _ids()
    pruned, groups, masks = prune_hf_exactly(model, (ids,), _KW, level, tolerance=1e-6)  # HF's RMSNorm computes in float32
    _check_qkv_bounds(groups)
    assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", "model.embed_tokens.weight"} <= set(masks)
    config = hf_config(pruned)
    assert config.hidden_size == _kept(level, 32)
    assert config.intermediate_size == _kept(level, 48)
    assert config.num_key_value_heads == 1  # of 2 units (a key / value head with its 2 query heads)
    assert config.num_attention_heads == 2 * config.num_key_value_heads
    assert config.head_dim == 8
    for layer in range(2):
        attention = pruned.get_submodule(f"model.layers.{layer}.self_attn")
        assert isinstance(attention, Phi3Attention)
        assert attention.qkv_proj.weight.shape == ((2 + 2 * 1) * 8, config.hidden_size)
        assert attention.o_proj.weight.shape == (config.hidden_size, 2 * 8)
        assert attention.num_key_value_heads == 1  # forward slices qkv at query_pos + num_key_value_heads * head_dim
    assert hf_config(model).num_key_value_heads == 2 and model.model.layers[0].self_attn.num_key_value_heads == 2
    round_trip(pruned, (ids,), _KW)


# --- GPT-2: Conv1D, fused c_attn split into q / k / v ------------------------------------------------


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_gpt2_heads_and_mlp_prune_exactly(level: float) -> None:
    model, ids = _gpt2(), _ids()
    pruned, groups, masks = prune_hf_exactly(model, (ids,), _KW, level)
    hidden = _group(groups, "transformer.wte.weight")
    assert not hidden.prunable and any("normalizes across the channels" in b.reason for b in hidden.blockers)
    assert {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "mlp.c_fc")} == set(masks)
    heads = 2  # floor(0.7 * 4) and floor(0.5 * 4) of the 4 heads
    for layer in range(2):
        attention = pruned.get_submodule(f"transformer.h.{layer}.attn")
        assert isinstance(attention, GPT2Attention)
        assert attention.split_size == heads * 8  # c_attn(x).split(self.split_size, dim=2)
        assert attention.head_dim == 8
        assert attention.c_attn.nf == 3 * heads * 8 and attention.c_attn.weight.shape == (32, 3 * heads * 8)
        assert attention.c_proj.nx == heads * 8 and attention.c_proj.nf == 32
        mlp = pruned.get_submodule(f"transformer.h.{layer}.mlp")
        assert isinstance(mlp, GPT2MLP)
        assert mlp.c_fc.nf == _kept(level, 128) == mlp.c_proj.weight.shape[0]
    original = model.get_submodule("transformer.h.0.attn")
    assert isinstance(original, GPT2Attention) and original.split_size == 32 and original.c_attn.nf == 96
    # the head size is n_embd // n_head: no config describes heads pruned with the hidden size whole
    with pytest.raises(fprune.PruneError, match="does not describe its pruned shapes"):
        fprune.hf.save_pretrained(pruned, "/nonexistent/never-written")


def _masked_logits(model: torch.nn.Module, masks: Mapping[str, Tensor], groups: tuple[ChannelGroup, ...], ids: Tensor) -> Tensor:
    with torch.no_grad():
        return logits(functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,), dict(_KW)))


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_gpt2_mlp_only_round_trips(level: float) -> None:
    model, ids = _gpt2(), _ids()
    groups = exported_groups(model, (ids,), _KW)
    masks = {k: v for k, v in fprune.group_masks(model, groups, level).items() if ".mlp." in k}
    assert len(masks) == 2
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(logits(pruned(ids, **_KW)), _masked_logits(model, masks, groups, ids), rtol=1e-10, atol=1e-10)
    config = hf_config(pruned)
    assert config.n_inner == _kept(level, 128) and config.n_embd == 32 and config.n_head == 4
    assert hf_config(model).n_inner is None  # the original's config unchanged
    round_trip(pruned, (ids,), _KW)


def test_gpt2_hidden_size_renormalized_is_not_exact() -> None:
    model, ids = _gpt2(), _ids()
    groups = exported_groups(model, (ids,), _KW, norms="renormalize")
    hidden = _group(groups, "transformer.wte.weight")
    assert hidden.prunable and hidden.inexact and not hidden.exact
    masks = {k: v for k, v in fprune.group_masks(model, groups, 0.5).items() if k in hidden.producers}
    assert masks
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        out = logits(pruned(ids, **_KW))
    assert out.shape == (2, 7, 64) and bool(torch.isfinite(out).all())
    assert pruned.get_submodule("transformer.wte").weight.shape == (64, 16)
    assert model.get_submodule("transformer.wte").weight.shape == (64, 32)
