"""Refusal figures of the pattern path on random chain models (tests/pipeline/chain_fuzz.py).

    python -m tests.pipeline.chain_report --models 2000 --seed 0
    python -m tests.pipeline.chain_report --models 2000 --tuples-only     # the defaults without runs
    python -m tests.pipeline.chain_report --replay 17

Model ``i`` of a run is built from ``random.Random(seed * 1_000_003 + i)``; seed 0's first 400
are the ones tests/patterns/test_passthrough.py checks. It prints how many models were pruned exactly,
refused (overall and by ``prune_bias`` style) or neither, and each refusal reason (the
PruneError message, names as `_`, numbers as `N`) with whether it is an exactness reason.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence

import torch

import fprune

from .chain_fuzz import ChainCase, ChainOutcome, build_and_run


def case_seed(seed: int, index: int) -> int:
    """The seed of model `index` of the run with `seed`."""
    return seed * 1_000_003 + index


def _style(case: ChainCase) -> str:
    return "True" if case.prune_bias is True else "False" if case.prune_bias is False else "per weight"


def _tuples_only() -> dict[fprune.patterns.Pattern, fprune.patterns.PruneFunction]:
    return {k: v for k, v in fprune.default_patterns().items() if not any(isinstance(e, fprune.patterns.ZeroOrMore) for e in k)}


def report(models: int, seed: int, tuples_only: bool, show: int) -> str:
    patterns = _tuples_only() if tuples_only else None
    status: Counter[str] = Counter()
    styles: Counter[tuple[str, str]] = Counter()
    reasons: Counter[tuple[bool, str]] = Counter()
    examples: dict[tuple[bool, str], int] = {}
    failures: list[tuple[int, ChainOutcome]] = []
    start = time.perf_counter()
    for index in range(models):
        replay_seed = case_seed(seed, index)
        try:
            case, outcome = build_and_run(replay_seed, patterns)
        except Exception:  # noqa: BLE001 - the report lists every failure
            status["error"] += 1
            failures.append((replay_seed, ChainOutcome("error", "exception", traceback.format_exc())))
            continue
        status[outcome.status] += 1
        styles[(_style(case), outcome.status)] += 1
        if outcome.status == "refused":
            key = (outcome.exactness, outcome.reason)
            reasons[key] += 1
            examples.setdefault(key, replay_seed)
        elif outcome.status != "exact":
            failures.append((replay_seed, outcome))
        if (index + 1) % 500 == 0:
            print(f"... {index + 1} models", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    refused = status["refused"]
    command = f"python -m tests.pipeline.chain_report --models {models} --seed {seed}" + (" --tuples-only" if tuples_only else "")
    lines = [
        f"`{command}` ({seconds:.0f} s, torch {torch.__version__})",
        "",
        f"models: {models:,}; exact: {status['exact']:,}; refused: {refused:,} ({100 * refused / max(models, 1):.2f}%); "
        f"mismatch: {status['mismatch']}; input mutated: {status['mutated']}; other exceptions: {status['error']}",
        "",
        "| prune_bias | models | refused | rate |",
        "|---|---|---|---|",
    ]
    for style in ("True", "False", "per weight"):
        total = sum(v for (s, _), v in styles.items() if s == style)
        ref = styles[(style, "refused")]
        lines.append(f"| {style} | {total:,} | {ref:,} | {100 * ref / max(total, 1):.1f}% |")
    lines += ["", "| refusal reason (names as `_`, numbers as `N`) | exactness | models | replay |", "|---|---|---|---|"]
    for (exactness, reason), count in reasons.most_common():
        lines.append(f"| {reason.replace('|', '/')} | {'yes' if exactness else 'no'} | {count:,} | `--replay {examples[(exactness, reason)]}` |")
    if failures:
        lines += ["", "Neither exact nor refused:"]
        for replay_seed, outcome in failures[:show]:
            detail = outcome.detail.strip().splitlines()[-1] if outcome.detail.strip() else ""
            lines.append(f"- {outcome.status} ({outcome.reason}) {detail[:160]} -- `python -m tests.pipeline.chain_report --replay {replay_seed}`")
    return "\n".join(lines)


def replay(replay_seed: int, tuples_only: bool) -> str:
    case, outcome = build_and_run(replay_seed, _tuples_only() if tuples_only else None)
    return f"{case!r}\n{case.model}\n\n{outcome.status} ({outcome.reason}, exactness: {outcome.exactness})\n{outcome.detail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline.chain_report", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=2000, help="models (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--tuples-only", action="store_true", help="match with the default tuple patterns only (no ZeroOrMore runs)")
    parser.add_argument("--replay", type=int, metavar="CASE_SEED", help="print the model and outcome of CASE_SEED")
    parser.add_argument("--show", type=int, default=20, help="failing cases to list (default 20)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only contend
    if args.replay is not None:
        print(replay(args.replay, args.tuples_only))
        return 0
    print(report(args.models, args.seed, args.tuples_only, args.show))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
