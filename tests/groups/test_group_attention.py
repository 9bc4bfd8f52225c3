"""Attention heads as channel groups: whole heads, grouped-query attention, head counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune

from ..zoo import ZOO, LlamaStyleDecoder


class ManualAttention(nn.Module):
    """BERT-style attention written out: permute into heads, softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int = 32, num_heads: int = 4, literal: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = dim // num_heads
        self.all_head_size = dim
        self.literal = literal
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[1]
        heads = 4 if self.literal else self.num_heads
        q = self.query(x).view(b, t, heads, self.head_size).permute(0, 2, 1, 3)
        k = self.key(x).view(b, t, heads, self.head_size).permute(0, 2, 1, 3)
        v = self.value(x).view(b, t, heads, self.head_size).permute(0, 2, 1, 3)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size) + mask
        context = torch.softmax(scores, dim=-1) @ v
        merged = context.permute(0, 2, 1, 3).contiguous().view(b, t, heads * self.head_size)
        out: Tensor = self.out(merged)
        return out


def _inputs() -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    return torch.randn(2, 5, 32), torch.zeros(2, 1, 1, 5)


def _prune(model: nn.Module, args: tuple[Tensor, ...], level: float) -> tuple[nn.Module, dict[str, Tensor], tuple[fprune.ChannelGroup, ...]]:
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=args)
    masks = fprune.group_masks(model, groups, level)
    return fprune.apply_prune(model, masks, groups), masks, groups


def test_manual_attention_prunes_whole_heads_and_its_head_count() -> None:
    model = ManualAttention().eval()
    args = _inputs()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=args)
    heads = next(g for g in groups if g.units)
    assert heads.producers == ("query.weight", "key.weight", "value.weight")
    assert len(heads.units) == 4 and all(len(u) == 24 for u in heads.units)  # 8 dims each of q, k, v
    assert {(m.fqn, m.role) for m in heads.members} >= {("query.bias", "carrier"), ("out.weight", "consumer")}
    pruned, masks, groups = _prune(model, args, 0.5)
    attention = pruned
    assert isinstance(attention, ManualAttention) and attention.num_heads == 2
    assert attention.query.out_features == 16 and attention.out.in_features == 16
    assert model.num_heads == 4  # the original is untouched
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), args)
        torch.testing.assert_close(pruned(*args), expected)


def test_gqa_removes_a_key_value_head_with_all_its_query_heads() -> None:
    model, ids = ZOO["llama"]()
    pruned, masks, groups = _prune(model, (ids,), 0.5)
    assert isinstance(pruned, LlamaStyleDecoder)
    for layer in range(2):
        attention = pruned.get_submodule(f"layers.{layer}.self_attn")
        assert (getattr(attention, "heads"), getattr(attention, "kv_heads")) == (2, 1)
        k_proj = attention.get_submodule("k_proj")
        assert isinstance(k_proj, nn.Linear) and k_proj.out_features == 16
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,))
        torch.testing.assert_close(pruned(ids), expected)


def test_plain_multi_head_llama_prunes_heads_one_by_one() -> None:
    torch.manual_seed(0)
    model = LlamaStyleDecoder(vocab=50, dim=32, depth=1, heads=4, kv_heads=4, hidden=48).eval()
    ids = torch.randint(0, 50, (2, 6))
    pruned, masks, groups = _prune(model, (ids,), 0.5)
    attention = pruned.get_submodule("layers.0.self_attn")
    assert (getattr(attention, "heads"), getattr(attention, "kv_heads")) == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids), functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,)))


def test_a_head_count_written_as_a_literal_is_refused() -> None:
    model = ManualAttention(literal=True).eval()
    with pytest.raises(fprune.PruneError, match=r"apply_prune: pruning changes counts that forward writes into a view / reshape / split .*could not find the module attributes"):
        _prune(model, _inputs(), 0.5)


def test_a_traced_graph_module_gets_its_head_counts_rewritten() -> None:
    model = ManualAttention(literal=True).eval()
    args = _inputs()
    gm = torch.fx.symbolic_trace(model)
    groups = fprune.channel_groups(gm, example_inputs=args)
    masks = fprune.group_masks(gm, groups, 0.5)
    pruned = fprune.apply_prune(gm, masks, groups)
    assert isinstance(pruned, torch.fx.GraphModule) and "view(getitem, getitem_1, 2, 8)" in pruned.code
    with torch.no_grad():
        torch.testing.assert_close(pruned(*args), functional_call(gm, fprune.masked_parameters(gm, masks, groups), args))
    assert "view(getitem, getitem_1, 4, 8)" in gm.code  # the input graph is untouched


def test_part_of_a_head_cannot_be_removed() -> None:
    model = ManualAttention().eval()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=_inputs())
    keep = torch.ones(32, dtype=torch.bool)
    keep[3] = False
    with pytest.raises(fprune.PruneError, match=r"mask for `query.weight` removes part of a unit \(an attention head"):
        fprune.apply_prune(model, {"query.weight": keep}, groups)


def test_multihead_attention_heads_are_pruned_into_a_drop_in_subclass() -> None:
    model, x = ZOO["vit"]()
    pruned, masks, groups = _prune(model, (x,), 0.5)
    heads = next(g for g in groups if "blocks.0.attn.in_proj_weight" in g.producers)
    assert len(heads.units) == 4 and heads.size == 192
    attention = pruned.get_submodule("blocks.0.attn")
    assert isinstance(attention, fprune.groups.HeadPrunedMultiheadAttention) and isinstance(attention, nn.MultiheadAttention)
    assert attention.num_heads == 2 and attention.embed_dim == 64 and attention.in_proj_weight.shape == (96, 64)
    assert type(model.get_submodule("blocks.0.attn")) is nn.MultiheadAttention
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)), rtol=1e-5, atol=1e-5)


class _SeqFirstAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, padding: Tensor) -> tuple[Tensor, Tensor | None]:
        h = torch.relu(self.proj(x))
        out, weights = self.attn(h, h, h, key_padding_mask=padding)
        return self.head(out), weights


def test_multihead_attention_input_width_masks_and_weights_follow() -> None:
    torch.manual_seed(1)
    model = _SeqFirstAttention().eval()
    args = (torch.randn(6, 2, 8), torch.tensor([[False] * 5 + [True], [False] * 6]))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=args)
    proj = next(g for g in groups if "proj.weight" in g.producers)
    assert ("attn.in_proj_weight", 1, "consumer") in {(m.fqn, m.dim, m.role) for m in proj.members}
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"proj.weight", "attn.in_proj_weight", "attn.out_proj.weight"}
    pruned = fprune.apply_prune(model, masks, groups)
    attention = pruned.get_submodule("attn")
    assert isinstance(attention, fprune.groups.HeadPrunedMultiheadAttention)
    assert attention.num_heads == 2 and attention.in_proj_weight.shape == (24, 8) and attention.out_proj.weight.shape == (8, 8)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), args)
        got = pruned(*args)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    assert got[1] is not None and got[1].shape == (2, 6, 6)  # attention weights, averaged over the kept heads


def test_multihead_attention_with_kdim_blocks_with_a_reason() -> None:
    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)

        def forward(self, x: Tensor, memory: Tensor) -> Tensor:
            out: Tensor = self.attn(x, memory, memory, need_weights=False)[0]
            return out

    model = CrossAttention()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(torch.randn(1, 3, 8), torch.randn(1, 4, 6)))
    (group,) = groups
    assert not group.prunable and "kdim / vdim" in group.blockers[0].reason


def test_multihead_attention_with_only_its_output_pruned_still_runs() -> None:
    torch.manual_seed(2)
    model = _SeqFirstAttention().eval()
    args = (torch.randn(6, 2, 8), torch.tensor([[False] * 5 + [True], [False] * 6]))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=args)
    keep = torch.tensor([True, False] * 8)
    pruned = fprune.apply_prune(model, {"attn.out_proj.weight": keep}, groups)
    attention = pruned.get_submodule("attn")
    assert isinstance(attention, fprune.groups.HeadPrunedMultiheadAttention) and attention.embed_dim == 8 and attention.num_heads == 4
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, {"attn.out_proj.weight": keep}, groups), args)
        torch.testing.assert_close(pruned(*args)[0], expected[0], rtol=1e-5, atol=1e-5)
