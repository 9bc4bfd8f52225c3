"""A tiny Llama (GQA: 4 query heads on 2 key / value heads) pruned through torch.export: MLP
width, whole key / value heads with their query heads, the hidden size through its RMSNorms;
the config follows, and save_pretrained / from_pretrained gives the same model."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

import fprune

from .exact import config as hf_config
from .exact import exported_groups, logits, prune_hf_exactly, round_trip, tiny

_KW = {"use_cache": False}


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return tiny(LlamaForCausalLM(config))


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_llama_prunes_exactly_and_round_trips(level: float) -> None:
    model, ids = _llama(), _ids()
    pruned, groups, _ = prune_hf_exactly(model, (ids,), _KW, level, tolerance=1e-6)  # HF's RMSNorm computes in float32
    kinds = {g.producers[0].rsplit(".", 2)[-2] for g in groups if g.prunable}
    assert {"embed_tokens", "q_proj", "gate_proj"} <= kinds  # hidden size, heads, MLP
    kept = round((1 - level) * 100) / 100
    config = hf_config(pruned)
    assert config.hidden_size == int(kept * 32 + 1e-9)
    assert config.intermediate_size == int(kept * 48 + 1e-9)
    assert config.num_key_value_heads == int(kept * 2 + 1e-9) or config.num_key_value_heads == 1
    assert config.num_attention_heads == 2 * config.num_key_value_heads  # each key / value head keeps its 2 query heads
    assert config.head_dim == 8
    assert config.rms_norm_eps == pytest.approx(1e-6 * 32 / config.hidden_size)
    round_trip(pruned, (ids,), _KW)


def test_prune_channels_exports_a_model_fx_cannot_trace() -> None:
    model, ids = _llama(), _ids()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(ids,), example_kwargs=_KW)
    assert hf_config(pruned).intermediate_size == 24 and hf_config(model).intermediate_size == 48
    assert isinstance(pruned, LlamaForCausalLM)


def test_layers_pruned_to_different_widths_run_exactly_but_are_not_saved() -> None:
    model, ids = _llama(), _ids()
    groups = exported_groups(model, (ids,), _KW)
    masks = fprune.group_masks(model, groups, 0.5)
    first = "model.layers.0.mlp.gate_proj.weight"
    masks[first] = torch.ones_like(masks[first])  # layer 0 keeps its MLP, layer 1 loses half
    pruned = fprune.apply_prune(model, masks, groups)
    assert pruned.model.layers[0].mlp.up_proj.out_features == 48 and pruned.model.layers[1].mlp.up_proj.out_features == 24
    assert hf_config(pruned).intermediate_size == 48  # no one value holds both: left as it was
    with torch.no_grad():
        torch.testing.assert_close(
            logits(pruned(ids, **_KW)),
            logits(functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,), _KW)),
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as path:
        lost = r"different widths \(layer 0: 48, layer 1: 24\), and LlamaConfig holds one `intermediate_size`.* lose the per-layer"
        with pytest.raises(fprune.PruneError, match=lost):
            fprune.hf.save_pretrained(pruned, path)
        assert not os.listdir(path)  # nothing written
