"""Multi-query attention: one key/value head serves every query head, so the heads are one unit
that stays (blocked with the reason); the model's other groups still prune exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes, prune_exactly

MQA_REASON = "multi-query attention: its one key/value head serves every query head"


class MQA(nn.Module):
    """q: `heads` heads, k / v: one head, read by every query head (`style` says how)."""

    def __init__(self, dim: int = 32, heads: int = 4, style: str = "expand") -> None:
        super().__init__()
        self.heads, self.hd, self.kv_heads, self.style = heads, dim // heads, 1, style
        self.q, self.k, self.v, self.o = nn.Linear(dim, dim), nn.Linear(dim, self.hd), nn.Linear(dim, self.hd), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q = self.q(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k(x).view(b, t, 1 if self.style == "expand" else self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(x).view(b, t, 1 if self.style == "expand" else self.kv_heads, self.hd).transpose(1, 2)
        if self.style == "expand":
            y = F.scaled_dot_product_attention(q, k.expand(b, self.heads, t, self.hd), v.expand(b, self.heads, t, self.hd))
        elif self.style == "gqa":
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        elif self.style == "repeat_interleave":
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(self.heads, dim=1), v.repeat_interleave(self.heads, dim=1))
        elif self.style == "repeat":
            y = F.scaled_dot_product_attention(q, k.repeat(1, self.heads, 1, 1), v.repeat(1, self.heads, 1, 1))
        else:  # hand-written, the one head broadcast
            y = torch.softmax(q @ k.transpose(-2, -1) / self.hd**0.5, dim=-1) @ v
        out: Tensor = self.o(y.transpose(1, 2).reshape(b, t, c))
        return out


class MQABlock(nn.Module):
    """x + attn(x), then x + mlp(x): the MLP's hidden width is a group of its own."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.attn = MQA(style=style)
        self.fc1, self.fc2 = nn.Linear(32, 48), nn.Linear(48, 32)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        out: Tensor = x + self.fc2(F.relu(self.fc1(x)))
        return out


STYLES = ("expand", "gqa", "repeat_interleave", "repeat", "manual")


def _heads_group(groups: tuple[ChannelGroup, ...]) -> ChannelGroup:
    return next(g for g in groups if "attn.q.weight" in g.producers)


@pytest.mark.parametrize("style", STYLES)
def test_mqa_heads_are_one_blocked_unit_with_the_reason(style: str) -> None:
    torch.manual_seed(0)
    groups = groups_with_shapes(MQABlock(style).eval(), torch.randn(2, 5, 32))
    heads = _heads_group(groups)
    assert set(heads.producers) == {"attn.q.weight", "attn.k.weight", "attn.v.weight"}
    assert heads.blockers and all(b.reason.startswith(MQA_REASON) for b in heads.blockers), heads.blockers
    assert "heads can only be removed all together; the heads stay, other groups prune" in heads.blockers[0].reason
    assert len(heads.units) == 1 and len(heads.units[0]) == heads.size == 48  # 32 query dims + 8 key + 8 value
    assert MQA_REASON in fprune.explain(groups)


@pytest.mark.parametrize("style", STYLES)
def test_the_mlp_beside_mqa_prunes_exactly_and_the_heads_stay(style: str) -> None:
    torch.manual_seed(0)
    model = MQABlock(style).eval()
    pruned, _ = prune_exactly(model, torch.randn(2, 5, 32), 0.5)
    assert isinstance(pruned, MQABlock)
    assert pruned.fc1.out_features == 24
    assert (pruned.attn.q.out_features, pruned.attn.k.out_features, pruned.attn.o.in_features) == (32, 8, 32)
    assert pruned.attn.heads == 4 and pruned.attn.kv_heads == 1


def test_a_mqa_head_group_given_a_mask_is_refused() -> None:
    torch.manual_seed(0)
    model = MQABlock("expand").eval()
    groups = groups_with_shapes(model, torch.randn(2, 5, 32))
    keep = torch.ones(32, dtype=torch.bool)
    keep[:8] = False  # query head 0 alone: not exact (its output becomes the mean of the values)
    with pytest.raises(fprune.PruneError, match="multi-query attention"):
        fprune.apply_prune(model, {"attn.q.weight": keep}, groups)


def test_gqa_with_two_key_value_heads_still_prunes_its_heads() -> None:
    class GQA(MQA):
        def forward(self, x: Tensor) -> Tensor:
            b, t, _ = x.shape
            q = self.q(x).view(b, t, self.heads, self.hd).transpose(1, 2)
            k = self.k(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = self.v(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, dim=1)
            out: Tensor = self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))
            return out

    torch.manual_seed(0)
    model = GQA()
    model.kv_heads = 2
    model.k, model.v = nn.Linear(32, 16), nn.Linear(32, 16)
    pruned, groups = prune_exactly(model.eval(), torch.randn(2, 5, 32), 0.5)
    heads = next(g for g in groups if "q.weight" in g.producers)
    assert not heads.blockers and len(heads.units) == 2
    assert isinstance(pruned, GQA) and (pruned.heads, pruned.kv_heads, pruned.k.out_features) == (2, 1, 8)
