"""prune_checkpoint: a safetensors checkpoint (a file, or a Hugging Face folder of shards)
streamed through a plan gives the tensors apply_prune gives, bit for bit, with the config,
index and other files; checkpoint_weights scores a model built on the meta device."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

import fprune
from fprune.calibrate import collect_statistics
from fprune.plan import Plan, checkpoint_weights, make_plan, prune_checkpoint


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 12)
        self.c = nn.Linear(12, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.c(self.b(torch.sigmoid(self.a(x))).relu())  # the sigmoid: a bias fold into b; c has no bias
        return out


def _mlp() -> tuple[Mlp, tuple[fprune.ChannelGroup, ...]]:
    torch.manual_seed(0)
    model = Mlp().double()
    return model, fprune.channel_groups(torch.fx.symbolic_trace(model))


def test_a_single_file_with_bias_compensation_that_adds_a_bias(tmp_path: Path) -> None:
    model, groups = _mlp()
    batches = [torch.randn(4, 6, dtype=torch.float64) for _ in range(3)]
    statistics = collect_statistics(model, batches, groups=groups)
    masks = fprune.group_masks(model, groups, 0.5, ignore=())
    pruned = fprune.apply_prune(model, masks, groups, compensate=statistics)
    plan = Plan.from_json(make_plan(model, masks, groups, compensate=statistics).to_json())
    assert "c.bias" in plan.tensors  # created by compensation
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    report = prune_checkpoint(plan, tmp_path / "model.safetensors", tmp_path / "out")
    assert report.files == (tmp_path / "out" / "model.safetensors",)
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = pruned.state_dict()
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(written[key], value), key
    assert report.tensors == len(expected) and report.changed == len(plan.tensors)
    assert report.bytes_written == sum(v.numel() * v.element_size() for v in expected.values())
    assert report.peak_rss > 0 and report.seconds >= 0


def test_a_plan_made_on_meta_from_the_checkpoint_scores(tmp_path: Path) -> None:
    model, groups = _mlp()
    save_model(model, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        meta = Mlp().double()
    weights = checkpoint_weights(tmp_path / "model.safetensors")
    assert set(weights) == set(model.state_dict()) and weights.shape("a.weight") == (16, 6)
    masks = fprune.group_masks(meta, groups, 0.5, ignore=(), weights=weights)
    expected = fprune.group_masks(model, groups, 0.5, ignore=())
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    plan = make_plan(meta, masks, groups)  # on the meta device: no weight is read
    assert any(isinstance(op, fprune.plan.Fold) for op in plan.tensors["b.bias"])  # reads b.weight from the checkpoint
    prune_checkpoint(plan, tmp_path / "model.safetensors", tmp_path / "out")
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    pruned = fprune.apply_prune(model, masks, groups)
    assert all(torch.equal(written[k], v) for k, v in pruned.state_dict().items())


def test_refusals(tmp_path: Path) -> None:
    model, groups = _mlp()
    plan = make_plan(model, fprune.group_masks(model, groups, 0.5, ignore=()), groups)
    other = nn.Linear(6, 16)
    save_model(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(fprune.PruneError, match=r"^prune_checkpoint: `(weight|bias)` in other\.safetensors is not a tensor of the plan's model"):
        prune_checkpoint(plan, tmp_path / "other.safetensors", tmp_path / "out")
    wide = {k: v.contiguous() for k, v in model.state_dict().items()}
    wide["a.weight"] = torch.zeros(16, 7, dtype=torch.float64)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(fprune.PruneError, match=r"^prune_checkpoint: `a\.weight` is \[16, 7\] in wide\.safetensors, \[16, 6\] in the plan"):
        prune_checkpoint(plan, tmp_path / "wide.safetensors", tmp_path / "out")
    with pytest.raises(fprune.PruneError, match=r"^prune_checkpoint: expects a fprune\.Plan"):
        prune_checkpoint(plan.to_json(), tmp_path / "wide.safetensors", tmp_path / "out")  # type: ignore[arg-type]
    (tmp_path / "folder").mkdir()
    save_model(model, str(tmp_path / "folder" / "model.safetensors"))
    for src in (tmp_path / "folder", tmp_path / "folder" / "model.safetensors"):
        with pytest.raises(fprune.PruneError, match=r"^prune_checkpoint: `dst` is the folder of the source checkpoint"):
            prune_checkpoint(plan, src, tmp_path / "folder")
    with pytest.raises(fprune.PruneError, match=r"^prune_checkpoint: "):
        prune_checkpoint(plan, tmp_path / "missing", tmp_path / "out")


def _llama_config(transformers: ModuleType) -> object:
    """A tiny Llama config: 2 layers, 4 query heads over 2 key / value heads, untied head."""
    return transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip


def test_hugging_face_shards_config_and_files(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = _llama_config(transformers)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")  # several shards and an index
    (tmp_path / "src" / "tokenizer.json").write_text("{}")
    source = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "src").eval()
    ids = torch.randint(0, 64, (1, 8))
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_pretrained(tmp_path / "src")).eval()
    groups = fprune.channel_groups(torch.export.export(meta, (ids,), {"use_cache": False}, strict=False))
    ignore = ["model.embed_tokens", "lm_head"]  # MLP width and heads: the hidden size stays
    masks = fprune.group_masks(meta, groups, 0.5, ignore=ignore, weights=checkpoint_weights(tmp_path / "src"))
    plan = make_plan(meta, masks, groups)
    assert plan.config["num_attention_heads"] == 2 and plan.config["head_dim"] == 8  # head_dim written: 32 // 2 would be 16
    report = prune_checkpoint(plan, tmp_path / "src", tmp_path / "dst", progress=True)
    shards = sorted(p.name for p in (tmp_path / "src").glob("*.safetensors"))
    assert len(shards) > 1 and sorted(p.name for p in (tmp_path / "dst").glob("*.safetensors")) == shards
    assert {p.name for p in report.files} >= {*shards, "model.safetensors.index.json", "config.json", "tokenizer.json"}
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    written = {k: v for shard in shards for k, v in load_file(str(tmp_path / "dst" / shard)).items()}
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in written.values())
    assert set(index["weight_map"]) == set(written)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dst").eval()
    expected = fprune.apply_prune(source, masks, groups)
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(loaded(x).logits, expected(x).logits)
    assert loaded.config.intermediate_size == 32 and loaded.config.num_key_value_heads == 1


def test_hugging_face_compensation_writes_the_new_biases_and_their_flags(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = _llama_config(transformers)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "src", max_shard_size="30KB")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "src").eval()
    ids = torch.randint(0, 64, (1, 8))
    groups = fprune.channel_groups(torch.export.export(model, (ids,), {"use_cache": False}, strict=False))
    masks = fprune.group_masks(model, groups, 0.5, ignore=["model.embed_tokens", "lm_head"])
    batches = [{"input_ids": torch.randint(0, 64, (2, 9)), "use_cache": False} for _ in range(2)]
    statistics = collect_statistics(model, batches, groups=groups, progress=False)
    plan = Plan.from_json(make_plan(model, masks, groups, compensate=statistics).to_json())
    assert plan.config["mlp_bias"] is True and plan.config["attention_bias"] is True
    prune_checkpoint(plan, tmp_path / "src", tmp_path / "dst")
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert "model.layers.0.mlp.down_proj.bias" in index["weight_map"]
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dst").eval()
    expected = fprune.apply_prune(model, masks, groups, compensate=statistics)
    assert loaded.state_dict().keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(loaded(x).logits, expected(x).logits)


def test_checkpoint_weights_count_what_they_read_on_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = _mlp()
    save_model(model, str(tmp_path / "model.safetensors"))
    weights = checkpoint_weights(tmp_path / "model.safetensors", progress=True)
    assert torch.equal(weights["a.weight"], model.a.weight) and torch.equal(weights["b.bias"], model.b.bias)
    assert weights._bar is not None and weights._bar.n == (16 * 6 + 12) * 8  # float64 bytes of the two tensors read
    with pytest.raises(KeyError):
        weights["nothing"]
    assert checkpoint_weights(tmp_path / "model.safetensors")._bar is None
