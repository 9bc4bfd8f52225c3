"""Pruning time: each library's steps, medians over repeats after one warm-up run.

Each (case, library) runs in a fresh process (``python -m benchmarks.timing CASE LIBRARY
REPEATS``), so no case inherits another's heap; the model is built once per process, and
in-place libraries get a deepcopy per run, made outside the timed region.
"""

from __future__ import annotations

import copy
import gc
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from .cases import IN_PLACE, PIPELINES, case_named, parameters
from .child import emit, run_child

WARMUP = 1


class TimingProbe:
    """Wall-clock seconds of each step (time.perf_counter)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Timing:
    """Median seconds per step and of the per-run totals, over `repeats` runs after `warmup`."""

    case: str
    library: str
    steps: dict[str, float]
    total: float
    spread: tuple[float, float]
    repeats: int
    warmup: int
    params_before: int
    params_after: int


def _child(case_name: str, library: str, repeats: int) -> None:
    torch.set_num_threads(2)
    case = case_named(case_name)
    model, example = case.build(), case.example(1)
    pipeline = PIPELINES[library]
    runs: list[dict[str, float]] = []
    after = 0
    for run in range(WARMUP + repeats):
        target = copy.deepcopy(model) if library in IN_PLACE else model
        gc.collect()
        probe = TimingProbe()
        pruned = pipeline(case, target, example, probe)
        after = parameters(pruned)
        del pruned, target
        if run >= WARMUP:
            runs.append(probe.seconds)
    totals = [sum(r.values()) for r in runs]
    timing = Timing(
        case=case_name,
        library=library,
        steps={name: statistics.median(r[name] for r in runs) for name in runs[0]},
        total=statistics.median(totals),
        spread=(min(totals), max(totals)),
        repeats=repeats,
        warmup=WARMUP,
        params_before=parameters(model),
        params_after=after,
    )
    emit(asdict(timing))


def measure_timing(case_name: str, library: str, repeats: int) -> Timing:
    """Time one library on one case in a fresh process."""
    data = run_child("timing", case_name, library, str(repeats))
    return Timing(**{**data, "spread": tuple(data["spread"])})  # type: ignore[arg-type]


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
