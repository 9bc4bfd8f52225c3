"""Where a pipeline's time and Python memory go, step by step (not part of the report).

``python -m benchmarks.profiling CASE LIBRARY [--top N] [--memory]`` runs the pipeline once to
warm up, then once under cProfile per step (the top functions by own time and by cumulative
time), or with ``--memory`` under tracemalloc (peak Python-object memory per step and the
source lines that hold the most at the end of the step; tensor storage is not seen by tracemalloc).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .cases import IN_PLACE, PIPELINES, NullProbe, case_named


class CProfileProbe:
    def __init__(self, top: int) -> None:
        self.top = top

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        profile = cProfile.Profile()
        profile.enable()
        try:
            yield
        finally:
            profile.disable()
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(self.top)
                body = out.getvalue()
                print(f"===== step {name}: top {self.top} by {order}\n{body[body.find('ncalls') - 2:]}")


class TracemallocProbe:
    def __init__(self, top: int) -> None:
        self.top = top

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        tracemalloc.start(1)
        try:
            yield
        finally:
            _, peak = tracemalloc.get_traced_memory()
            stats = tracemalloc.take_snapshot().statistics("lineno")[: self.top]
            tracemalloc.stop()
            print(f"===== step {name}: Python peak {peak / 2**20:.1f} MiB; held at the end, by line:")
            for stat in stats:
                print(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {stat.traceback[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("library", choices=sorted(PIPELINES))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--memory", action="store_true", help="tracemalloc instead of cProfile")
    args = parser.parse_args()
    torch.set_num_threads(2)
    case = case_named(args.case)
    model, example = case.build(), case.example(1)
    pipeline = PIPELINES[args.library]
    in_place = args.library in IN_PLACE
    pipeline(case, copy.deepcopy(model) if in_place else model, example, NullProbe())
    probe = TracemallocProbe(args.top) if args.memory else CProfileProbe(args.top)
    pipeline(case, copy.deepcopy(model) if in_place else model, example, probe)


if __name__ == "__main__":
    main()
