"""Markdown tables from the measurements, and the targets of issue #5, each met or missed."""

from __future__ import annotations

import platform

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .cases import CASES, Case
from .latency import Latency
from .memory import MemorySummary
from .timing import Timing

TITLES = {c.name: c.title for c in CASES}
LIBRARY_NAMES = {
    "fprune": "fprune (match_patterns)",
    "fprune-groups": "fprune (channel_groups)",
    "torch.ao": "torch.ao SaliencyPruner",
    "torch-pruning": "Torch-Pruning 1.6.1",
}
DEPTHS = (8, 32, 128, 512)
LINEAR_EXPONENT = 1.15  # time ~ depth**k between consecutive depths counts as linear for k <= this


@dataclass(frozen=True)
class Results:
    timings: Sequence[Timing]
    memories: Sequence[MemorySummary]
    latencies: Sequence[Latency]
    errors: Sequence[str]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _timing(results: Results, case: str, library: str) -> Timing | None:
    return next((t for t in results.timings if t.case == case and t.library == library), None)


def timing_table(results: Results) -> str:
    rows = []
    for t in results.timings:
        steps = " · ".join(f"{name} {_ms(s)}" for name, s in t.steps.items())
        spread = f"{_ms(t.spread[0])}–{_ms(t.spread[1])}"
        rows.append([TITLES[t.case], LIBRARY_NAMES[t.library], steps, f"**{_ms(t.total)}**", spread,
                     f"{t.warmup}+{t.repeats}", f"{_params(t.params_before)} → {_params(t.params_after)}"])
    header = ["case", "library", "steps (median ms)", "total ms (median)", "min–max", "warm-up+runs", "params"]
    return _table(header, rows)


def _total(t: Timing | None) -> str:
    return _ms(t.total) if t else "—"


def _ratio(a: Timing | None, b: Timing | None) -> str:
    return f"{a.total / b.total:.2f}" if a and b else "—"


def ratio_table(results: Results) -> str:
    rows = []
    for case in dict.fromkeys(t.case for t in results.timings):
        fp, fg = _timing(results, case, "fprune"), _timing(results, case, "fprune-groups")
        ao, tp = _timing(results, case, "torch.ao"), _timing(results, case, "torch-pruning")
        rows.append([TITLES[case], _total(fp), _total(fg), _total(ao), _total(tp),
                     _ratio(fp, ao), _ratio(fg, ao), _ratio(fp, tp), _ratio(fg, tp)])
    header = ["case", "fprune patterns ms", "fprune groups ms", "torch.ao ms", "Torch-Pruning ms",
              "patterns / torch.ao", "groups / torch.ao", "patterns / TP", "groups / TP"]
    return _table(header, rows)


def _exponents(results: Results, library: str) -> list[tuple[int, int, float, float]]:
    """(N1, N2, exponent k of time ~ N**k, ms per block at N2) between consecutive depths."""
    points = [(n, t.total) for n in DEPTHS if (t := _timing(results, f"mlp-{n}", library))]
    return [(n1, n2, math.log(t2 / t1) / math.log(n2 / n1), t2 / n2) for (n1, t1), (n2, t2) in zip(points, points[1:])]


def depth_table(results: Results) -> str:
    libraries = ("fprune", "fprune-groups", "torch.ao", "torch-pruning")
    rows = []
    for n in DEPTHS:
        row = [str(n)]
        for library in libraries:
            t = _timing(results, f"mlp-{n}", library)
            row.append(f"{_ms(t.total)} ({t.total / n * 1000:.2f}/block)" if t else "—")
        rows.append(row)
    growth = ["growth exponent k (time ∝ N^k), 8→32 / 32→128 / 128→512"]
    for library in libraries:
        growth.append(" / ".join(f"{k:.2f}" for _, _, k, _ in _exponents(results, library)) or "—")
    rows.append(growth)
    return _table(["N blocks", *(f"{LIBRARY_NAMES[lib]} ms" for lib in libraries)], rows)


def _apply_ratio(apply: float | None, pruned: float) -> str:
    return f"{apply / pruned:.2f} ({apply - pruned:+,.1f} MiB)" if apply is not None else "—"


def _code(m: MemorySummary) -> str:
    apply, code = m.step_extra.get("apply"), m.step_code.get("apply")
    return f"{code:,.1f} ({(apply - code) / m.pruned:.2f})" if apply is not None and code is not None else "—"


def memory_table(results: Results) -> str:
    rows = []
    for m in results.memories:
        steps = " · ".join(f"{name} {v:,.0f}" for name, v in m.step_extra.items())
        apply_range = f" [{m.apply_range[0] / m.pruned:.2f}–{m.apply_range[1] / m.pruned:.2f}]" if m.apply_range else ""
        rows.append([TITLES[m.case], LIBRARY_NAMES[m.library], f"{m.model:,.1f}", f"{m.pruned:,.1f}",
                     f"**{m.extra:,.0f}** ({m.extra_range[0]:,.0f}–{m.extra_range[1]:,.0f})", steps,
                     _apply_ratio(m.step_extra.get("apply"), m.pruned) + apply_range, f"{m.peak_rss:,.0f}",
                     f"{m.live_extra:,.0f}", _apply_ratio(m.live_step_extra.get("apply"), m.pruned),
                     _code(m), _apply_ratio(m.second_step_extra.get("apply"), m.pruned)])
    header = ["case", "library", "model MiB", "pruned MiB", "extra peak MiB, whole step (min–max)",
              "extra peak per step MiB", "apply extra / pruned size [min–max]", "peak RSS MiB",
              "live: extra peak MiB", "live: apply extra / pruned size",
              "apply: torch code paged in, MiB (apply extra without it / pruned)", "second call: apply extra / pruned size"]
    return _table(header, rows)


def latency_table(results: Results) -> str:
    rows = []
    for lat in results.latencies:
        labels = {v.label: v for v in lat.variants}
        for v in lat.variants:
            original = labels.get(v.baseline or "", lat.variants[0])
            ratio = original.flops / v.flops
            cells = [TITLES[lat.case], v.label + (f" (same shapes as {v.same_as})" if v.same_as else ""),
                     _params(v.params), f"{v.flops / 1e9:.3g}", f"{ratio:.2f}"]
            for batch in (1, 8):
                ms = v.ms[batch]
                speedup = original.ms[batch] / ms
                quotient = "—" if v is original or v.round_to == 0 else f"{speedup / ratio:.2f}"
                cells += [f"{ms:,.3g}", f"{speedup:.2f}", quotient]
            rows.append(cells)
    header = ["case", "model", "params", "GFLOPs (b1)", "FLOPs ratio", "b1 ms", "b1 speedup", "b1 speedup/FLOPs",
              "b8 ms", "b8 speedup", "b8 speedup/FLOPs"]
    return _table(header, rows)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(results: Results, cases: Sequence[Case]) -> str:
    lines = []
    for case in ("resnet50", "resnet50-in"):
        fg, tp = _timing(results, case, "fprune-groups"), _timing(results, case, "torch-pruning")
        if fg and tp:
            r = fg.total / tp.total
            lines.append(f"- fprune ≤ 0.5× Torch-Pruning on {TITLES[case]} @50%: {_ms(fg.total)} ms vs "
                         f"{_ms(tp.total)} ms = {r:.2f}× → {_verdict(r <= 0.5)}")
    for library in ("fprune", "fprune-groups"):
        ratios = [(n, f.total / a.total) for n in DEPTHS
                  if (f := _timing(results, f"mlp-{n}", library)) and (a := _timing(results, f"mlp-{n}", "torch.ao"))]
        if ratios:
            text = ", ".join(f"N={n}: {r:.2f}×" for n, r in ratios)
            lines.append(f"- {LIBRARY_NAMES[library]} ≤ 0.5× torch.ao on the deep MLPs: {text} → "
                         f"{_verdict(all(r <= 0.5 for _, r in ratios))}")
    for library in ("fprune", "fprune-groups"):
        exps = [e for e in _exponents(results, library) if e[0] >= 32]
        if exps:
            text = ", ".join(f"{n1}→{n2}: k={k:.2f}" for n1, n2, k, _ in exps)
            lines.append(f"- {LIBRARY_NAMES[library]} time linear in depth (k ≤ {LINEAR_EXPONENT} from N=32 on): "
                         f"{text} → {_verdict(all(k <= LINEAR_EXPONENT for _, _, k, _ in exps))}")
    for m in results.memories:
        apply, live, second = m.step_extra.get("apply"), m.live_step_extra.get("apply"), m.second_step_extra.get("apply")
        if apply is not None and live is not None:
            code = m.step_code.get("apply", 0.0)
            again = f"; without the {code:,.1f} MiB of torch code paged in: {(apply - code) / m.pruned:.2f}× → {_verdict(apply - code <= 1.1 * m.pruned)}"
            again += f"; second call in the process: {second / m.pruned:.2f}× → {_verdict(second <= 1.1 * m.pruned)}" if second is not None else ""
            lines.append(f"- apply extra peak ≤ 1.1× pruned size, {TITLES[m.case]}, {LIBRARY_NAMES[m.library]}: "
                         f"{apply:,.1f} MiB vs {m.pruned:,.1f} MiB = {apply / m.pruned:.2f}× (median of {m.runs}) → "
                         f"{_verdict(apply <= 1.1 * m.pruned)}; live memory: {live / m.pruned:.2f}× → {_verdict(live <= 1.1 * m.pruned)}{again}")
    kinds = {c.name: c.kind for c in cases}
    for lat in results.latencies:
        if kinds.get(lat.case) not in ("mlp", "cnn"):
            continue
        labels = {v.label: v for v in lat.variants}
        for v in lat.variants[1:]:
            if v.same_as is not None or v.round_to == 0:
                continue
            original = labels.get(v.baseline or "", lat.variants[0])
            q = original.ms[8] / v.ms[8] / (original.flops / v.flops)
            against = f" (against {original.label})" if original is not lat.variants[0] else ""
            lines.append(f"- b8 speedup ≥ 0.8× FLOPs ratio, {TITLES[lat.case]}, {v.label}{against}: speedup "
                         f"{original.ms[8] / v.ms[8]:.2f}, FLOPs ratio {original.flops / v.flops:.2f}, quotient {q:.2f} → {_verdict(q >= 0.8)}")
    return "\n".join(lines)


def render(results: Results, cases: Sequence[Case], machine: str) -> str:
    parts = ["## Machine", machine]
    if results.timings:
        parts += ["## Pruning time", timing_table(results), "### Time ratios", ratio_table(results)]
        if any(t.case.startswith("mlp-") and t.case != "mlp-seed" for t in results.timings):
            parts += ["### Growth with depth (deep MLPs)", depth_table(results)]
    if results.memories:
        parts += ["## Peak memory during pruning (fresh processes)", memory_table(results)]
    if results.latencies:
        parts += ["## Pruned-model latency (2 threads, inference_mode)", latency_table(results)]
    parts += ["## Targets", targets(results, cases) or "(no target measured in this selection)"]
    if results.errors:
        parts += ["## Failures", "\n".join(f"- {e}" for e in results.errors)]
    return "\n\n".join(parts) + "\n"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
