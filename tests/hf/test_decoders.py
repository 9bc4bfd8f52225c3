"""The Llama family of transformers decoders pruned through torch.export: Llama, Qwen2, Qwen3 (an
RMSNorm over the dims of each head: ``q_norm`` / ``k_norm``), Mistral, Gemma (an RMSNorm of the
form ``x * (1 + w)`` and embeddings scaled by ``sqrt(hidden_size)``, tied to the LM head).

Each loses MLP width, whole key / value heads with their query heads, and hidden size; the copy
computes what the masked model computes, its config says its shapes, and save_pretrained /
from_pretrained gives the same model."""

from __future__ import annotations

import pytest
import torch
import transformers
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fprune

from .exact import config as hf_config
from .exact import exported_groups, logits, prune_hf_exactly, round_trip, tiny

_KW = {"use_cache": False}
_SIZES = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
_FAMILIES: dict[str, tuple[str, str, bool]] = {  # name -> (config class, model class, takes head_dim)
    "llama": ("LlamaConfig", "LlamaForCausalLM", True),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", True),
    "mistral": ("MistralConfig", "MistralForCausalLM", True),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", True),
}


def _decoder(family: str) -> nn.Module:
    config_class, model_class, takes_head_dim = _FAMILIES[family]
    torch.manual_seed(0)
    sizes: dict[str, object] = {**_SIZES, **({"head_dim": 8} if takes_head_dim else {})}
    config = getattr(transformers, config_class)(**sizes)
    model = getattr(transformers, model_class)(config)
    assert isinstance(model, nn.Module)
    if family == "gemma":  # its norm weights start at 0 (x * (1 + 0)): make them tell the channels apart
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("norm.weight"):
                    parameter.normal_(0.0, 0.5)
    return tiny(model)


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def _linear(model: nn.Module, fqn: str) -> nn.Linear:
    module = model.get_submodule(fqn)
    assert isinstance(module, nn.Linear)
    return module


def _prune_channels_exactly(model: nn.Module, ids: torch.Tensor, level: float) -> nn.Module:
    """``fprune.prune_channels`` (which exports the model itself), checked as prune_hf_exactly
    checks apply_prune: the copy computes what the model masked at `level` computes, and the
    model and its config are unchanged."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = hf_config(model).to_dict()
    pruned = fprune.prune_channels(model, level, example_inputs=(ids,), example_kwargs=_KW)
    assert isinstance(pruned, type(model))
    groups = exported_groups(model, (ids,), _KW)
    masks = fprune.group_masks(model, groups, level)
    with torch.no_grad():
        expected = logits(functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,), _KW))
        torch.testing.assert_close(logits(pruned(ids, **_KW)), expected, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original changed"
    assert hf_config(model).to_dict() == config_before, "the original's config changed"
    return pruned


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("family", list(_FAMILIES))
def test_decoder_prunes_exactly_and_round_trips(family: str, level: float) -> None:
    """At 0.3 through apply_prune, at 0.5 through prune_channels (the test of both ends alike)."""
    model, ids = _decoder(family), _ids()
    if level == 0.3:
        pruned, groups, _ = prune_hf_exactly(model, (ids,), _KW, level, tolerance=1e-6)  # HF's RMSNorms compute in float32
        kinds = {g.producers[0].rsplit(".", 2)[-2] for g in groups if g.prunable}
        assert {"embed_tokens", "q_proj", "gate_proj"} <= kinds, fprune.explain(groups)  # hidden size, heads, MLP
    else:
        pruned = _prune_channels_exactly(model, ids, level)
    config = hf_config(pruned)
    embed = pruned.get_submodule("model.embed_tokens")
    assert isinstance(embed, nn.Embedding)
    hidden = embed.weight.shape[1]
    attention, mlp = "model.layers.0.self_attn", "model.layers.0.mlp"
    q, k, v = (_linear(pruned, f"{attention}.{p}_proj") for p in "qkv")
    gate = _linear(pruned, f"{mlp}.gate_proj")
    # every kind of channel lost some: hidden size, MLP width, a key / value head with its 2 query heads
    assert hidden == int((1 - level) * 32 + 1e-9) and gate.out_features == int((1 - level) * 48 + 1e-9)
    assert (k.out_features, q.out_features) == (8, 16)
    assert (config.hidden_size, config.intermediate_size, config.head_dim) == (hidden, gate.out_features, 8)
    assert config.num_key_value_heads * 8 == k.out_features == v.out_features
    assert config.num_attention_heads * 8 == q.out_features == _linear(pruned, f"{attention}.o_proj").in_features
    assert q.in_features == hidden and _linear(pruned, f"{mlp}.down_proj").out_features == hidden
    assert config.rms_norm_eps == pytest.approx(1e-6 * 32 / hidden)
    for module in pruned.modules():  # every layer alike
        if isinstance(module, nn.Linear):
            assert module.in_features in (hidden, 16, gate.out_features) and module.out_features in (hidden, 8, 16, gate.out_features, 64)
    round_trip(pruned, (ids,), _KW)


class _HeadNormAttention(nn.Module):
    """Attention whose queries pass an RMSNorm over the dims of each head, written as `variant`
    says (``"rms"``: Qwen3's; the others are not RMSNorms and must block the heads)."""

    def __init__(self, variant: str, eps: float = 1e-6) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16, bias=False) for _ in range(4))
        self.variant, self.eps = variant, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, 4) for p in (self.q, self.k, self.v))
        if self.variant == "rms":
            q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + self.eps)
        elif self.variant == "centered":  # a mean subtracted: not a product with the statistic
            q = q - q.mean(-1, keepdim=True)
        elif self.variant == "over heads":  # the statistic across heads
            q = q * torch.rsqrt(q.pow(2).mean(-2, keepdim=True) + self.eps)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        result: torch.Tensor = self.o(out.transpose(1, 2).reshape(b, t, -1))
        return result


@pytest.mark.parametrize("variant, eps, follows", [("rms", 1e-6, True), ("rms", 0.0, False), ("centered", 1e-6, False), ("over heads", 1e-6, False)])
def test_rms_norm_over_each_head_follows_heads_and_nothing_else(variant: str, eps: float, follows: bool) -> None:
    torch.manual_seed(0)
    model = tiny(_HeadNormAttention(variant, eps))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
    heads = next(g for g in groups if "q.weight" in g.producers)
    assert heads.prunable == follows, fprune.explain(groups)
    if follows:  # a removed head is zero in the masked model: rsqrt(0 + eps) is finite, and the product 0 again
        masks = fprune.group_masks(model, groups, 0.5)
        pruned = fprune.apply_prune(model, masks, groups)
        with torch.no_grad():
            expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
            assert isinstance(pruned, nn.Module) and pruned.q.out_features == 8
            torch.testing.assert_close(pruned(x), expected, rtol=1e-10, atol=1e-10)
