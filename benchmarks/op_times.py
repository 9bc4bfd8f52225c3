"""Where a CNN's forward time goes, by kind of layer, before and after pruning (not part of the report).

``python -m benchmarks.op_times CASE [--batch 8] [--channels-last]`` prunes the case with
fprune's channel groups and times each layer of the original and of the pruned copy with
forward hooks (2 threads, inference mode, median of 7 forwards after 3 warm-up ones): summed
per kind (1x1 / 3x3 / depthwise convolutions, BatchNorm, activations, pools, Linear), next to
each kind's FLOPs ratio. Run it under the latency benchmark's malloc settings
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``), as the latency figures are.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch import Tensor, nn

from .cases import NullProbe, case_named, prune_fprune_groups


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "conv, depthwise"
        return f"conv {module.kernel_size[0]}x{module.kernel_size[1]}"
    if isinstance(module, nn.BatchNorm2d):
        return "BatchNorm"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "activation"
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return "pool"
    if isinstance(module, nn.Linear):
        return "Linear"
    return None


def _flops(module: nn.Module, out: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        return 2 * out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return 2 * out.numel() * module.in_features
    return 0


def layer_times(model: nn.Module, x: Tensor, runs: int = 7) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms and FLOPs of one forward, summed per kind of layer."""
    started: dict[int, float] = {}
    current: dict[str, float] = {}
    flops: Counter[str] = Counter()

    def before(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        started[id(module)] = time.perf_counter()

    def after(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        kind = _kind(module)
        assert kind is not None
        current[kind] = current.get(kind, 0.0) + time.perf_counter() - started[id(module)]
        flops[kind] += _flops(module, out)

    handles = []
    for module in model.modules():
        if _kind(module) is not None:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    samples: list[dict[str, float]] = []
    with torch.inference_mode():
        for run in range(3 + runs):
            current.clear()
            flops.clear()
            model(x)
            if run >= 3:
                samples.append(dict(current))
    for handle in handles:
        handle.remove()
    return {kind: statistics.median(s[kind] for s in samples) * 1e3 for kind in samples[0]}, dict(flops)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.op_times", description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels-last", action="store_true", help="convert the model to channels_last first")
    args = parser.parse_args()
    torch.set_num_threads(2)
    case = case_named(args.case)
    model = case.build().eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted at run time
    pruned = prune_fprune_groups(case, model, case.example(1), NullProbe()).eval()
    x = case.example(args.batch)
    (before, flops_before), (after, flops_after) = layer_times(model, x), layer_times(pruned, x)
    total_before, total_after = sum(before.values()), sum(after.values())
    print(f"| {args.case}, batch {args.batch} | original ms | pruned ms | speedup | FLOPs ratio | share of original time |")
    print("|---|---|---|---|---|---|")
    for kind in sorted(before, key=lambda k: -before[k]):
        ratio = f"{flops_before[kind] / flops_after[kind]:.2f}" if flops_before.get(kind) else "—"
        print(f"| {kind} | {before[kind]:.2f} | {after[kind]:.2f} | {before[kind] / after[kind]:.2f} | {ratio} | {before[kind] / total_before:.0%} |")
    ratio_all = sum(flops_before.values()) / sum(flops_after.values())
    print(f"| all | {total_before:.2f} | {total_after:.2f} | {total_before / total_after:.2f} | {ratio_all:.2f} | 100% |")


if __name__ == "__main__":
    main()
