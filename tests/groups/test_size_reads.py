"""Sizes that forward reads from shapes or writes into splits, and pruning that changes them.

Regression tests for two ways a pruned copy used to fail on its first forward:
- a channel count read from a tensor's shape (``B, N, C = x.shape``) that later sizes another
  tensor (timm's ViT attention: ``o.transpose(1, 2).reshape(B, N, C)``): the read ties the two
  groups, or blocks both with the reason;
- ``split`` with a list or tuple of sizes (``torch.split(h, [self.half_c, self.half_c], 1)``,
  YOLOv8's ``h.split((self.c, self.c), 1)``): every size is updated, not only the first.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import fprune


def _exact(model: nn.Module, level: float, x: Tensor) -> nn.Module:
    """Prune every prunable group at `level`; the copy must run and equal the masked original."""
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        masked = torch.func.functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
        torch.testing.assert_close(pruned(x), masked, rtol=1e-9, atol=1e-9)
    return pruned


def _group_of(groups: tuple[fprune.ChannelGroup, ...], producer: str) -> fprune.ChannelGroup:
    return next(g for g in groups if producer in g.producers)


class FusedQkvAttention(nn.Module):
    """timm's ViT attention: fused qkv, ``B, N, C = x.shape``, merged back with ``C``."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)
        out: Tensor = self.proj(o.transpose(1, 2).reshape(B, N, C))
        return out


class SplitAttention(nn.Module):
    """Separate q / k / v, merged back with a width read from the input's shape."""

    def __init__(self, dim: int = 8, heads: int = 2, merge: str = "C") -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.merge = heads, dim // heads, merge
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, h: Tensor, B: int, N: int) -> Tensor:
        return h.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        o = F.scaled_dot_product_attention(self._heads(self.q(x), B, N), self._heads(self.k(x), B, N), self._heads(self.v(x), B, N))
        o = o.transpose(1, 2)
        if self.merge == "C":
            o = o.reshape(B, N, C)
        elif self.merge == "size":
            o = o.reshape(B, N, x.size(-1))
        else:  # arithmetic on the read width
            o = o.reshape(B, N, C // 2 * 2)
        out: Tensor = self.proj(o)
        return out


class Encoder(nn.Module):
    def __init__(self, attention: nn.Module, residual: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = attention
        self.head = nn.Linear(8, 2)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = h + self.attn(h) if self.residual else self.attn(h)
        out: Tensor = self.head(h)
        return out


TOKENS = torch.randn(2, 5, 3, dtype=torch.float64)


def test_fused_qkv_vit_attention_is_never_returned_broken() -> None:
    """The issue's minimal case: the stream was pruned, the attention width not, and
    ``reshape(B, N, C)`` failed in the copy. The read ties the stream to the heads of the fused
    qkv (``reshape(B, N, 3, H, D)``): both keep the same positions, whole heads, so ``C`` stays
    equal to the merged heads' width."""
    model = Encoder(FusedQkvAttention(), residual=False).double().eval()
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(TOKENS,))
    stream = _group_of(groups, "embed.weight")
    assert stream.prunable and "attn.qkv.weight" in stream.producers and len(stream.units) == 2
    assert _group_of(groups, "attn.proj.weight").prunable  # the attention's output width too
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(TOKENS,))
    assert pruned(TOKENS).shape == (2, 5, 2) and pruned.embed.out_features == 4 and pruned.head.in_features == 4
    attention, qkv = pruned.get_submodule("attn"), pruned.get_submodule("attn.qkv")
    assert isinstance(attention, FusedQkvAttention) and attention.num_heads == 1
    assert isinstance(qkv, nn.Linear) and qkv.out_features == 12
    _exact(model, 0.5, TOKENS)


@pytest.mark.parametrize("merge", ["C", "size"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("traced", [False, True])
def test_width_read_from_a_shape_ties_the_stream_to_the_heads(merge: str, residual: bool, traced: bool) -> None:
    model: nn.Module = Encoder(SplitAttention(merge=merge), residual).double().eval()
    if traced:
        model = fx.symbolic_trace(model)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(TOKENS,))
    tied = _group_of(groups, "embed.weight")
    assert tied.prunable and "attn.v.weight" in tied.producers and len(tied.units) == 2  # pruned by whole heads
    pruned = _exact(model, 0.5, TOKENS)
    embed, proj = pruned.get_submodule("embed"), pruned.get_submodule("attn.proj")
    assert isinstance(embed, nn.Linear) and isinstance(proj, nn.Linear)
    assert embed.out_features == proj.in_features == 4


def test_arithmetic_on_a_read_width_blocks_its_channels() -> None:
    model = Encoder(SplitAttention(merge="arith")).double().eval()
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(TOKENS,))
    stream = _group_of(groups, "embed.weight")
    assert [b.node for b in stream.blockers] == ["floordiv"]
    assert "use -1 in a view / reshape" in stream.blockers[0].reason
    assert not _group_of(groups, "attn.q.weight").prunable
    _exact(model, 0.5, TOKENS)


class ReadSizesOtherTensor(nn.Module):
    """A width read from one tensor sizes a tensor whose channels do not follow it."""

    def __init__(self, new: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.new = nn.Linear(4, 6), nn.Linear(6, 3), new
        self.table = nn.Parameter(torch.randn(2, 3, 6))

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        B, N, C = h.shape
        if self.new == "zeros":
            extra = x.new_zeros(B, N, C)  # x: the model input, whose channels are not pruned
        else:  # a model tensor (untracked channels) reshaped with the read width
            extra = self.table.reshape(B, N, C)
        out: Tensor = self.fc2(torch.relu(h))
        return out + extra.sum(-1, keepdim=True)


@pytest.mark.parametrize("new", ["zeros", "reshape"])
def test_a_read_width_that_sizes_another_tensor_blocks(new: str) -> None:
    model = ReadSizesOtherTensor(new).double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    hidden = _group_of(groups, "fc1.weight")
    assert not hidden.prunable
    assert "reads a size of these channels" in hidden.blockers[0].reason
    _exact(model, 0.5, x)


class ReadsBatchAndTokens(nn.Module):
    """Sizes read on dims without channels (batch, tokens) do not change with pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x))
        B, N = h.shape[0], h.size(1)
        out: Tensor = self.fc2(h.reshape(B * N, -1))
        return out.view(B, N, -1)


def test_reads_of_dims_without_channels_do_not_block() -> None:
    model = ReadsBatchAndTokens().double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    assert _group_of(groups, "fc1.weight").prunable
    fc1 = _exact(model, 0.5, x).get_submodule("fc1")
    assert isinstance(fc1, nn.Linear) and fc1.out_features == 3


# --- split with a list or tuple of sizes ----------------------------------------------------------


class C2f(nn.Module):
    """YOLOv8's C2f core: a conv to 2c channels, split in two, one half through another conv,
    all concatenated. The split sizes come in every form forward can write them."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.c = self.half_c = 4
        self.form = form
        self.cv1 = nn.Conv2d(3, 8, 1)
        self.m = nn.Conv2d(4, 4, 3, padding=1)
        self.cv2 = nn.Conv2d(12, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.cv1(x)
        if self.form == "torch.split list":
            a, b = torch.split(h, [self.half_c, self.half_c], 1)
        elif self.form == "method tuple":
            a, b = h.split((self.c, self.c), 1)
        elif self.form == "keyword list":
            a, b = torch.split(h, split_size_or_sections=[self.c, self.c], dim=1)
        elif self.form == "method int":
            a, b = h.split(self.c, 1)
        else:  # sizes written as numbers
            a, b = torch.split(h, [4, 4], 1)
        out: Tensor = self.cv2(torch.cat([a, b, self.m(b)], 1))
        return out


IMAGE = torch.randn(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("form", ["torch.split list", "method tuple", "keyword list", "method int"])
@pytest.mark.parametrize("traced", [False, True])
def test_split_updates_every_size_written_with_attributes(form: str, traced: bool) -> None:
    model: nn.Module = C2f(form).double().eval()
    if traced:
        model = fx.symbolic_trace(model)
    pruned = _exact(model, 0.5, IMAGE)
    cv1 = pruned.get_submodule("cv1")
    assert isinstance(cv1, nn.Conv2d) and cv1.out_channels == 4
    if not traced:
        assert isinstance(pruned, C2f) and pruned.c == pruned.half_c == 2


def test_split_with_literal_sizes_is_refused_on_a_module_and_rewritten_in_a_graph() -> None:
    model = C2f("literal").double().eval()
    with pytest.raises(fprune.PruneError, match=r"^prune_channels: pruning changes counts that forward writes into a view / reshape / split"):
        fprune.prune_channels(model, 0.5, example_inputs=(IMAGE,))
    _exact(fx.symbolic_trace(model), 0.5, IMAGE)  # a GraphModule is its graph: its numbers are rewritten


def test_without_shapes_a_read_width_blocks_rather_than_guesses() -> None:
    """Without example inputs the dims of a read shape are unknown: every read of a tensor of
    channels counts as one that can change, and a use of it blocks."""
    model = ReadsBatchAndTokens().double().eval()
    groups = fprune.channel_groups(fx.symbolic_trace(model))
    assert not _group_of(groups, "fc1.weight").prunable


torch.fx.wrap("len")  # len(x) of a traced tensor is recorded only when wrapped


class LenOfChannels(nn.Module):
    """Channels on dim 0 (an unbatched Linear output, transposed), counted with ``len``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x)).transpose(0, 1)  # [channels, tokens]
        scale = len(h)
        out: Tensor = self.fc2(h.transpose(0, 1) / scale)
        return out


def test_len_of_a_tensor_of_channels_is_a_read() -> None:
    model = LenOfChannels().double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    hidden = _group_of(groups, "fc1.weight")
    assert [b.node for b in hidden.blockers] == ["truediv"]
    _exact(model, 0.5, x)


class ComputedDimRead(nn.Module):
    """``h.size(d)`` with `d` computed in forward: the read may count any dim's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x))
        width = h.size(x.dim() - 1)
        out: Tensor = self.fc2(h)
        return out * width


def test_a_size_read_along_a_computed_dim_blocks_the_channels_it_may_count() -> None:
    model = ComputedDimRead().double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    hidden = _group_of(groups, "fc1.weight")
    assert not hidden.prunable and [b.node for b in hidden.blockers] == ["mul"]
    _exact(model, 0.5, x)
