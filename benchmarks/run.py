"""The benchmark command: ``python -m benchmarks [--quick] [--only NAME] [--repeats N]``.

Runs, per selected case: pruning time and peak memory of each library (each in a fresh process
per case and library) and pruned-model latency (a fresh process per case), then prints the
markdown report on stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version

import torch

from .cases import CASES, QUICK, Case, case_named
from .child import ChildFailed
from .latency import MALLOC_ENV, Latency, measure_latency
from .memory import LIVE_ENV, MemorySummary, summarize_memory
from .report import Results, cpu_model, render
from .timing import Timing, measure_timing

SECTIONS = ("time", "memory", "latency")
MEMORY_RUNS = 3  # fresh processes per case and library with default malloc (median reported)


def machine(load_before: tuple[float, ...], elapsed: float) -> str:
    load_after = os.getloadavg()
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable)",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads (torch.set_num_threads(2)); "
        f"Torch-Pruning {version('torch-pruning')}; Python {platform.python_version()}; {platform.platform()}",
        f"- load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)}",
        f"- latency children run with {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}; "
        f"the live-memory runs with {' '.join(f'{k}={v}' for k, v in LIVE_ENV.items())}",
        f"- whole run: {elapsed / 60:.1f} min",
    ]
    return "\n".join(lines)


def _progress(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


def run(cases: Sequence[Case], sections: Sequence[str], repeats: int | None, memory_runs: int) -> Results:
    start = time.perf_counter()
    timings: list[Timing] = []
    memories: list[MemorySummary] = []
    latencies: list[Latency] = []
    errors: list[str] = []
    if "time" in sections:
        for case in cases:
            for library in case.libraries:
                _progress(f"time {case.name} {library}", start)
                try:
                    timings.append(measure_timing(case.name, library, repeats or case.repeats))
                except ChildFailed as error:
                    errors.append(f"time {case.name} / {library}: {error}")
    if "memory" in sections:
        for case in cases:
            for library in case.libraries:
                _progress(f"memory {case.name} {library}", start)
                try:
                    memories.append(summarize_memory(case.name, library, memory_runs))
                except ChildFailed as error:
                    errors.append(f"memory {case.name} / {library}: {error}")
    if "latency" in sections:
        for case in cases:
            if case.latency:
                _progress(f"latency {case.name}", start)
                try:
                    latencies.append(measure_latency(case))
                except ChildFailed as error:
                    errors.append(f"latency {case.name}: {error}")
    return Results(timings, memories, latencies, errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark fprune against torch.ao's pruner and Torch-Pruning: pruning time, peak memory, "
        "pruned-model latency; prints a markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK)}, 2 repeats, 1 memory run")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only this case (repeatable); one of {', '.join(c.name for c in CASES)}")
    parser.add_argument("--repeats", type=int, metavar="N", help="timed repeats per case (default: per case, fewer for big ones)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = args.only or (QUICK if args.quick else [c.name for c in CASES])
    cases = [case_named(n) for n in names]
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    repeats = args.repeats or (2 if args.quick else None)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = run(cases, sections, repeats, 1 if args.quick else MEMORY_RUNS)
    print(render(results, cases, machine(load_before, time.perf_counter() - start)))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dataclasses.asdict(results), out, indent=1, default=str)
    return 1 if results.errors else 0
