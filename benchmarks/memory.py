"""Peak memory of pruning: the RSS high-water mark of each step, in a fresh process per case.

The child (``python -m benchmarks.memory CASE LIBRARY``) builds the model, then before each step
collects garbage, returns free heap pages to the OS (malloc_trim), reads VmRSS and resets the
high-water mark (``5 > /proc/self/clear_refs``); after the step it reads VmHWM. A step's extra
memory is its VmHWM minus the VmRSS it started from; the pipeline's is the highest VmHWM of
its steps minus the VmRSS with only the model (and input) loaded.

With default glibc malloc these figures vary from process to process (freed heap chunks are kept
or reused depending on which thread allocated what and on the dynamic mmap threshold), so each
case runs in several processes and the median is reported, plus one run with `LIVE_ENV`.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from .cases import IN_PLACE, PIPELINES, case_named, size_mib
from .child import emit, run_child

_LIBC = ctypes.CDLL("libc.so.6")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _settle() -> float:
    """Collect garbage, trim the heap, reset the high-water mark; the RSS now, in MiB."""
    gc.collect()
    _LIBC.malloc_trim(0)
    rss = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return rss


class MemoryProbe:
    """(RSS at the start, VmHWM during) of each step, in MiB; and how much the file-backed RSS
    grew during it (`code`): pages of torch's shared libraries read in when a kernel runs for
    the first time in the process (a first ``gelu`` maps 3.7 MiB of libtorch code). They count
    in VmHWM but are no data of the step's; a later step or call using the same kernels does
    not load them again."""

    def __init__(self) -> None:
        self.steps: dict[str, tuple[float, float]] = {}
        self.code: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = _settle()
        file_start = _status_mib("RssFile")
        try:
            yield
        finally:
            self.steps[name] = (start, _status_mib("VmHWM"))
            self.code[name] = _status_mib("RssFile") - file_start


@dataclass(frozen=True)
class Memory:
    """MiB: loaded RSS, model and pruned-model tensor sizes, extra peak of the whole pipeline
    and of each step (over the RSS the step started from), absolute peak RSS; and each step's
    extra peak when the pipeline runs a second time in the same process (`second_step_extra`:
    without the one-time costs of a process's first call, such as torch's worker threads
    touching their own malloc arenas on their first reduction)."""

    case: str
    library: str
    loaded_rss: float
    model: float
    pruned: float
    extra: float
    step_extra: dict[str, float]
    peak_rss: float
    second_step_extra: dict[str, float]
    step_code: dict[str, float]


def _child(case_name: str, library: str) -> None:
    torch.set_num_threads(2)
    case = case_named(case_name)
    model = case.build()
    example = case.example(1)
    model_mib = size_mib(model)
    loaded = _settle()
    probe = MemoryProbe()
    pruned = PIPELINES[library](case, model, example, probe)
    peak = max(hwm for _, hwm in probe.steps.values())
    pruned_mib = size_mib(pruned)
    del pruned
    second = MemoryProbe()
    if library not in IN_PLACE:  # the others pruned `model` itself the first time
        PIPELINES[library](case, model, example, second)
    result = Memory(
        case=case_name,
        library=library,
        loaded_rss=loaded,
        model=model_mib,
        pruned=pruned_mib,
        extra=peak - loaded,
        step_extra={name: hwm - start for name, (start, hwm) in probe.steps.items()},
        peak_rss=peak,
        second_step_extra={name: hwm - start for name, (start, hwm) in second.steps.items()},
        step_code=dict(probe.code),
    )
    emit(asdict(result))


LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc setting for the "live" figure: every allocation of 64 KiB or more gets its own mapping,
returned to the OS when freed (a fixed threshold also turns off glibc's dynamic threshold), so
VmHWM follows the memory actually in use instead of what the heap keeps after frees."""


def measure_memory(case_name: str, library: str, env: Mapping[str, str] | None = None) -> Memory:
    """Run one case with one library in a fresh Python process and return its memory figures."""
    return Memory(**run_child("memory", case_name, library, env=env))  # type: ignore[arg-type]


@dataclass(frozen=True)
class MemorySummary:
    """Medians over `runs` fresh processes with default malloc, their min-max, one run with
    `LIVE_ENV` (`live_*`), the median step extras of each process's second pipeline run
    (`second_step_extra`; empty for the libraries that prune in place), and the median code
    pages each step loaded (`step_code`, see `MemoryProbe`)."""

    case: str
    library: str
    runs: int
    model: float
    pruned: float
    extra: float
    extra_range: tuple[float, float]
    step_extra: dict[str, float]
    apply_range: tuple[float, float] | None
    peak_rss: float
    live_extra: float
    live_step_extra: dict[str, float]
    second_step_extra: dict[str, float]
    step_code: dict[str, float]


def summarize_memory(case_name: str, library: str, runs: int) -> MemorySummary:
    """`runs` default-malloc processes and one live-memory process for one case and library."""
    results = [measure_memory(case_name, library) for _ in range(runs)]
    live = measure_memory(case_name, library, LIVE_ENV)
    extras = [r.extra for r in results]
    applies = [r.step_extra["apply"] for r in results if "apply" in r.step_extra]
    return MemorySummary(
        case=case_name,
        library=library,
        runs=runs,
        model=results[0].model,
        pruned=results[0].pruned,
        extra=statistics.median(extras),
        extra_range=(min(extras), max(extras)),
        step_extra={name: statistics.median(r.step_extra[name] for r in results) for name in results[0].step_extra},
        apply_range=(min(applies), max(applies)) if applies else None,
        peak_rss=statistics.median(r.peak_rss for r in results),
        live_extra=live.extra,
        live_step_extra=live.step_extra,
        second_step_extra={name: statistics.median(r.second_step_extra[name] for r in results) for name in results[0].second_step_extra},
        step_code={name: statistics.median(r.step_code[name] for r in results) for name in results[0].step_code},
    )


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
