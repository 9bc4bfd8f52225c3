"""Vision transformers written the way timm writes them (timm cannot be imported here): what
``python -m benchmarks.reach --zoo tests.zoo_vit`` measures, and what tests/groups/test_vit_reach.py
prunes.

Each builder seeds torch with 0 and returns ``(model in eval mode, example input)``, the input
being ``torch.randn(2, 3, 32, 32)``. ``"vit"`` is timm's ``VisionTransformer`` at dim 64, 4 heads,
depth 2, with timm's ``Attention`` line for line; the other ViT entries change one thing each.
``"swin"`` is a Swin stage pair (windows, shifted windows, relative position bias, patch merging).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vision_zoo import zoo_builder
from .zoo_convnext import Mlp


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a conv with stride = patch, then ``x.flatten(2).transpose(1, 2)``."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return out


class Attention(nn.Module):
    """timm's ``Attention``: one fused qkv Linear split into heads by ``reshape(B, N, 3, H, D)``.

    `fused`: ``F.scaled_dot_product_attention`` (timm's ``fused_attn``), else the hand-written
    ``softmax(q * scale @ k^T) @ v``. `split`: ``"unbind"`` (``qkv.unbind(0)``) or ``"index"``
    (``qkv[0], qkv[1], qkv[2]``). `merge`: the width the heads are merged back to: ``"C"`` (timm:
    ``reshape(B, N, C)`` with ``C`` from ``x.shape``), ``"-1"`` (``reshape(B, N, -1)``, as
    Torch-Pruning's ViT example patches timm's forward) or ``"flatten"`` (``flatten(2)``). `layout`: ``"timm"``, or a broken one
    fprune must refuse: ``"interleaved"`` (``reshape(B, N, 3, D, H)``: the head index is the
    last dim) or ``"computed"`` (the head width computed in forward, ``C // self.num_heads``).
    """

    def __init__(
        self, dim: int, num_heads: int, *, fused: bool = True, split: str = "unbind", merge: str = "C", layout: str = "timm"
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn, self.split, self.merge, self.layout = fused, split, merge, layout
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        if self.layout == "interleaved":
            qkv = self.qkv(x).reshape(B, N, 3, self.head_dim, self.num_heads).permute(2, 0, 4, 1, 3)
        elif self.layout == "computed":
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.split == "unbind":
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        if self.merge == "C":
            x = x.transpose(1, 2).reshape(B, N, C)
        elif self.merge == "flatten":
            x = x.transpose(1, 2).flatten(2)
        else:
            x = x.transpose(1, 2).reshape(B, N, -1)
        x = self.proj(x)
        out: Tensor = self.proj_drop(x)
        return out


class Block(nn.Module):
    """timm's pre-norm block: ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, attention: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention(dim, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VisionTransformer(nn.Module):
    """timm's ViT: patch embed, a cls token concatenated along the tokens, ``+ pos_embed``, pre-norm
    blocks, the final norm, cls pooling ``x[:, 0]`` and the head."""

    def __init__(
        self, attention: Callable[[int, int], nn.Module], *, image: int = 32, patch: int = 8, dim: int = 64, depth: int = 2,
        heads: int = 4, num_classes: int = 10,
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        tokens = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        B = x.shape[0]
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        out: Tensor = self.head(x[:, 0])
        return out


def randomize_norms(model: nn.Module) -> None:
    """Non-trivial LayerNorm affine parameters, so that exactness checks bite."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


def vit(*, fused: bool = True, split: str = "unbind", merge: str = "C", layout: str = "timm") -> Callable[[], nn.Module]:
    """A builder of the ViT whose attention takes these arguments (see :class:`Attention`)."""

    def make_attention(dim: int, heads: int) -> nn.Module:
        return Attention(dim, heads, fused=fused, split=split, merge=merge, layout=layout)

    def make() -> nn.Module:
        model = VisionTransformer(make_attention)
        randomize_norms(model)
        return model

    return make


# --- Swin ----------------------------------------------------------------------------------------


def window_partition(x: Tensor, ws: int) -> Tensor:
    """timm: ``[B, H, W, C]`` -> ``[B * windows, ws, ws, C]`` (views that regroup the token dims)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows: Tensor, ws: int, H: int, W: int) -> Tensor:
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


class WindowAttention(nn.Module):
    """timm's Swin WindowAttention: fused qkv, ``reshape(B_, N, 3, H, -1)``, a relative position
    bias table ``[(2W-1)^2, heads]`` indexed by a buffer and added to the scores per head, the
    shifted-window mask, ``reshape(B_, N, -1)``."""

    def __init__(self, dim: int, num_heads: int, ws: int) -> None:
        super().__init__()
        self.num_heads, self.window_area = num_heads, ws * ws
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, num_heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", relative[:, :, 0] * (2 * ws - 1) + relative[:, :, 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def _get_rel_pos_bias(self) -> Tensor:
        index = self.get_buffer("relative_position_index")
        bias = self.relative_position_bias_table[index.view(-1)].view(self.window_area, self.window_area, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B_, N, -1)
        out: Tensor = self.proj(x)
        return out


class SwinBlock(nn.Module):
    """timm's SwinTransformerBlock on ``[B, H, W, C]``: (shifted) windows with ``torch.roll``."""

    def __init__(self, dim: int, num_heads: int, resolution: int, ws: int, shift: int) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, ws)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        mask: Tensor | None = None
        if shift:
            region = torch.zeros(1, resolution, resolution, 1)
            count = 0
            for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    region[:, h, w, :] = count
                    count += 1
            windows = window_partition(region, ws).view(-1, ws * ws)
            mask = windows.unsqueeze(1) - windows.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        shifted = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2)) if self.shift else x
        windows = window_partition(shifted, self.ws).view(-1, self.ws * self.ws, C)
        mask = self.get_buffer("attn_mask") if self.shift else None
        windows = self.attn(windows, mask=mask).view(-1, self.ws, self.ws, C)
        shifted = window_reverse(windows, self.ws, H, W)
        return torch.roll(shifted, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift else shifted

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = x + self._attn(self.norm1(x))
        x = x.reshape(B, -1, C)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    """Swin's downsampling: the four 2x2 neighbours concatenated on the channels, LayerNorm(4C),
    Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        out: Tensor = self.reduction(self.norm(x))
        return out


class Swin(nn.Module):
    """Swin-T's layout, small: patch embed (NHWC), a stage of a window block and a shifted one at
    8x8 (window 4), patch merging, a stage at 4x4, the final norm, mean pooling, head."""

    def __init__(self, dim: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.embed_norm = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, 2, 8, 4, 0), SwinBlock(dim, 2, 8, 4, 2))
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, 4, 4, 4, 0))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        x = self.stage2(self.merge(self.stage1(x)))
        out: Tensor = self.head(self.norm(x).mean((1, 2)))
        return out


def swin() -> nn.Module:
    model = Swin()
    randomize_norms(model)
    return model


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "vit": zoo_builder(vit()),
    "vit_index_manual": zoo_builder(vit(fused=False, split="index")),
    "vit_merge_-1": zoo_builder(vit(merge="-1")),
    "vit_index_manual_merge_-1": zoo_builder(vit(fused=False, split="index", merge="-1")),
    "vit_merge_flatten": zoo_builder(vit(merge="flatten")),
    "swin": zoo_builder(swin),
}
"""Name -> builder of ``(model in eval mode, example input)``."""
