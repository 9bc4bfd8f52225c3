"""The pipeline fuzzer outside pytest: N random models per pipeline, figures as markdown.

    python -m tests.pipeline.fuzz_report --models 3000 --seed 0
    python -m tests.pipeline.fuzz_report --replay 1234 --pipeline patterns

Model ``i`` of a run is built from ``random.Random(seed * 1_000_003 + i)`` (the same model
for every pipeline), its case seed. A case that is neither exact nor refused is listed with
its replay command (the tests print one too); ``--replay CASE_SEED`` prints its model,
outcome and traceback. docs/reliability.md holds the figures of a long run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import time
import traceback
from collections.abc import Sequence

import torch

from .fuzz_models import FuzzCase, RandomChooser, build_case
from .fuzz_pipelines import PIPELINES, STATUSES, Outcome, Stats, run_pipeline


def case_seed(seed: int, index: int) -> int:
    """The seed of model `index` of the run with `seed`."""
    return seed * 1_000_003 + index


def run_case(case_seed: int, pipeline: str) -> tuple[FuzzCase, Outcome]:
    """Build the model of `case_seed` and run `pipeline` on it; any exception other than a
    PruneError becomes an ``error`` outcome with its traceback."""
    choose = RandomChooser(random.Random(case_seed))
    case = build_case(choose)
    try:
        return case, run_pipeline(pipeline, case, choose)
    except Exception as error:  # noqa: BLE001 - the fuzzer reports every failure
        return case, Outcome(pipeline, "error", type(error).__name__, traceback.format_exc())


def _table(stats: Stats, seconds: dict[str, float]) -> list[str]:
    lines = [
        "| pipeline | models | exact | exact, channels removed | refused (PruneError) | mismatches | input mutated | other exceptions | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pipeline in PIPELINES:
        if not stats.tried[pipeline]:
            continue
        count = {s: stats.status[(pipeline, s)] for s in STATUSES}
        lines.append(
            f"| {pipeline} | {stats.tried[pipeline]:,} | {count['exact']:,} | {stats.removed[pipeline]:,} | {count['refused']:,} "
            f"| {count['mismatch']:,} | {count['mutated']:,} | {count['error']:,} | {seconds[pipeline]:.0f} s |"
        )
    return lines


def _reasons(stats: Stats) -> list[str]:
    lines = ["| pipeline | refusal reason (PruneError message, names as `_`, numbers as `N`) | models |", "|---|---|---|"]
    for (pipeline, reason), count in sorted(stats.reasons.items(), key=lambda item: (PIPELINES.index(item[0][0]), -item[1], item[0][1])):
        lines.append(f"| {pipeline} | {reason.replace('|', '/')} | {count:,} |")
    return lines


def report(models: int, seed: int, pipelines: Sequence[str], show: int) -> str:
    stats = Stats()
    seconds = dict.fromkeys(pipelines, 0.0)
    failures: list[tuple[int, Outcome]] = []
    for index in range(models):
        for pipeline in pipelines:
            start = time.perf_counter()
            _, outcome = run_case(case_seed(seed, index), pipeline)
            seconds[pipeline] += time.perf_counter() - start
            stats.add(outcome)
            if outcome.status not in ("exact", "refused"):
                failures.append((case_seed(seed, index), outcome))
        if (index + 1) % 500 == 0:
            print(f"... {index + 1} models", file=sys.stderr, flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, 1 intra-op thread"
    lines = [
        f"`python -m tests.pipeline.fuzz_report --models {models} --seed {seed}`: {when}, {machine}.",
        "",
        *_table(stats, seconds),
        "",
        *_reasons(stats),
    ]
    if failures:
        lines += ["", "Cases that were neither exact nor refused (first ones):", ""]
        for replay_seed, outcome in failures[:show]:
            detail = outcome.detail.strip().splitlines()[-1] if outcome.detail.strip() else ""
            lines.append(
                f"- {outcome.pipeline}: {outcome.status} ({outcome.reason}) {detail[:160]} -- replay: "
                f"`python -m tests.pipeline.fuzz_report --replay {replay_seed} --pipeline {outcome.pipeline}`"
            )
    return "\n".join(lines)


def replay(case_seed: int, pipeline: str) -> str:
    case, outcome = run_case(case_seed, pipeline)
    return f"{case!r}\n\n{outcome.pipeline}: {outcome.status} ({outcome.reason})\n{outcome.detail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline.fuzz_report", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=300, help="models per pipeline (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--pipeline", choices=PIPELINES, action="append", help="only this pipeline (repeatable; default all)")
    parser.add_argument("--replay", type=int, metavar="CASE_SEED", help="replay the case of CASE_SEED (with one --pipeline)")
    parser.add_argument("--show", type=int, default=20, help="failing cases to list (default 20)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only contend
    pipelines: list[str] = args.pipeline or list(PIPELINES)
    if args.replay is not None:
        if len(pipelines) != 1:
            parser.error("--replay needs one --pipeline")
        print(replay(args.replay, pipelines[0]))
        return 0
    print(report(args.models, args.seed, pipelines, args.show))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
