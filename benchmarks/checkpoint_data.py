"""Random Hugging Face Llama checkpoints of any size, written one tensor at a time.

    python -m benchmarks.checkpoint_data FOLDER [--shard-bytes N] [--seed S]

writes :data:`LLAMA_7B` (Llama-2-7B's shapes, 13 GiB of bf16) to FOLDER, for benchmarking
checkpoint streaming on a machine with less memory than the checkpoint. The weights are random
(normal, std 0.02; norm weights ones, biases zeros); each tensor is generated only when its
shard's writer asks for it, so the process holds one tensor at a time.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import torch
from torch import Tensor

from fprune._util.safetensors_stream import write_safetensors

__all__ = ["LLAMA_7B", "llama_shapes", "write_random_llama_checkpoint"]

LLAMA_7B: dict[str, object] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

_CHUNK_ELEMENTS = 2**22  # bf16 values generated per normal_ call
_STD = 0.02

Spec = tuple[str, torch.dtype, tuple[int, ...]]


def _int(config: dict[str, object], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config[{key!r}] must be a positive int, got {value!r}")
    return value


def llama_shapes(config: dict[str, object]) -> list[tuple[str, tuple[int, ...]]]:
    """The names and shapes of the tensors a Llama checkpoint of `config` (LlamaConfig's keys)
    holds, in ``LlamaForCausalLM.state_dict()`` order; with tied word embeddings, without
    ``lm_head.weight`` (as ``save_pretrained`` writes it)."""
    hidden, inter = _int(config, "hidden_size"), _int(config, "intermediate_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads", heads)
    head_dim = _int(config, "head_dim", hidden // heads)
    attention_bias, mlp_bias = bool(config.get("attention_bias", False)), bool(config.get("mlp_bias", False))

    def linear(name: str, out: int, into: int, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"{name}.weight", (out, into))] + ([(f"{name}.bias", (out,))] if bias else [])

    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (_int(config, "vocab_size"), hidden))]
    for layer in range(_int(config, "num_hidden_layers")):
        prefix = f"model.layers.{layer}"
        shapes += linear(f"{prefix}.self_attn.q_proj", heads * head_dim, hidden, attention_bias)
        shapes += linear(f"{prefix}.self_attn.k_proj", kv_heads * head_dim, hidden, attention_bias)
        shapes += linear(f"{prefix}.self_attn.v_proj", kv_heads * head_dim, hidden, attention_bias)
        shapes += linear(f"{prefix}.self_attn.o_proj", hidden, heads * head_dim, attention_bias)
        shapes += linear(f"{prefix}.mlp.gate_proj", inter, hidden, mlp_bias)
        shapes += linear(f"{prefix}.mlp.up_proj", inter, hidden, mlp_bias)
        shapes += linear(f"{prefix}.mlp.down_proj", hidden, inter, mlp_bias)
        shapes += [(f"{prefix}.input_layernorm.weight", (hidden,)), (f"{prefix}.post_attention_layernorm.weight", (hidden,))]
    shapes.append(("model.norm.weight", (hidden,)))
    if not config.get("tie_word_embeddings", False):
        shapes.append(("lm_head.weight", (_int(config, "vocab_size"), hidden)))
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], seed: int) -> Tensor:
    """Tensor `name`'s random value, bf16: ones for a norm weight, zeros for a bias, else
    normal with std 0.02, generated in bf16 chunks from a generator seeded by `seed` and `name`."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    if name.endswith("norm.weight"):
        return out.fill_(1.0)
    if name.endswith(".bias"):
        return out.zero_()
    generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        flat[start : start + _CHUNK_ELEMENTS].normal_(0.0, _STD, generator=generator)
    return out


def _shards(specs: list[Spec], shard_bytes: int) -> list[list[Spec]]:
    """`specs` split in order into runs of at most `shard_bytes` bytes (a larger tensor alone)."""
    shards: list[list[Spec]] = []
    size = 0
    for spec in specs:
        nbytes = spec[1].itemsize * torch.Size(spec[2]).numel()
        if shards and size + nbytes <= shard_bytes:
            shards[-1].append(spec)
            size += nbytes
        else:
            shards.append([spec])
            size = nbytes
    return shards


def write_random_llama_checkpoint(folder: Path, config: dict[str, object], shard_bytes: int = 5 * 2**30, seed: int = 0) -> Path:
    """Write a Hugging Face Llama checkpoint of `config` with random bf16 weights to `folder`
    (created if missing): shards ``model-0000i-of-0000N.safetensors`` of at most `shard_bytes`
    bytes each (a larger tensor gets a shard of its own), ``model.safetensors.index.json`` and
    ``config.json``. Holds one tensor at a time. Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    specs: list[Spec] = [(name, torch.bfloat16, shape) for name, shape in llama_shapes(config)]
    shards = _shards(specs, shard_bytes)
    shapes = {name: shape for name, _, shape in specs}
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / file, shard, lambda name: _random_tensor(name, shapes[name], seed), {"format": "pt"})
        weight_map.update((name, file) for name, _, _ in shard)
    total = sum(torch.bfloat16.itemsize * torch.Size(shape).numel() for _, _, shape in specs)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    full = {**config, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_data", description="Write a random Llama-2-7B-shaped bf16 checkpoint (13 GiB).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shard-bytes", type=int, default=5 * 2**30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = write_random_llama_checkpoint(args.folder, LLAMA_7B, args.shard_bytes, args.seed)
    seconds = time.perf_counter() - start
    size = sum(file.stat().st_size for file in folder.glob("*.safetensors"))
    print(f"{folder}: {size / 2**30:.2f} GiB ({size} bytes) of safetensors in {seconds:.1f} s")


if __name__ == "__main__":
    main()
