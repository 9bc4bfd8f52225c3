"""A small Llama-style decoder whose RMSNorms come in the forms fx traces differently: the
hidden size (the residual stream) is prunable exactly through them (weight and eps rescaled).

``RMSNormForm``:
    ``"plain"``: ``x * rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight``.
    ``"hf"``: HF's ``LlamaRMSNorm``: ``.to(torch.float32)``, ``self.variance_epsilon``,
        ``self.weight * x.to(input_dtype)`` (the compute dtype is an attribute, float32 by
        default: ``llama(..., compute_dtype=torch.float64)`` for checks in float64).
    ``"float"``: ``torch.mean(h * h, dim=-1, keepdim=True)`` of ``h = x.float()``, and the
        rsqrt multiplies another ``x.float()`` (a second cast node of the same tensor); it
        computes in float32 whatever the model's dtype.
    ``"sqrt"``: ``x / torch.sqrt(mean + eps)``, weight first: ``self.weight * (...)``.
    ``"module"``: ``nn.RMSNorm(dim, eps=1e-6)`` (a leaf under fx).
    ``"module_default_eps"``: ``nn.RMSNorm(dim)`` (``eps=None``: the dtype's eps at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zoo import SwiGLU

RMSNormForm = Literal["plain", "hf", "float", "sqrt", "module", "module_default_eps"]
FORMS: tuple[RMSNormForm, ...] = ("plain", "hf", "float", "sqrt", "module", "module_default_eps")


class RMSNorm(nn.Module):
    """A hand-written RMSNorm in one of the forms of the module docstring."""

    def __init__(self, dim: int, form: RMSNormForm = "plain", eps: float = 1e-6, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.form = form
        self.compute_dtype = compute_dtype
        if form == "hf":
            self.variance_epsilon = eps
        else:
            self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.form == "hf":
            input_dtype = x.dtype
            x = x.to(self.compute_dtype)
            variance = x.pow(2).mean(-1, keepdim=True)
            x = x * torch.rsqrt(variance + self.variance_epsilon)
            out: Tensor = self.weight * x.to(input_dtype)
            return out
        if self.form == "float":
            h = x.float()
            variance = torch.mean(h * h, dim=-1, keepdim=True)
            normed = x.float() * torch.rsqrt(variance + self.eps)
            return normed.to(x.dtype) * self.weight
        if self.form == "sqrt":
            return self.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(dim: int, form: RMSNormForm, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    if form == "module":
        return nn.RMSNorm(dim, eps=1e-6)
    if form == "module_default_eps":
        return nn.RMSNorm(dim)
    return RMSNorm(dim, form, compute_dtype=compute_dtype)


class Attention(nn.Module):
    """Causal multi-head attention: q / k / v Linear, heads by view + transpose, SDPA, o_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: Tensor = self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        return out


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, form: RMSNormForm, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = make_norm(dim, form, compute_dtype)
        self.self_attn = Attention(dim, heads)
        self.post_attention_layernorm = make_norm(dim, form, compute_dtype)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        out: Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class LlamaDecoder(nn.Module):
    """Embedding -> `depth` blocks (RMSNorm, attention, residual; RMSNorm, SwiGLU, residual) ->
    final RMSNorm -> lm_head. Input: token ids (b, t); output: logits (b, t, vocab)."""

    def __init__(
        self,
        form: RMSNormForm = "plain",
        vocab: int = 64,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        hidden: int = 64,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([Block(dim, heads, hidden, form, compute_dtype) for _ in range(depth)])
        self.norm = make_norm(dim, form, compute_dtype)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        out: Tensor = self.lm_head(self.norm(x))
        return out


def llama(
    form: RMSNormForm = "plain", *, compute_dtype: torch.dtype = torch.float32, **sizes: int
) -> tuple[LlamaDecoder, Tensor]:
    """The decoder (seeded, eval mode, norm weights away from 1) and a 2x7 batch of token ids."""
    torch.manual_seed(0)
    model = LlamaDecoder(form, compute_dtype=compute_dtype, **sizes).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (RMSNorm, nn.RMSNorm)) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
    return model, torch.randint(0, model.embed_tokens.num_embeddings, (2, 7))


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "llama": lambda: llama("plain"),
    "llama_nn_rmsnorm": lambda: llama("module"),
}
"""What ``python -m benchmarks.reach`` measures: Llama's written-out RMSNorm, and nn.RMSNorm (HF's
form computes in float32 whatever the model's dtype, so its float64 check needs float32
tolerances: tests/groups/test_norms.py)."""
