"""Reach on Hugging Face families: the fraction of parameters (vocabulary tables left out)
``prune_channels`` keeps on tiny random transformers 5 models, levels 0.3 / 0.5, with norms
blocked (exact) and renormalized. ``python -m benchmarks.hf_reach`` (about a minute on 2 cores);
results in docs/benchmarks.md and the README."""

import warnings

import torch
warnings.filterwarnings("ignore")
import transformers as T
T.logging.set_verbosity_error()
import fprune
def dec(cfgcls, modelcls, **kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base.update(kw)
    return getattr(T, modelcls)(getattr(T, cfgcls)(**base))
fams = {
 "Llama": lambda: dec("LlamaConfig","LlamaForCausalLM"),
 "Qwen2": lambda: dec("Qwen2Config","Qwen2ForCausalLM"),
 "Qwen3": lambda: dec("Qwen3Config","Qwen3ForCausalLM", head_dim=8),
 "Mistral": lambda: dec("MistralConfig","MistralForCausalLM", head_dim=8),
 "Gemma": lambda: dec("GemmaConfig","GemmaForCausalLM", head_dim=8),
 "Phi-3": lambda: dec("Phi3Config","Phi3ForCausalLM", pad_token_id=0),
 "GPT-2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
 "BERT": lambda: T.BertModel(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)),
 "ViT": lambda: T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)),
}
def count(m, skip_vocab):
    return sum(p.numel() for n, p in m.named_parameters() if not (skip_vocab and ("embed_tokens" in n or "wte" in n or "word_embeddings" in n or "lm_head" in n)))
print("| family | exact 0.3 | exact 0.5 | renormalize 0.3 | renormalize 0.5 |")
print("|---|---|---|---|---|")
for name, build in fams.items():
    torch.manual_seed(0)
    m = build().eval()
    x = (torch.randn(2, 3, 16, 16),) if name == "ViT" else (torch.randint(0, 64, (2, 7)),)
    row = [name]
    for norms in ("block", "renormalize"):
        for level in (0.3, 0.5):
            p = fprune.prune_channels(m, level, example_inputs=x, norms=norms)
            row.append(f"{count(p, True) / count(m, True):.3f}")
    print("| " + " | ".join(row) + " |")
