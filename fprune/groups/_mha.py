"""A drop-in nn.MultiheadAttention whose heads are fewer than ``embed_dim / head_dim``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import PruneError


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention after whole heads were removed: ``num_heads * head_dim`` (the rows
    of each q / k / v part of ``in_proj_weight``) may be smaller than ``embed_dim``.

    Stock nn.MultiheadAttention ties every head's width to ``embed_dim``, the width of its
    input and output; this subclass keeps the same parameters, the same call signature and the
    same results, computing attention over ``num_heads`` heads of ``head_dim``. fprune puts it in
    place of a pruned nn.MultiheadAttention (packed ``in_proj_weight``, no ``bias_k`` /
    ``bias_v``, no ``add_zero_attn``).
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        weight = self.in_proj_weight
        assert weight is not None
        return head_pruned_attention(
            query,
            key,
            value,
            weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            self.head_dim,
            self.batch_first,
            self.dropout if self.training else 0.0,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
        )


def head_pruned_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    heads: int,
    size: int,
    batch_first: bool,
    dropout: float,
    key_padding_mask: Tensor | None,
    need_weights: bool,
    attn_mask: Tensor | None,
    average_attn_weights: bool,
    is_causal: bool,
) -> tuple[Tensor, Tensor | None]:
    """HeadPrunedMultiheadAttention's computation: `heads` heads of `size` dims each.

    A function fx records as one call (``torch.fx.wrap``): a pruned model traces like the
    original, whose nn.MultiheadAttention fx keeps whole.
    """
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    elif batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    tgt, batch = query.shape[0], query.shape[1]
    src = key.shape[0]

    def split(x: Tensor, w: Tensor, b: Tensor | None, length: int) -> Tensor:
        return F.linear(x, w, b).reshape(length, batch * heads, size).transpose(0, 1).reshape(batch, heads, length, size)

    q, k, v = split(query, w_q, b_q, tgt), split(key, w_k, b_k, src), split(value, w_v, b_v, src)
    mask = _merge_masks(attn_mask, key_padding_mask, batch, heads, tgt, src, q.dtype, q.device, is_causal)
    if need_weights:
        scores = (q @ k.transpose(-2, -1)) / (size**0.5)
        if mask is not None:
            scores = scores + mask
        probabilities = torch.softmax(scores, dim=-1)
        weights = probabilities
        if dropout:
            probabilities = F.dropout(probabilities, dropout)
        out = probabilities @ v
        attention: Tensor | None = weights.mean(dim=1) if average_attn_weights else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        attention = None
    out = F.linear(out.permute(2, 0, 1, 3).reshape(tgt, batch, heads * size), out_proj_weight, out_proj_bias)
    if not batched:
        out = out.squeeze(1)
        if attention is not None:
            attention = attention.squeeze(0)
    elif batch_first:
        out = out.transpose(0, 1)
    return out, attention


torch.fx.wrap("head_pruned_attention")


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    batch: int,
    heads: int,
    tgt: int,
    src: int,
    dtype: torch.dtype,
    device: torch.device,
    is_causal: bool,
) -> Tensor | None:
    """One additive float mask of shape broadcastable to [batch, heads, tgt, src]."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    merged: Tensor | None = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            raise PruneError("HeadPrunedMultiheadAttention: a per-head (3-D) attn_mask is not supported after pruning heads")
        merged = additive(attn_mask).reshape(1, 1, tgt, src)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).reshape(batch, 1, 1, src)
        merged = padding if merged is None else merged + padding
    return merged
