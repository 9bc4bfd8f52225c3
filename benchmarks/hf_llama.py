"""A Hugging Face Llama of TinyLlama-1.1B's shape pruned through ``torch.export``: time and peak
memory of each step, on CPU and on the meta device, against Torch-Pruning 1.6.1.

    python -m benchmarks.hf_llama [--layers N] [--skip-tp] [--skip-meta] [--tp-timeout S]

The model is ``LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=2048,
intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4))``
with random weights (seed 0), float32; ``--layers N`` sets num_hidden_layers for a quick run.
The MLP width and the attention heads (grouped-query units: a key / value head with its 8 query
heads) are pruned at 50%; the hidden size stays (`ignore=` the embedding's group and lm_head).

Every measurement runs in a fresh process (``python -m benchmarks.hf_llama --child KIND``),
which builds the model, collects garbage, trims the heap and reads VmRSS (the loaded RSS), then
runs the steps with ``torch.set_num_threads(2)`` (``--threads``):

1. export: ``torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)``,
   ids of shape (1, 16);
2. analysis: ``fprune.channel_groups(ep)``;
3. masks: ``fprune.group_masks(model, groups, 0.5, ignore=...)`` (L2); on meta, whose weights
   hold no values, keep-masks built directly: the first half of each group's units;
4. apply: ``fprune.apply_prune(model, masks, groups)``.

Before each step the heap is trimmed and the RSS high-water mark reset (``5 >
/proc/self/clear_refs``); a step's extra memory is its VmHWM minus the RSS it started from, the
pipeline's is its highest VmHWM minus the loaded RSS. Inside apply, the parts of interest are
timed by wrapping the functions ``fprune.groups._apply`` calls (the benchmark patches its module
globals; fprune is unchanged): ``export_check``'s check (the pruned copy exported again, and the
original too where the groups' graph differs, to compare every size the masks change), ``check_pruned`` (the safety net: the copy
run on meta tensors) and ``update_hf_config``. The high-water mark is read and reset around each
of them, so each has its own peak, and apply's is the highest of all.

Torch-Pruning runs in its own process with a timeout (it is known to hang on Llama): MetaPruner
with MagnitudeImportance(p=2), pruning_ratio 0.5, ``ignored_layers=[lm_head]``, the attention
heads given (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``,
``head_pruning_ratio=0.5``) as in its own LLM example, then ``step()``.

Output: markdown tables on stdout, progress on stderr. Exit status 1 if a measurement failed.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from .memory import _status_mib

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 0.5
SEQUENCE = 16
VOCAB = 32000
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc setting: every allocation of 64 KiB or more is mapped on its own and returned when freed,
so VmHWM follows the memory in use rather than what the heap keeps (see benchmarks/memory.py)."""

THREADS = int(os.environ.get("HF_LLAMA_THREADS", "2"))  # the children's torch.set_num_threads (--threads)

_LIBC = ctypes.CDLL("libc.so.6")
_F = TypeVar("_F", bound=Callable[..., object])


# ---------------------------------------------------------------- memory probes


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _settle() -> float:
    """Collect garbage, trim the heap, reset the high-water mark; the RSS now, in MiB."""
    gc.collect()
    _LIBC.malloc_trim(0)
    rss = _status_mib("VmRSS")
    _reset_hwm()
    return rss


class Probe:
    """Per step: seconds, RSS at its start and its VmHWM (MiB). `parts` are the timed pieces
    inside a step (seconds, summed over calls, and call counts); `part_peaks` their VmHWM."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.part_peaks: dict[str, float] = {}
        self._segments: list[float] = []
        self._depth = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        self.start[name] = _settle()
        self._segments = []
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began
            self.peak[name] = max([_status_mib("VmHWM"), *self._segments])

    def part(self, name: str, function: _F, segment: bool) -> _F:
        """`function`, timed under `name`; with `segment`, its own VmHWM is read (the step's
        high-water mark so far is kept, then reset before and after the call)."""

        @functools.wraps(function)
        def timed(*args: object, **kwargs: object) -> object:
            own = segment and self._depth == 0
            if own:
                self._segments.append(_status_mib("VmHWM"))
                _reset_hwm()
            self._depth += 1
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - began
                self.calls[name] = self.calls.get(name, 0) + 1
                if own:
                    hwm = _status_mib("VmHWM")
                    self._segments.append(hwm)
                    self.part_peaks[name] = max(self.part_peaks.get(name, 0.0), hwm)
                    _reset_hwm()

        return timed  # type: ignore[return-value]


# ---------------------------------------------------------------- the model


def build(layers: int, meta: bool, tiny: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=4,
    )  # fmt: skip
    if tiny:  # the warm-up model: the same code paths, no size
        config = LlamaConfig(
            vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2
        )  # fmt: skip
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return LlamaForCausalLM(config).eval()
    return LlamaForCausalLM(config).eval()


def tensors_mib(model: nn.Module) -> float:
    """Bytes of all parameters and buffers (meta ones counted at their would-be size), in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_half_masks(model: nn.Module, groups: object, skip: Callable[[object], bool]) -> dict[str, Tensor]:
    """Keep-masks (CPU bool) keeping the first half of each prunable group's units (or channels),
    keyed by its first producer: what group_masks would give, without reading a weight."""
    from fprune import ChannelGroup

    masks: dict[str, Tensor] = {}
    for group in groups:  # type: ignore[attr-defined]
        assert isinstance(group, ChannelGroup)
        if not group.prunable or skip(group):
            continue
        units = group.units or tuple((c,) for c in range(group.size))
        kept = {c for unit in units[: int((1 - LEVEL) * len(units))] for c in unit}
        fqn = group.producers[0]
        keep = torch.zeros(model.get_parameter(fqn).shape[0], dtype=torch.bool)
        for member in group.members:
            if member.fqn == fqn and member.role == "producer":
                for position, channel in zip(member.positions, member.channels):
                    keep[position] = channel in kept
        masks[fqn] = keep
    return masks


# ---------------------------------------------------------------- children


def _warm_up(meta: bool) -> None:
    """The whole pipeline once on a tiny Llama, so that no step of the measured run pays for
    the process's first call (imports, torch.export's first trace, kernels paged in)."""
    import fprune

    model = build(1, meta, tiny=True)
    ids = torch.zeros((1, SEQUENCE), dtype=torch.long, device="meta" if meta else "cpu")
    ep = torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
    groups = fprune.channel_groups(ep)
    skip = ["model.embed_tokens", "lm_head"]
    masks = _first_half_masks(model, groups, lambda g: "model.embed_tokens.weight" in g.producers or g.reaches_output) if meta else fprune.group_masks(model, groups, LEVEL, ignore=skip)  # type: ignore[attr-defined]
    fprune.apply_prune(model, masks, groups)


def _fprune_child(layers: int, meta: bool, warm_up: bool) -> dict[str, object]:
    import fprune
    import fprune.groups._apply as apply_module
    import fprune.groups._export as export_module

    torch.set_num_threads(THREADS)
    if warm_up:
        _warm_up(meta)
    model = build(layers, meta)
    device = "meta" if meta else "cpu"
    ids = torch.randint(0, VOCAB, (1, SEQUENCE), generator=torch.Generator().manual_seed(1)).to(device)
    probe = Probe()
    original_check = apply_module.export_check

    def export_check(model_: nn.Module, pruned: nn.Module, *args: object, **kwargs: object) -> Callable[[], str | None]:
        def export_model(module: nn.Module, *a: object, **k: object) -> object:
            name = "re-export: original" if module is model_ else "re-export: pruned copy"
            return probe.part(name, original_export, segment=False)(module, *a, **k)

        check = original_check(model_, pruned, *args, **kwargs)  # type: ignore[arg-type]

        def checked() -> str | None:
            export_module.export_model = export_model  # type: ignore[assignment]
            try:
                return check()
            finally:
                export_module.export_model = original_export

        return probe.part("re-export check (export_check)", checked, segment=True)

    original_export = export_module.export_model
    apply_module.export_check = export_check  # type: ignore[assignment]
    apply_module.check_pruned = probe.part("safety net (check_pruned)", apply_module.check_pruned, segment=True)
    apply_module.update_hf_config = probe.part("HF config (update_hf_config)", apply_module.update_hf_config, segment=True)

    model_mib = tensors_mib(model)
    loaded = _settle()
    with probe.step("export"):  # as a user would call it (grad mode on, as in apply's re-export)
        ep = torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
    with probe.step("analysis"):
        groups = fprune.channel_groups(ep)
    del ep
    embedding = next(g for g in groups if "model.embed_tokens.weight" in g.producers)
    ignore = ["model.embed_tokens", "lm_head"]  # the hidden size, and the logits forward returns
    with probe.step("masks"):
        if meta:
            masks = _first_half_masks(model, groups, lambda g: g is embedding or g.reaches_output)  # type: ignore[attr-defined]
        else:
            masks = fprune.group_masks(model, groups, LEVEL, ignore=ignore)
    with probe.step("apply"):
        pruned = fprune.apply_prune(model, masks, groups)
    floor = 0.0
    if not meta:  # what writing the pruned model's bytes into new memory costs here, any tool's floor
        _settle()
        began = time.perf_counter()
        copies = [t.detach().clone() for t in [*pruned.parameters(), *pruned.buffers()]]
        floor = time.perf_counter() - began
        del copies
    config = getattr(pruned, "config")
    devices = sorted({str(t.device) for t in [*pruned.parameters(), *pruned.buffers()]})
    return {
        "device": device,
        "layers": layers,
        "loaded_rss": loaded,
        "model_mib": model_mib,
        "pruned_mib": tensors_mib(pruned),
        "params": parameters(model),
        "pruned_params": parameters(pruned),
        "pruned_devices": devices,
        "groups": len(groups),
        "prunable": sum(g.prunable for g in groups),
        "masks": len(masks),
        "config": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")},
        "seconds": probe.seconds,
        "start": probe.start,
        "peak": probe.peak,
        "parts": probe.parts,
        "calls": probe.calls,
        "part_peaks": probe.part_peaks,
        "rss_after": _status_mib("VmRSS"),
        "floor": floor,
    }


def _tp_child(layers: int) -> dict[str, object]:
    import torch_pruning as tp  # the comparison only; never imported by fprune

    torch.set_num_threads(THREADS)
    model = build(layers, meta=False)
    config = getattr(model, "config")
    ids = torch.randint(0, VOCAB, (1, SEQUENCE), generator=torch.Generator().manual_seed(1))
    num_heads: dict[nn.Module, int] = {}
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[module.q_proj] = config.num_attention_heads  # type: ignore[index]
            num_heads[module.k_proj] = config.num_key_value_heads  # type: ignore[index]
            num_heads[module.v_proj] = config.num_key_value_heads  # type: ignore[index]
    before = parameters(model)
    model_mib = tensors_mib(model)
    loaded = _settle()
    began = time.perf_counter()

    def progress(what: str) -> None:  # on stdout, so a parent that kills us on timeout still sees it
        print(json.dumps({"progress": what, "seconds": time.perf_counter() - began, "hwm": _status_mib("VmHWM")}), flush=True)

    progress("start")
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs={"input_ids": ids, "use_cache": False},
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=LEVEL,
        ignored_layers=[model.get_submodule("lm_head")],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=LEVEL,
    )
    graph = time.perf_counter() - began
    progress("graph")
    pruner.step()
    total = time.perf_counter() - began
    progress("step")
    broken = ""
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    except Exception as error:  # noqa: BLE001 - reported
        broken = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    return {
        "loaded_rss": loaded,
        "model_mib": model_mib,
        "pruned_mib": tensors_mib(model),
        "params": before,
        "pruned_params": parameters(model),
        "graph": graph,
        "total": total,
        "peak": _status_mib("VmHWM"),
        "broken": broken,
        "hidden": model.get_submodule("model.embed_tokens").weight.shape[1],
    }


# ---------------------------------------------------------------- the parent


def _run(args: list[str], timeout: float | None, live: bool) -> tuple[dict[str, object] | None, str, list[dict[str, object]]]:
    """(result, error, progress lines) of one child."""
    env = {**os.environ, "HF_LLAMA_THREADS": str(THREADS), **(LIVE_ENV if live else {})}
    command = [sys.executable, "-m", "benchmarks.hf_llama", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout, check=False)
        out, err, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"progress"')]
        return None, f"did not finish in {timeout:.0f} s", lines
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"progress"')]
    if code != 0:
        tail = "\n".join(err.strip().splitlines()[-6:])
        return None, f"exited with {code}: {tail}", lines
    return json.loads(out.strip().splitlines()[-1]), "", lines


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:,.0f}"


def _fprune_table(results: list[tuple[str, dict[str, object]]]) -> list[str]:
    lines = [
        "| run | export ms | analysis ms | masks ms | apply ms | analysis + apply / export | extra MiB: export · analysis · masks · apply | peak extra MiB | pruned model MiB | params |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results:
        s, start, peak = r["seconds"], r["start"], r["peak"]
        assert isinstance(s, dict) and isinstance(start, dict) and isinstance(peak, dict)
        loaded = float(r["loaded_rss"])  # type: ignore[arg-type]
        ratio = (s["analysis"] + s["apply"]) / s["export"]
        extras = " · ".join(f"{peak[k] - start[k]:,.0f}" for k in ("export", "analysis", "masks", "apply"))
        lines.append(
            f"| {label} | {_ms(s['export'])} | {_ms(s['analysis'])} | {_ms(s['masks'])} | {_ms(s['apply'])} | {ratio:.2f} "
            f"| {extras} | {max(peak.values()) - loaded:,.0f} | {float(r['pruned_mib']):,.0f} "  # type: ignore[arg-type]
            f"| {int(r['params']) / 1e9:.3f}B → {int(r['pruned_params']) / 1e9:.3f}B |"  # type: ignore[call-overload]
        )
    return lines


def _apply_table(results: list[tuple[str, dict[str, object]]]) -> list[str]:
    lines = ["| run | part of apply | ms | share of apply | calls | peak extra MiB (over apply's start) |", "|---|---|---|---|---|---|"]
    for label, r in results:
        s, parts, calls, peaks, start = r["seconds"], r["parts"], r["calls"], r["part_peaks"], r["start"]
        assert isinstance(s, dict) and isinstance(parts, dict) and isinstance(calls, dict) and isinstance(peaks, dict)
        assert isinstance(start, dict)
        apply = s["apply"]
        timed = [k for k in parts if k in peaks]
        for name, seconds in parts.items():
            peak = f"{peaks[name] - start['apply']:,.0f}" if name in peaks else "(inside the check)"
            lines.append(f"| {label} | {name} | {_ms(seconds)} | {100 * seconds / apply:.0f}% | {calls[name]} | {peak} |")
        rest = apply - sum(parts[k] for k in timed)
        lines.append(f"| {label} | the rest (indices, slicing, copy, head counts) | {_ms(rest)} | {100 * rest / apply:.0f}% | | |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hf_llama", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=22, help="num_hidden_layers (default 22: 1.1B parameters)")
    parser.add_argument("--skip-tp", action="store_true", help="do not run Torch-Pruning")
    parser.add_argument("--skip-meta", action="store_true", help="do not run the meta-device pipeline")
    parser.add_argument("--skip-live", action="store_true", help="do not repeat the CPU run with MALLOC_MMAP_THRESHOLD_=65536")
    parser.add_argument("--runs", type=int, default=1, help="fresh processes for the default-malloc CPU run (default 1), one row each")
    parser.add_argument("--no-warm-up", action="store_true", help="measure each process's first call (no warm-up on a tiny Llama first)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every measurement (default 2)")
    parser.add_argument("--tp-timeout", type=float, default=150.0, help="seconds Torch-Pruning may take (default 150)")
    parser.add_argument("--child", choices=("cpu", "meta", "tp"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _tp_child(args.layers) if args.child == "tp" else _fprune_child(args.layers, args.child == "meta", not args.no_warm_up)
        print(json.dumps(result), flush=True)
        return

    global THREADS
    THREADS = args.threads
    began = time.perf_counter()
    load = os.getloadavg()
    failures: list[str] = []
    runs: list[tuple[str, dict[str, object]]] = []
    plan = [(f"CPU{' ' + str(i + 1) if args.runs > 1 else ''}", "cpu", False) for i in range(args.runs)]
    plan += ([] if args.skip_live else [("CPU, live malloc", "cpu", True)])
    plan += [] if args.skip_meta else [("meta", "meta", False)]
    for label, kind, live in plan:
        print(f"fprune, {label} ...", file=sys.stderr, flush=True)
        extra = ["--no-warm-up"] if args.no_warm_up else []
        result, error, _ = _run(["--child", kind, "--layers", str(args.layers), *extra], None, live)
        if result is None:
            failures.append(f"fprune {label}: {error}")
        else:
            runs.append((label, result))
    tp: tuple[dict[str, object] | None, str, list[dict[str, object]]] | None = None
    if not args.skip_tp:
        print("Torch-Pruning ...", file=sys.stderr, flush=True)
        tp = _run(["--child", "tp", "--layers", str(args.layers)], args.tp_timeout, False)

    import transformers

    print(f"- command: `{' '.join(['python -m benchmarks.hf_llama', *(sys.argv[1:] if argv is None else argv)])}`")
    print(f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; torch {torch.__version__}, {THREADS} thread(s); transformers {transformers.__version__}; Python {platform.python_version()}")
    print(f"- load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load)}, after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"- whole run: {(time.perf_counter() - began) / 60:.1f} min\n")
    if runs:
        first = runs[0][1]
        print(f"LlamaForCausalLM, {args.layers} layers, float32: {int(first['params']) / 1e9:.3f}B parameters, "  # type: ignore[call-overload]
              f"{float(first['model_mib']):,.0f} MiB; loaded RSS {float(first['loaded_rss']):,.0f} MiB. "  # type: ignore[arg-type]
              f"Pruned config: {first['config']}; {first['groups']} groups, {first['prunable']} prunable, {first['masks']} masks.\n")
        print("\n".join(_fprune_table(runs)))
        print()
        print("\n".join(_apply_table(runs)))
        print()
        for label, r in runs:
            peak = r["peak"]
            assert isinstance(peak, dict)
            extra = max(peak.values()) - float(r["loaded_rss"])  # type: ignore[arg-type]
            s = r["seconds"]
            assert isinstance(s, dict)
            fast = s["analysis"] + s["apply"] <= s["export"]
            small = extra <= float(r["pruned_mib"])  # type: ignore[arg-type]
            print(f"- {label}: analysis + apply {'<=' if fast else '>'} export ({_ms(s['analysis'] + s['apply'])} vs {_ms(s['export'])} ms): "
                  f"target {'met' if fast else 'NOT met'}; peak extra {extra:,.0f} MiB {'<=' if small else '>'} pruned model "
                  f"{float(r['pruned_mib']):,.0f} MiB: target {'met' if small else 'NOT met'}"  # type: ignore[arg-type]
                  + (f"; pruned tensors on {r['pruned_devices']}" if r["device"] == "meta" else ""))
            floor = float(r.get("floor", 0.0))  # type: ignore[arg-type]
            if floor:
                own = s["analysis"] + s["apply"] - floor
                print(f"  - {label}: cloning the pruned model's tensors into new memory takes {_ms(floor)} ms here (the floor of any "
                      f"copy: first-touch page faults); analysis + apply less that floor is {_ms(own)} ms, "
                      f"{own / s['export']:.2f} times the export")
    if tp is not None:
        result, error, lines = tp
        print()
        print("| library | graph ms | step ms | total ms | peak extra MiB | params | hidden size | pruned copy runs |")
        print("|---|---|---|---|---|---|---|---|")
        if result is not None:
            print(f"| Torch-Pruning 1.6.1 | {_ms(float(result['graph']))} | {_ms(float(result['total']) - float(result['graph']))} "  # type: ignore[arg-type]
                  f"| {_ms(float(result['total']))} | {float(result['peak']) - float(result['loaded_rss']):,.0f} "  # type: ignore[arg-type]
                  f"| {int(result['params']) / 1e9:.3f}B → {int(result['pruned_params']) / 1e9:.3f}B | {result['hidden']} "  # type: ignore[call-overload]
                  f"| {'no: ' + str(result['broken']) if result['broken'] else 'yes'} |")
        else:
            reached = ", ".join(f"{line['progress']} at {float(line['seconds']):.1f} s" for line in lines if line["progress"] != "start")  # type: ignore[arg-type]
            print(f"| Torch-Pruning 1.6.1 | {error}{' (reached: ' + reached + ')' if reached else ' (still building its graph)'} | | | | | | |")
            if not error.startswith("did not finish"):
                failures.append(f"Torch-Pruning: {error}")
    if failures:
        print("\nFailures:\n" + "\n".join(f"- {f}" for f in failures))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
