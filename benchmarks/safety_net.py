"""The cost of the safety net: ``prune_channels(model, 0.5, example_inputs=...)`` against the
check it ends with (the pruned copy and the original, each run once on meta tensors).

    python -m benchmarks.safety_net [CASE ...] [--repeats N]

Each case runs in this one process, one after the other, with ``torch.set_num_threads(args.threads)``.
Per case: one warm-up call, then `repeats` rounds, each timing one whole ``prune_channels``
call (check included) and, right after it, the check alone on that call's pruned copy
(``fprune.groups._verify.check_pruned``, as prune_channels calls it). Printed as a markdown table:
median ms of both, and the median over rounds of the check's share of the whole call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fprune
from fprune.groups._find import find_groups
from fprune.groups._verify import check_pruned
from fprune._util.running import example_shapes

from .cases import CASES, LEVEL, case_named

DEFAULT = ("mlp-seed", "mlp-8", "mlp-128", "mlp-512", "resnet50-in", "mobilenetv2", "vit-b16", "llama-1b")


def measure(name: str, repeats: int) -> tuple[float, float, float]:
    """Medians over `repeats` rounds: ms of prune_channels (check included), ms of the check
    alone, and the per-round ratio of the two (robust to load that changes between rounds)."""
    case = case_named(name)
    model, example = case.build(), case.example(1)
    inputs = (example,)
    groups = find_groups(torch.fx.symbolic_trace(model), example_inputs=inputs)
    shapes = example_shapes(inputs)
    whole: list[float] = []
    check: list[float] = []
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        pruned = fprune.prune_channels(model, LEVEL, example_inputs=inputs, ignore=case.group_ignore)
        middle = time.perf_counter()
        cut = [i for i, g in enumerate(groups) if any(pruned.get_parameter(p).shape != model.get_parameter(p).shape for p in g.producers)]
        before_check = time.perf_counter()
        check_pruned("prune_channels", model, pruned, groups, cut, shapes, inputs)
        end = time.perf_counter()
        del pruned
        if round_:  # the first round warms up
            whole.append(middle - start)
            check.append(end - before_check)
    ratio = statistics.median(c / w for c, w in zip(check, whole))
    return 1e3 * statistics.median(whole), 1e3 * statistics.median(check), ratio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.safety_net", description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", default=list(DEFAULT), help=f"case names (default: {' '.join(DEFAULT)})")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, as the other benchmarks)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| case | prune_channels ms (check included) | check ms | check / prune_channels |")
    print("|---|---|---|---|")
    known = {c.name for c in CASES}
    for name in args.cases:
        if name not in known:
            raise SystemExit(f"unknown case `{name}`; known: {', '.join(sorted(known))}")
        print(f"measuring {name} ...", file=sys.stderr)
        whole, check, ratio = measure(name, args.repeats)
        print(f"| {case_named(name).title} | {whole:,.1f} | {check:,.2f} | {100 * ratio:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
