"""Layers pruned to different widths: a tiny Gemma3n, whose config holds one ``intermediate_size``
per layer, gets the per-layer list and saves / reloads; its activation sparsity (a gaussian
top-k over the MLP channels) blocks that layer's MLP. (A Llama pruned so is refused by
``save_pretrained``: tests/hf/test_llama.py.)"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

import fprune
from fprune.groups import ChannelGroup

from .exact import config as hf_config
from .exact import exported_groups, logits, round_trip, tiny

_KW = {"use_cache": False}


def _gemma3n(sparsity: list[float]) -> Gemma3nForCausalLM:
    torch.manual_seed(0)
    config = Gemma3nTextConfig(
        vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32, hidden_size_per_layer_input=8,
        intermediate_size=[48, 64], num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_kv_shared_layers=0, activation_sparsity_pattern=sparsity, layer_types=["sliding_attention", "full_attention"],
        laurel_rank=4, altup_num_inputs=2,
    )  # fmt: skip
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its scale buffers computed in float64, as from_pretrained(dtype=) does
    try:
        return tiny(Gemma3nForCausalLM(config))
    finally:
        torch.set_default_dtype(default)


def _ids() -> Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def _mlp(groups: tuple[ChannelGroup, ...], layer: int) -> ChannelGroup:
    return next(g for g in groups if g.prunable and g.producers[0] == f"model.layers.{layer}.mlp.gate_proj.weight")


def _prune_checked(model: Gemma3nForCausalLM, masks: dict[str, Tensor], groups: tuple[ChannelGroup, ...]) -> Gemma3nForCausalLM:
    """`model` pruned by `masks`, checked: the copy computes what the masked model does, the
    original is unchanged."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = hf_config(model).to_dict()
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = logits(functional_call(model, fprune.masked_parameters(model, masks, groups), (_ids(),), _KW))
        torch.testing.assert_close(logits(pruned(_ids(), **_KW)), expected, rtol=1e-10, atol=1e-10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original changed"
    assert hf_config(model).to_dict() == config_before, "the original's config changed"
    return pruned


def test_gemma3n_per_layer_mlp_widths_are_written_per_layer_and_round_trip() -> None:
    model, ids = _gemma3n([0.0, 0.0]), _ids()
    groups = exported_groups(model, (ids,), _KW)
    prunable = {g.producers[0].removeprefix("model.layers.") for g in groups if g.prunable}
    assert prunable == {f"{i}.{p}" for i in (0, 1) for p in ("mlp.gate_proj.weight", "laurel.linear_left.weight")}, fprune.explain(groups)
    masks = {**fprune.group_masks(model, [_mlp(groups, 0)], 0.25), **fprune.group_masks(model, [_mlp(groups, 1)], 0.5)}
    pruned = _prune_checked(model, masks, groups)
    assert [pruned.model.layers[i].mlp.up_proj.out_features for i in (0, 1)] == [36, 32]
    assert hf_config(pruned).intermediate_size == [36, 32] and hf_config(model).intermediate_size == [48, 64]
    reloaded = round_trip(pruned, (ids,), _KW)
    assert hf_config(reloaded).intermediate_size == [36, 32]


def test_gemma3n_activation_sparsity_blocks_that_layers_mlp() -> None:
    model, ids = _gemma3n([0.95, 0.0]), _ids()  # layer 0: gaussian top-k over its gate channels
    groups = exported_groups(model, (ids,), _KW)
    sparse = [g for g in groups if g.producers[0].startswith("model.layers.0.mlp.") and "down_proj" not in g.producers[0]]
    assert sparse and not any(g.prunable for g in sparse), fprune.explain(sparse)
    assert "reduction over the channel dim" in fprune.explain(sparse)  # the top-k's mean / std over the channels
    masks = fprune.group_masks(model, [_mlp(groups, 1)], 0.25)
    pruned = _prune_checked(model, masks, groups)
    assert hf_config(pruned).intermediate_size == [48, 48]
    assert hf_config(pruned).activation_sparsity_pattern == [0.95, 0.0]
