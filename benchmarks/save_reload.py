"""Saving and reloading a pruned model: fprune's plan (JSON) + safetensors + ``load_pruned``,
against Torch-Pruning 1.6.1's two ways (pickling the module with ``torch.save(model)``, and
``tp.state_dict`` / ``tp.load_state_dict``); file sizes, reload time and peak memory, and whether
``torch.load``'s default (``weights_only=True``) reads the file.

    python -m benchmarks.save_reload [--cases resnet50-in,mlp-32]

Each case (``benchmarks/cases.py``) is pruned at 50% once per library in this process and saved
to a temporary folder; each reload runs five times, each in a fresh process (``--child``; the
table gives the medians), which reports the
seconds it took (imports excluded), its peak RSS above the RSS after imports (VmHWM, reset before
the load, read after one forward on the example input, so that every weight has been read
whether or not the file was memory-mapped), and whether the reloaded model's output equals the
pruned one's, bit for bit. Needs ``pip install --no-deps torch-pruning==1.6.1`` (for the comparison only).
Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

import fprune
from benchmarks.cases import PIPELINES, NullProbe, case_named

LEVEL = 0.5


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(kind: str, case_name: str, folder: Path) -> dict[str, object]:
    """Reload what the parent saved in `folder` the way `kind` says; time, memory, equality."""
    case = case_named(case_name)
    tp: Any = importlib.import_module("torch_pruning") if kind.startswith("tp") else None
    example = case.example(1)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    import gc

    gc.collect()
    base, _ = _rss()
    _reset_peak()
    start = time.perf_counter()
    default_refuses = None
    if kind == "fprune":
        plan = fprune.Plan.from_json((folder / "plan.json").read_text())
        model = fprune.load_pruned(case.build, plan, folder / "pruned.safetensors")
    elif kind == "tp-module":
        try:
            torch.load(folder / "module.pt")
            default_refuses = False
        except Exception:  # noqa: BLE001 - the default unpickler refuses the module
            default_refuses = True
        start = time.perf_counter()  # the refused attempt is not counted
        model = torch.load(folder / "module.pt", weights_only=False)
    else:
        try:
            torch.load(folder / "tp_state.pt")
            default_refuses = False
        except Exception:  # noqa: BLE001
            default_refuses = True
        start = time.perf_counter()
        model = case.build()  # Torch-Pruning rebuilds the unpruned model first, then loads into it
        model = tp.load_state_dict(model, state_dict=torch.load(folder / "tp_state.pt", weights_only=False))
    seconds = time.perf_counter() - start
    with torch.no_grad():  # inside the peak: a memory-mapped file's pages count once read
        output = model.eval()(example)
    _, peak = _rss()
    return {"seconds": seconds, "peak": peak - base, "equal": bool(torch.equal(output, expected)), "default_refuses": default_refuses}


REPEATS = 5


def _run_child(kind: str, case: str, folder: Path) -> dict[str, object]:
    """The median of :data:`REPEATS` reloads, each in a fresh process (seconds and peak apart)."""
    runs: list[dict[str, object]] = []
    for _ in range(REPEATS):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.save_reload", "--child", kind, "--case", case, "--folder", str(folder)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = dict(runs[0])
    for key in ("seconds", "peak"):
        result[key] = statistics.median(r[key] for r in runs)  # type: ignore[type-var]
    result["equal"] = all(r["equal"] for r in runs)
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def run_case(case_name: str) -> list[str]:
    case = case_named(case_name)
    tp: Any = importlib.import_module("torch_pruning")
    rows: list[str] = []
    example = case.example(1)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = case.build()
        gm = torch.fx.symbolic_trace(model)
        groups = fprune.channel_groups(gm, example_inputs=(example,) if case.groups_need_shapes else None)
        masks = fprune.group_masks(model, groups, LEVEL, ignore=case.group_ignore)
        start = time.perf_counter()
        plan = fprune.make_plan(model, masks, groups)
        plan_seconds = time.perf_counter() - start
        pruned = fprune.apply_plan(model, plan)
        (folder / "plan.json").write_text(plan.to_json())
        save_model(pruned, str(folder / "pruned.safetensors"))
        with torch.no_grad():
            torch.save(pruned.eval()(example), folder / "expected.pt")
        fp = _run_child("fprune", case_name, folder)
        size = (folder / "plan.json").stat().st_size + (folder / "pruned.safetensors").stat().st_size
        rows.append(_row(case_name, "fprune: plan + safetensors, `load_pruned`", size, fp, f"yes (make_plan {plan_seconds:.2f} s)"))

        tp_model = case.build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PIPELINES["torch-pruning"](case, tp_model, example, NullProbe())
        with torch.no_grad():
            torch.save(tp_model.eval()(example), folder / "expected.pt")
        torch.save(tp_model, folder / "module.pt")
        torch.save(tp.state_dict(tp_model), folder / "tp_state.pt")
        for kind, title, file in (
            ("tp-module", "Torch-Pruning: `torch.save(model)`", "module.pt"),
            ("tp-state", "Torch-Pruning: `tp.state_dict` / `tp.load_state_dict`", "tp_state.pt"),
        ):
            result = _run_child(kind, case_name, folder)
            rows.append(_row(case_name, title, (folder / file).stat().st_size, result, "no (pickle)"))
    return rows


def _row(case: str, how: str, size: int, result: dict[str, object], safe: str) -> str:
    if "error" in result:
        return f"| {case} | {how} | {_mib(size)} | failed: {result['error']} | | | {safe} |"
    refuses = result.get("default_refuses")
    default = "reads it" if refuses is None else ("refuses it" if refuses else "reads it")
    seconds, peak = result["seconds"], result["peak"]
    assert isinstance(seconds, float) and isinstance(peak, (int, float))
    equal = "yes" if result["equal"] else "NO"
    return f"| {case} | {how} | {_mib(size)} | {seconds:.3f} s | {_mib(peak)} | {equal} | {safe}; `torch.load` default {default} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", default="resnet50-in,mlp-32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.child:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(json.dumps(child(args.child, args.case, args.folder)))
        return 0
    print(f"Pruned at {LEVEL:.0%} (L2), saved, reloaded in a fresh process (median of {REPEATS}); torch {torch.__version__}, 2 threads\n")
    print("| case | saved as | on disk | reload | peak memory of the reload and one forward | output equal | without pickle |")
    print("|---|---|---:|---:|---:|---|---|")
    for case in args.cases.split(","):
        for row in run_case(case):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
