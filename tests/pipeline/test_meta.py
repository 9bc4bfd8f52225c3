"""Pruning models on the meta device: the structure is pruned, no weight is ever allocated."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fprune

from ..zoo import ZOO, LlamaStyleDecoder


def _on_meta(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_meta_models_prune_to_the_shapes_of_the_real_ones(name: str) -> None:
    model, x = ZOO[name]()
    meta = _on_meta(model)
    real_groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    # the analysis of a meta model (shapes recorded on meta, CPU example input) is the same
    meta_groups = fprune.channel_groups(torch.fx.symbolic_trace(meta), example_inputs=(x,))
    assert meta_groups == real_groups
    masks = fprune.group_masks(model, real_groups, 0.5)  # scored on the real weights, on the CPU
    pruned = fprune.apply_prune(model, masks, real_groups)
    pruned_meta = fprune.apply_prune(meta, masks, meta_groups)
    assert _shapes(pruned_meta) == _shapes(pruned) != _shapes(model)
    assert all(t.device.type == "meta" for t in pruned_meta.state_dict().values())
    assert all(t.device.type == "meta" for t in meta.state_dict().values())  # the input is untouched
    assert _shapes(meta) == _shapes(model)
    assert repr(pruned_meta) == repr(pruned)


def _keep_first_half(groups: tuple[fprune.ChannelGroup, ...]) -> dict[str, torch.Tensor]:
    """Masks written by hand (no values to score on meta): keep the first half of each group's
    producer rows, whole heads where the group has units."""
    masks: dict[str, torch.Tensor] = {}
    for group in groups:
        if not group.prunable or group.reaches_output:
            continue
        keep = torch.zeros(group.size, dtype=torch.bool)
        if group.units:
            for unit in group.units[: max(1, len(group.units) // 2)]:
                keep[list(unit)] = True
        else:
            keep[: max(1, group.size // 2)] = True
        member = next(m for m in group.members if m.fqn == group.producers[0] and m.role == "producer")
        mask = torch.ones(max(member.positions) + 1, dtype=torch.bool)
        mask[list(member.positions)] = keep[list(member.channels)]
        masks[group.producers[0]] = mask
    return masks


def test_a_one_billion_parameter_decoder_prunes_on_meta_without_allocating_weights() -> None:
    with torch.device("meta"):
        model = LlamaStyleDecoder(vocab=32000, dim=2048, depth=22, heads=32, kv_heads=4, hidden=5632)
    params = sum(p.numel() for p in model.parameters())
    assert params > 1_000_000_000
    tokens = torch.randint(0, 32000, (1, 16))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(tokens,))
    masks = _keep_first_half(groups)
    pruned = fprune.apply_prune(model, masks, groups)
    kept = sum(p.numel() for p in pruned.parameters())
    assert 0.25 * params < kept < 0.3 * params  # heads, MLP and the hidden size (through the exact RMSNorms) halved
    assert pruned.get_submodule("embed_tokens").embedding_dim == 1024
    block = pruned.get_submodule("layers.0")
    assert block.get_submodule("mlp.up_proj").out_features == 2816
    assert block.get_submodule("self_attn").kv_heads == 2 and block.get_submodule("self_attn").heads == 16
    assert all(p.device.type == "meta" for p in pruned.parameters())


def test_meta_patterns_prune_with_cpu_masks_and_refuse_folding_without_values() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))
    gm = torch.fx.symbolic_trace(model)
    matches = fprune.match_patterns(gm, fprune.default_patterns())
    mask = torch.arange(16) % 2 == 0
    pruned = fprune.apply_prune(model, {"0.weight": mask}, matches)
    assert isinstance(pruned, nn.Sequential)
    first, norm, last = pruned[0], pruned[1], pruned[3]
    assert isinstance(first, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and isinstance(last, nn.Conv2d)
    assert first.weight.shape == (8, 3, 3, 3) and first.weight.device.type == "meta"
    assert norm.num_features == 8 and last.weight.shape == (8, 8, 3, 3)
    masked = fprune.masked_parameters(model, {"0.weight": mask}, matches)
    assert masked["0.weight"].device.type == "meta"
    with pytest.raises(fprune.PruneError, match="meta device; prune a meta model with prune_bias=True"):
        fprune.apply_prune(model, {"0.weight": mask}, matches, prune_bias=False)


def test_scores_and_masks_on_meta_refuse_with_what_to_do() -> None:
    model, x = ZOO["resnet18"]()
    meta = _on_meta(model)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(meta), example_inputs=(x,))
    with pytest.raises(fprune.PruneError, match=r"`conv1.weight`.*meta device.*write keep-masks"):
        fprune.group_masks(meta, groups, 0.5)
    with pytest.raises(fprune.PruneError, match="meta device and has no values to score"):
        fprune.saliency_mask(torch.empty(8, 4, device="meta"), 0.5)
    mask = torch.ones(16, dtype=torch.bool, device="meta")
    with pytest.raises(fprune.PruneError, match="mask for `conv1.weight` is on the meta device and has no values"):
        fprune.apply_prune(meta, {"conv1.weight": mask}, groups)

