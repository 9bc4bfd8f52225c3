"""Reach on timm-style vision transformers (tests/zoo_vit.py): heads through a fused qkv Linear
(``reshape(B, N, 3, H, D)``, ``permute``, ``unbind`` or ``qkv[i]``), the MLP width, and the
residual stream followed through the patch embed, the cls token concat, ``+ pos_embed`` and
``x[:, 0]`` up to its LayerNorms, which alone block it. Layouts fprune cannot keep right block,
with their reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import fprune
from fprune.groups import ChannelGroup

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot
from ..vision_zoo import zoo_builder
from ..zoo_vit import ZOO, Attention, WindowAttention, vit

_HEADS_FREE = ("vit_merge_-1", "vit_index_manual_merge_-1", "vit_merge_flatten")  # reshape(B, N, -1), flatten(2): heads prunable
_TIMM = ("vit", "vit_index_manual")  # reshape(B, N, C): heads blocked, with the reason


def _group_of(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    return next(g for g in groups if producer in g.producers)


def _attention(model: nn.Module, block: int) -> Attention:
    attention = model.get_submodule(f"blocks.{block}.attn")
    assert isinstance(attention, Attention)
    return attention


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_vit_families_prune_exactly(name: str, level: float) -> None:
    model, x = ZOO[name]()
    before = snapshot(model)
    pruned, groups = prune_exactly(model, x, level)
    hidden = pruned.get_submodule("stage1.0.mlp.fc1" if name == "swin" else "blocks.0.mlp.fc1")
    assert isinstance(hidden, nn.Linear) and hidden.out_features < (128 if name == "swin" else 256)  # the MLP width
    assert_unchanged(model, before)


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", _HEADS_FREE)
def test_fused_qkv_heads_are_pruned_whole(name: str, level: float) -> None:
    model, x = ZOO[name]()
    groups = groups_with_shapes(model, x)
    heads = _group_of(groups, "blocks.0.attn.qkv.weight")
    assert heads.prunable and heads.producers == ("blocks.0.attn.qkv.weight",)
    assert heads.size == 64 and len(heads.units) == 4 and all(len(u) == 16 for u in heads.units)  # q, k, v rows: one channel
    qkv_rows = next(m for m in heads.members if m.fqn == "blocks.0.attn.qkv.weight")
    assert len(qkv_rows.positions) == 192  # all three parts
    assert {(m.fqn, m.dim, m.role) for m in heads.members} >= {
        ("blocks.0.attn.qkv.bias", 0, "carrier"), ("blocks.0.attn.proj.weight", 1, "consumer"),
    }  # fmt: skip
    assert [(lit.value, lit.factor, lit.module) for lit in heads.literals] == [(4, 1, "blocks.0.attn")]
    pruned, _ = prune_exactly(model, x, level)
    for block in range(2):
        attention = _attention(pruned, block)
        assert attention.num_heads < 4 and attention.head_dim == 16  # whole heads go; a head keeps its width
        assert attention.qkv.out_features == 3 * attention.num_heads * 16 and attention.proj.in_features == attention.num_heads * 16
        assert attention.proj.out_features == 64  # the residual stream stays (its LayerNorms block it)
    assert _attention(model, 0).num_heads == 4  # the original is untouched


def test_a_traced_vit_gets_its_head_count_rewritten_in_the_graph() -> None:
    model, x = ZOO["vit_merge_-1"]()
    gm = fx.symbolic_trace(model)
    pruned, _ = prune_exactly(gm, x, 0.5)
    assert isinstance(pruned, fx.GraphModule) and "reshape(getitem_1, getitem_2, 3, 2, 16)" in pruned.code
    assert "reshape(getitem_1, getitem_2, 3, 4, 16)" in gm.code


@pytest.mark.parametrize("name", _TIMM)
def test_heads_merged_back_with_the_input_width_block_with_the_reason(name: str) -> None:
    """timm's ``reshape(B, N, C)``: C is the attention input's width, which pruning heads does not
    change (a LayerNorm blocks it), so the heads stay, with a reason that says how to free them."""
    model, x = ZOO[name]()
    groups = groups_with_shapes(model, x)
    heads = _group_of(groups, "blocks.0.attn.qkv.weight")
    assert not heads.prunable and len(heads.units) == 4
    assert [b.node for b in heads.blockers] == ["reshape_1" if name == "vit" else "reshape_1"]
    assert "merges 4 attention heads back to the width" in heads.blockers[0].reason
    assert "write `reshape(B, N, -1)` there to prune heads" in heads.blockers[0].reason
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,))
    assert _attention(pruned, 0).num_heads == 4 and _attention(pruned, 0).qkv.out_features == 192


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"swin"}))
def test_the_residual_stream_is_blocked_only_by_its_layernorms(name: str) -> None:
    model, x = ZOO[name]()
    gm = fx.symbolic_trace(model)
    groups = fprune.channel_groups(gm, example_inputs=(x,))
    stream = _group_of(groups, "patch_embed.proj.weight")
    norms = {n.name for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.LayerNorm)}
    assert len(norms) == 5 and {b.node for b in stream.blockers} <= norms  # a channel keeps its first blocker
    rules = fprune.groups.default_flow_rules()
    rules[nn.LayerNorm] = lambda ctx: ctx.input(0)  # LayerNorm taken as passing the channels on: nothing else blocks
    assert not _group_of(fprune.channel_groups(gm, example_inputs=(x,), rules=rules), "patch_embed.proj.weight").blockers
    assert set(stream.producers) == {
        "patch_embed.proj.weight", *(f"blocks.{i}.{layer}.weight" for i in range(2) for layer in ("attn.proj", "mlp.fc2"))
    }
    roles = {(m.fqn, m.dim, m.role) for m in stream.members}
    assert {("cls_token", 2, "carrier"), ("pos_embed", 2, "carrier")} <= roles  # the concat along tokens, the add


class _Tokens(nn.Module):
    """A ViT stem without norms, so that its stream is prunable: patch embed, cls token (a
    parameter expanded or as it is), ``+ pos_embed``, a token mixer, ``x[:, 0]`` or
    ``x[..., 0, :]``, head."""

    def __init__(self, cls: str = "expand", pool: str = "cls") -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.register_buffer("cls_buffer", torch.randn(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, 16))
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)
        self.cls, self.pool = cls, pool

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        cls: Tensor
        if self.cls == "expand":
            cls = self.cls_token.expand(B, -1, -1)
        elif self.cls == "literal width":  # the channel count written as a number: pruning would not follow
            cls = self.cls_token.expand(B, 1, 16)
        elif self.cls == "buffer":  # masked_parameters cannot zero a buffer's removed channels (batch 1)
            cls = self.get_buffer("cls_buffer")
        else:  # the parameter itself, batch 1
            cls = self.cls_token
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = x + F.relu(self.fc(x))
        pooled = x[:, 0] if self.pool == "cls" else x[..., 0, :]
        out: Tensor = self.head(pooled)
        return out


@pytest.mark.parametrize(("cls", "pool", "batch"), [("expand", "cls", 2), ("expand", "ellipsis", 2), ("param", "cls", 1)])
def test_cls_token_pos_embed_and_cls_pooling_are_followed(cls: str, pool: str, batch: int) -> None:
    model, x = zoo_builder(lambda: _Tokens(cls, pool))()
    x = x[:batch]
    stream = _group_of(groups_with_shapes(model, x), "embed.weight")
    assert stream.prunable and {("cls_token", 2, "carrier"), ("pos_embed", 2, "carrier")} <= {(m.fqn, m.dim, m.role) for m in stream.members}
    pruned, _ = prune_exactly(model, x, 0.5)
    assert pruned.get_parameter("cls_token").shape == (1, 1, 8) and pruned.get_parameter("pos_embed").shape == (1, 17, 8)


@pytest.mark.parametrize(("cls", "batch"), [("literal width", 2), ("buffer", 1)])
def test_a_cls_token_that_cannot_follow_blocks(cls: str, batch: int) -> None:
    model, x = zoo_builder(lambda: _Tokens(cls))()
    stream = _group_of(groups_with_shapes(model, x[:batch]), "embed.weight")
    assert not stream.prunable and [b.node for b in stream.blockers] == ["cat"]
    assert "torch.cat of tracked channels with untracked tensors" in stream.blockers[0].reason


@pytest.mark.parametrize(
    ("layout", "node", "reason"),
    [
        ("interleaved", "scaled_dot_product_attention", "must be split into heads on dim -3"),
        ("computed", "reshape", "with the head width `floordiv` computed in forward"),
    ],
)
def test_broken_fused_layouts_block_with_the_reason(layout: str, node: str, reason: str) -> None:
    """``reshape(B, N, 3, D, H)`` (a head's channels strided) and ``reshape(B, N, 3, H, C // H)``
    (a head width that changes when the head count is rewritten) are refused, never pruned."""
    model, x = zoo_builder(vit(merge="-1", layout=layout))()
    heads = _group_of(groups_with_shapes(model, x), "blocks.0.attn.qkv.weight")
    assert not heads.prunable
    assert any(b.node == node and reason in b.reason for b in heads.blockers), heads.blockers
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,))
    assert _attention(pruned, 0).qkv.out_features == 192
    prune_exactly(model, x, 0.5)


class _UnbindChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.fc1(x).unbind(-1)
        out: Tensor = self.fc2(a * b)
        return out


def test_unbind_along_the_channels_blocks() -> None:
    model = _UnbindChannels().eval()
    groups = groups_with_shapes(model, torch.randn(2, 5, 4))
    hidden = _group_of(groups, "fc1.weight")
    assert [b.node for b in hidden.blockers] == ["unbind"] and "unbinds the channels" in hidden.blockers[0].reason


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_swin_heads_prune_with_their_relative_position_bias(level: float) -> None:
    """Swin's window views, shifted windows and patch merging are followed, and so are its heads:
    the relative position bias table ``[(2W-1)^2, H]`` (indexed by a buffer, viewed, permuted,
    added to the scores) is sliced on dim 1 with the heads, and the shifted window's
    ``attn.view(-1, nW, self.num_heads, N, N)`` and back get their head count rewritten."""
    model, x = ZOO["swin"]()
    groups = groups_with_shapes(model, x)
    assert _group_of(groups, "stage1.1.mlp.fc1.weight").prunable
    heads = _group_of(groups, "stage1.1.attn.qkv.weight")
    assert heads.prunable and len(heads.units) == 2
    table = [m for m in heads.members if m.fqn == "stage1.1.attn.relative_position_bias_table"]
    assert [(m.dim, m.role, len(m.positions)) for m in table] == [(1, "carrier", 2)]
    # reshape(B_, N, 3, self.num_heads, -1); the mask's view(-1, nW, self.num_heads, N, N) and view(-1, self.num_heads, N, N)
    assert [(lit.node, lit.index, lit.value) for lit in heads.literals] == [("reshape_4", 3, 2), ("view_11", 2, 2), ("view_12", 1, 2)]
    pruned, _ = prune_exactly(model, x, level)
    for block, before in (("stage1.0", 2), ("stage1.1", 2), ("stage2.0", 4)):
        attention = pruned.get_submodule(f"{block}.attn")
        assert isinstance(attention, WindowAttention)
        assert attention.num_heads == max(1, int((1 - level) * before + 1e-9))
        assert attention.relative_position_bias_table.shape == (49, attention.num_heads)
        assert attention.qkv.out_features == 3 * 16 * attention.num_heads and attention.proj.in_features == 16 * attention.num_heads
    assert model.get_submodule("stage2.0.attn").relative_position_bias_table.shape == (49, 4)  # the original stays


class _Window(nn.Module):
    """A WindowAttention whose relative position bias is laid out right or in ways that mix the
    heads: ``view(H, N, N)`` of the ``[N * N, H]`` rows (heads and positions mixed), a table
    flipped along the heads (an op fprune does not follow), a table ``[H, (2W-1)^2]`` indexed on
    its last dim, and a bias also used elsewhere."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.attn = WindowAttention(32, 2, 4)
        self.layout, self.heads = layout, 2  # the head count, as this module writes it
        if layout == "heads first":
            self.attn.relative_position_bias_table = nn.Parameter(torch.randn(2, 49) * 0.02)

    def _bias(self) -> Tensor:
        attn = self.attn
        table, index = attn.relative_position_bias_table, attn.get_buffer("relative_position_index").view(-1)
        if self.layout == "mixed":
            return table[index].view(2, 16, 16).unsqueeze(0)
        if self.layout == "flipped":
            return table.flip(1)[index].view(16, 16, -1).permute(2, 0, 1).unsqueeze(0)
        if self.layout == "heads first":
            return table[:, index].view(-1, 16, 16).unsqueeze(0)
        return table[index].view(16, 16, self.heads).permute(2, 0, 1).contiguous().unsqueeze(0)  # "literal": a number

    def forward(self, x: Tensor) -> Tensor:
        attn = self.attn
        qkv = attn.qkv(x).reshape(x.shape[0], 16, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self._bias()
        scores = (q * attn.scale) @ k.transpose(-2, -1) + bias
        out = (attn.softmax(scores) @ v).transpose(1, 2).reshape(x.shape[0], 16, -1)
        result: Tensor = attn.proj(out)
        if self.layout == "shared":
            result = result + bias.sum()
        return result


def test_a_head_count_written_in_the_bias_view_is_rewritten() -> None:
    model, x = _Window("literal").eval(), torch.randn(3, 16, 32)
    heads = _group_of(groups_with_shapes(model, x), "attn.qkv.weight")
    assert heads.prunable and ("view", 2, 2) in [(lit.node, lit.index, lit.value) for lit in heads.literals]
    pruned, _ = prune_exactly(model, x, 0.5)
    assert pruned.get_submodule("attn").relative_position_bias_table.shape == (49, 1) and getattr(pruned, "heads") == 1


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("mixed", "an elementwise op of attention heads with a tensor that differs per head"),
        ("flipped", "an elementwise op of attention heads with a tensor that differs per head"),
        ("heads first", "an elementwise op of attention heads with a tensor that differs per head"),
        ("shared", "is used elsewhere too"),
    ],
)
def test_a_bias_that_mixes_heads_blocks_them(layout: str, reason: str) -> None:
    model, x = _Window(layout).eval(), torch.randn(3, 16, 32)
    heads = _group_of(groups_with_shapes(model, x), "attn.qkv.weight")
    assert not heads.prunable and any(reason in b.reason for b in heads.blockers), heads.blockers
    assert not any("relative_position_bias_table" in m.fqn for m in heads.members)


class _Rolled(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.fc1, self.fc2, self.dims = nn.Linear(4, 6), nn.Linear(6, 3), dims

    def forward(self, x: Tensor) -> Tensor:
        h = torch.roll(F.relu(self.fc1(x)), shifts=tuple(1 for _ in self.dims), dims=self.dims)
        out: Tensor = self.fc2(h)
        return out


@pytest.mark.parametrize(("dims", "prunable"), [((1, 2), True), ((1,), True), ((-1,), False)])
def test_roll_along_tokens_keeps_the_channels(dims: tuple[int, ...], prunable: bool) -> None:
    model, x = _Rolled(dims).eval(), torch.randn(2, 3, 5, 4)
    hidden = _group_of(groups_with_shapes(model, x), "fc1.weight")
    assert hidden.prunable == prunable
    if prunable:
        prune_exactly(model, x, 0.5)
    else:
        assert "rolls along the channels" in hidden.blockers[0].reason
