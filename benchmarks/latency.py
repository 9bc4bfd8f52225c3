"""Pruned-model speed: CPU latency of the original and fprune-pruned models, and FLOPs.

The child (``python -m benchmarks.latency CASE``) runs with 2 threads under
``torch.inference_mode()`` and with glibc malloc told to keep freed memory
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=2**36; see benchmarking.md: otherwise large
activation buffers are unmapped and faulted in again on every forward). Models are timed in
alternating blocks (the order rotates per block), each block with its own warm-up; a model's
latency is the median of all its timed forwards. FLOPs come from FlopCounterMode with grad
enabled, with the CPU flash-attention kernel counted as SDPA (it is not in torch's table).
Models with BatchNorm are also timed with it folded into the convolutions
(``torch.fx.experimental.optimization.fuse``, eval mode), the original against the pruned copy;
and CNNs also in channels_last (``model.to(memory_format=torch.channels_last)``, the layout
oneDNN's convolutions prefer), the original against a copy pruned from it (the input stays
NCHW: the first convolution's output follows its channels_last weight).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .cases import Case, NullProbe, case_named, parameters, prune_fprune_groups, prune_fprune_patterns
from .child import emit, run_child
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
BATCHES = (1, 8)
BUDGET_S = 3.0  # timed seconds per model and batch, spread over the blocks


def _flash_cpu_flops(query: object, key: object, value: object, *args: object, out_shape: object = None, **kwargs: object) -> int:
    return int(sdpa_flop_count(query, key, value))  # type: ignore[no-untyped-call]


def count_flops(model: nn.Module, example: Tensor) -> int:
    """Forward FLOPs at `example`'s batch, grad enabled (so nn.MultiheadAttention is seen)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(example)
    return int(counter.get_total_flops())


@dataclass
class Variant:
    """One timed model: the original (round_to 0) or an fprune-pruned copy.

    `baseline`: the label of the variant its speedup is measured against (None: the first).
    """

    label: str
    round_to: int
    params: int
    flops: int
    same_as: str | None = None
    ms: dict[int, float] = field(default_factory=dict)
    baseline: str | None = None


def _signature(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def _time_blocks(models: list[nn.Module], x: Tensor) -> list[float]:
    """Median ms per model over alternating blocks, each with its own warm-up."""
    with torch.inference_mode():
        models[0](x)
        start = time.perf_counter()
        models[0](x)
        first = time.perf_counter() - start
        blocks = 3 if first < 1.0 else 2
        timed = max(2, min(200, round(BUDGET_S / (blocks * first))))
        warmup = max(1, min(5, timed // 3))
        times: list[list[float]] = [[] for _ in models]
        for block in range(blocks):
            order = list(range(len(models)))
            order = order[block % len(order) :] + order[: block % len(order)]
            for i in order:
                for _ in range(warmup):
                    models[i](x)
                for _ in range(timed):
                    start = time.perf_counter()
                    models[i](x)
                    times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def _child(case_name: str) -> None:
    torch.set_num_threads(2)
    case = case_named(case_name)
    model = case.build()
    example = case.example(1)
    variants = [Variant("original", 0, parameters(model), count_flops(model, example))]
    models: list[nn.Module] = [model]
    signatures = {_signature(model): "original"}
    first_pruned: nn.Module | None = None
    for round_to in case.round_tos:
        if case.kind == "mlp":
            pruned = prune_fprune_patterns(case, model, example, NullProbe())
        else:
            pruned = prune_fprune_groups(case, model, example, NullProbe(), round_to=round_to)
        first_pruned = first_pruned or pruned
        label = f"fprune round_to={round_to}"
        variant = Variant(label, round_to, parameters(pruned), count_flops(pruned, example))
        same = signatures.get(_signature(pruned))
        if same is not None:
            variant.same_as = same
        else:
            signatures[_signature(pruned)] = label
            models.append(pruned.eval())
        variants.append(variant)
    if first_pruned is not None and any(isinstance(m, _BatchNorm) for m in model.modules()):
        folded = "original, BN folded"
        pairs = ((model, folded, 0, None), (first_pruned, f"{variants[1].label}, BN folded", variants[1].round_to, folded))
        for source, label, round_to, baseline in pairs:
            fused = fuse(source.eval())
            variants.append(Variant(label, round_to, parameters(fused), count_flops(fused, example), baseline=baseline))
            models.append(fused)
    if case.kind == "cnn" and variants[1:]:
        # Module.to takes memory_format at run time; its typed overloads leave it out
        channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        pruned = prune_fprune_groups(case, channels_last, example, NullProbe(), round_to=variants[1].round_to)
        baseline = "original, channels_last"
        for source, label, round_to, against in ((channels_last, baseline, 0, None), (pruned, f"{variants[1].label}, channels_last", variants[1].round_to, baseline)):
            variants.append(Variant(label, round_to, parameters(source), count_flops(source, example), baseline=against))
            models.append(source.eval())
    timed_variants = [v for v in variants if v.same_as is None]
    for batch in BATCHES:
        for variant, ms in zip(timed_variants, _time_blocks(models, case.example(batch))):
            variant.ms[batch] = ms
    by_label = {v.label: v for v in variants}
    for variant in variants:
        if variant.same_as is not None:
            variant.ms = dict(by_label[variant.same_as].ms)
    emit({"case": case_name, "variants": [asdict(v) for v in variants]})


@dataclass(frozen=True)
class Latency:
    case: str
    variants: tuple[Variant, ...]


def measure_latency(case: Case) -> Latency:
    """Run the latency child for `case` in a fresh process with the malloc settings."""
    data = run_child("latency", case.name, env=MALLOC_ENV)
    variants = data["variants"]
    assert isinstance(variants, list)
    return Latency(case.name, tuple(Variant(**{**v, "ms": {int(k): t for k, t in v["ms"].items()}}) for v in variants))


if __name__ == "__main__":
    _child(sys.argv[1])
