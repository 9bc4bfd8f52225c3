"""Pruning a checkpoint larger than memory: a Llama-2-7B-shaped checkpoint of random bf16
weights (13 GiB on disk), its MLP width and attention heads pruned at 50%, streamed through a
plan by ``fprune.prune_checkpoint``; time and peak RSS of each step.

    python -m benchmarks.prune_checkpoint [--folder DIR] [--layers N] [--keep]

Writes the checkpoint to DIR/src (once; reused when it is there) with
``benchmarks.checkpoint_data``, then runs the pruning in a fresh process (so its peak RSS is
its own), which:

1. builds ``LlamaForCausalLM(LlamaConfig.from_pretrained(DIR/src))`` on the meta device and
   exports it (``torch.export``, ids (1, 16), ``use_cache=False``): no weight is allocated;
2. finds its channel groups (``fprune.channel_groups``);
3. scores them from the checkpoint, one tensor at a time
   (``group_masks(meta, groups, 0.5, ignore=[embedding, lm_head], weights=checkpoint_weights(src))``, L2);
4. makes the plan (``fprune.make_plan`` on the meta model) and writes it as JSON;
5. streams the checkpoint through it (``fprune.prune_checkpoint(plan, src, DIR/dst)``).

Then, in the parent, checks the result: ``LlamaForCausalLM`` built on meta from the pruned
``config.json`` has exactly the pruned shards' names and shapes, and the first layer's pruned
tensors equal the original's rows / columns that the plan keeps, bit for bit.
Peak RSS is the child's ``ru_maxrss``; each step's is read from /proc/self/status (VmHWM) after
it, with the high-water mark reset before it. Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.checkpoint_data import LLAMA_7B, write_random_llama_checkpoint


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(folder: Path) -> None:
    """Steps 1-5, timed; one JSON line on stdout."""
    import fprune
    from fprune.plan import checkpoint_weights, make_plan, prune_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    src, dst = folder / "src", folder / "dst"
    steps: list[dict[str, object]] = []

    def step(name: str, start: float) -> None:
        steps.append({"step": name, "seconds": time.perf_counter() - start, "hwm": _hwm()})
        _reset_hwm()

    start = time.perf_counter()
    with torch.device("meta"):
        meta = LlamaForCausalLM(LlamaConfig.from_pretrained(src)).eval()
    ids = torch.zeros((1, 16), dtype=torch.long)
    program = torch.export.export(meta, (ids,), {"use_cache": False}, strict=False)
    step("build on meta + export", start)
    start = time.perf_counter()
    groups = fprune.channel_groups(program)
    step("channel groups", start)
    start = time.perf_counter()
    weights = checkpoint_weights(src)
    masks = fprune.group_masks(meta, groups, 0.5, ignore=["model.embed_tokens", "lm_head"], weights=weights)
    step("scores from the checkpoint (L2)", start)
    start = time.perf_counter()
    plan = make_plan(meta, masks, groups)
    text = plan.to_json()
    (folder / "plan.json").write_text(text)
    step("plan (make_plan + JSON)", start)
    start = time.perf_counter()
    if dst.exists():
        shutil.rmtree(dst)
    report = prune_checkpoint(plan, src, dst)
    step("prune_checkpoint (stream)", start)
    print(
        json.dumps(
            {
                "steps": steps,
                "peak_rss": report.peak_rss,
                "bytes_read": report.bytes_read,
                "bytes_written": report.bytes_written,
                "tensors": report.tensors,
                "changed": report.changed,
                "plan_bytes": len(text),
                "config": plan.config,
            }
        )
    )


def check(folder: Path) -> str:
    """The pruned checkpoint against its config and the original (first layer), bit for bit."""
    from fprune._util.safetensors_stream import checkpoint_files, read_header, read_tensor
    from fprune.plan import Plan
    from fprune.plan._records import Plan as PlanRecord
    from transformers import LlamaConfig, LlamaForCausalLM

    plan: PlanRecord = Plan.from_json((folder / "plan.json").read_text())
    pruned = {name: (f, e.shape) for f in map(read_header, checkpoint_files(folder / "dst")) for name, e in f.entries.items()}
    original = {name: f for f in map(read_header, checkpoint_files(folder / "src")) for name in f.entries}
    with torch.device("meta"):
        rebuilt = LlamaForCausalLM(LlamaConfig.from_pretrained(folder / "dst"))
    shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if shapes != {k: s for k, (_, s) in pruned.items()}:
        return "the pruned config does not rebuild the pruned shapes"
    checked = 0
    for name, (file, _) in pruned.items():
        if not name.startswith("model.layers.0."):
            continue
        ops = plan.tensors.get(name, ())
        value = read_tensor(original[name], name)
        for op in ops:
            kept = getattr(op, "kept", ())
            for dim, index in kept:
                value = value.index_select(dim, torch.tensor(index))
        if not torch.equal(value, read_tensor(file, name)):
            return f"`{name}` is not the original's kept rows / columns"
        checked += 1
    return f"ok: config rebuilds all {len(pruned)} shapes; layer 0's {checked} tensors bit for bit"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fprune-llama7b"))
    parser.add_argument("--layers", type=int, default=None, help="num_hidden_layers (default 32: the full 7B)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.folder)
        return 0
    config = dict(LLAMA_7B)
    if args.layers is not None:
        config["num_hidden_layers"] = args.layers
    src = args.folder / "src"
    marker = src / "config.json"
    if not marker.exists() or json.loads(marker.read_text()).get("num_hidden_layers") != config["num_hidden_layers"]:
        shutil.rmtree(src, ignore_errors=True)
        start = time.perf_counter()
        write_random_llama_checkpoint(src, config)
        print(f"wrote {src} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.prune_checkpoint", "--child", "--folder", str(args.folder)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    verdict = check(args.folder)
    out = sum(p.stat().st_size for p in (args.folder / "dst").glob("*.safetensors"))
    layers = config["num_hidden_layers"]
    print(f"Llama-2-7B shapes ({layers} layers), random bf16 weights: {_gib(size)} on disk -> {_gib(out)} pruned; "
          f"MLP width and attention heads at 50%; torch {torch.__version__}, 2 threads\n")
    print("| step | seconds | peak RSS in the step |")
    print("|---|---:|---:|")
    for step in result["steps"]:
        print(f"| {step['step']} | {step['seconds']:.1f} | {_gib(step['hwm'])} |")
    total = sum(s["seconds"] for s in result["steps"])
    print(f"| **all** | **{total:.1f}** | **{_gib(result['peak_rss'])}** (process peak) |")
    print(f"\nplan: {result['plan_bytes'] / 2**10:.0f} KiB of JSON; config changes {result['config']}")
    print(f"streamed {result['tensors']} tensors ({result['changed']} changed), read {_gib(result['bytes_read'])}, "
          f"wrote {_gib(result['bytes_written'])}; check: {verdict}")
    if not args.keep:
        shutil.rmtree(args.folder / "dst", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
