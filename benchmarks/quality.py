"""Pruning quality (issue 15): how much accuracy / perplexity each criterion keeps at a given
fraction of parameters removed, with and without a short fine-tune, against Torch-Pruning 1.6.1.

    python -m benchmarks.quality [--quick] [--skip-tp] [--only digits|lm] [--threads N] [--json PATH]
                                 [--plots DIR] [--tp-timeout S]
    python -m benchmarks.quality --investigate [--json PATH]     # the side runs (below)
    python -m benchmarks.quality --from-json PATH [--plots DIR]  # a saved run's report again

Models and data come from :mod:`benchmarks.quality_models` (trained once, cached under
``benchmarks/.cache/``): the digits CNN (test accuracy on 540 images) and the byte-level Llama
(held-out perplexity per byte, 256 windows of 128 bytes).

**What is pruned.** The CNN: every prunable group except the classifier's output (``ignore=None``,
fprune's default, which keeps the groups forward returns): the three convs' channels and the
hidden Linear's. The Llama: MLP
widths and attention heads (GQA units: a key / value head with its 4 query heads), hidden size
kept (``ignore=["model.embed_tokens", "lm_head"]``); groups from
``torch.export.export(lm, (ids,), kwargs={"use_cache": False}, strict=False)``.

**Methods.** Magnitude (``fprune.l1_norm``, ``fprune.l2_norm``), Wanda-sp, activation, Taylor
(``loss=`` cross-entropy: the CNN's labels, the LM's next byte) and FLAP with and without bias
compensation (``apply_prune(..., compensate=statistics)``), each with uniform widths
(``global_ranking=False``: every group loses the same fraction) and non-uniform ones
(``global_ranking="standardized"``). One :class:`fprune.calibrate.Statistics` per model, from the
same calibration batches for every method: the CNN 4 x 64 training images, the LM 32 windows of
128 training bytes (``lm_calibration``). The CNN's first two groups are read by zero-padded convs,
where compensation is refused (not exact); "FLAP + compensation" there compensates the groups read
by Linear layers only (``features.7`` -> ``classifier.0`` and ``classifier.0`` -> ``classifier.2``)
and prunes the conv-read groups without it (two ``apply_prune`` calls).

**Parameter targets.** For each method and target (20 %, 30 %, 50 % of all parameters removed,
embeddings and classifier included), ``level`` is bisected until the pruned copy's parameter
count (counted from the masks) is within 0.2 % of the model's parameters of the target, or the
interval is exhausted (the closest count found is kept; a row further than :data:`TOLERANCE` off
says so). The tables report the fraction the pruned copy actually keeps (compensation's new
biases included).

**Fine-tune.** The same budget for every method: the CNN :data:`DIGITS_TUNE` steps of 64 images
(about one epoch), the LM :data:`LM_TUNE` steps of :data:`LM_TUNE_BATCH` x 128 bytes
(``fine_tune_digits``, ``fine_tune_lm``); the unpruned model gets the same fine-tune as a
reference (the "unpruned" row's last number).

**Exactness.** At the 30 % target, each method without compensation: the pruned copy's output
against ``torch.func.functional_call(model, fprune.masked_parameters(model, masks, groups), ...)``
(64 test images; 4 held-out windows), max absolute difference.

**Torch-Pruning 1.6.1** (comparison only; never imported by fprune) runs in a child process
(``--tp-child``): ``MagnitudePruner`` / ``MetaPruner`` with ``MagnitudeImportance(p=2)``, its
``pruning_ratio`` bisected to the same targets (a fresh copy per try); the CNN with
``ignored_layers=[classifier.2]``; the LM with the heads given as in its LLM example
(``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``) and
``ignored_layers=[lm_head, embed_tokens]``. The child prints a line after every try; the parent
kills it when no line came for ``--tp-timeout`` seconds (it is known to hang on HF Llama).

**Side runs** (``--investigate``, 30 % removed, no fine-tune): the CNN with 16 x 64 calibration
images and with ``global_ranking="mean"``; the LM with its heads kept (MLP only) and with 16 x 8
calibration windows.

``--quick``: the 30 % target only, no fine-tune, no plots. Progress goes to stderr; markdown
tables to stdout; plots (``quality_lm.png``, ``quality_digits.png``) to ``--plots`` (default
``docs/`` for a full run). ``--threads`` (default 2) sets ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import fprune
from fprune.calibrate import Statistics, activation, collect_statistics, flap, taylor, wanda_sp
from fprune.groups._apply import group_keeps  # the benchmark reads fprune's own keep vectors

from .report import cpu_model
from .quality_models import (
    Digits,
    TextData,
    byte_lm,
    digits_accuracy,
    digits_calibration,
    digits_cnn,
    digits_data,
    fine_tune_digits,
    fine_tune_lm,
    lm_calibration,
    parameter_count,
    perplexity,
    text_data,
)

ROOT = Path(__file__).resolve().parent.parent
THREADS = int(os.environ.get("QUALITY_THREADS", "2"))
"""torch.set_num_threads (``--threads``; children inherit it through QUALITY_THREADS)."""
TARGETS = (0.2, 0.3, 0.5)
"""Fractions of the model's parameters removed."""
QUICK_TARGETS = (0.3,)
TOLERANCE = 0.01
"""How far (a fraction of the model's parameters) the pruned count may be from the target."""
BISECT_STEPS = 30
DIGITS_TUNE = (19, 1e-3)
"""Fine-tune of the CNN: (steps, learning rate); 19 x 64 images is one epoch of the 1257."""
LM_TUNE = (50, 3e-4)
"""Fine-tune of the LM: (steps, learning rate), batches of LM_TUNE_BATCH x 128 bytes."""
LM_TUNE_BATCH = 8
TP_TIMEOUT = 120.0
LM_IGNORE = ("model.embed_tokens", "lm_head")
DIGITS_IGNORE = None
"""fprune's default: the groups forward returns (the classifier's 10 outputs) stay; naming
``classifier.2`` would also skip the hidden Linear's group, which ``classifier.2`` reads."""

Kind = Literal["l1", "l2", "wanda_sp", "flap", "activation", "taylor"]
Ranking = Literal[False, "mean", "standardized"]


class Method(NamedTuple):
    """One pruning recipe: criterion, uniform (False) or non-uniform widths, compensation."""

    criterion: Kind
    ranking: Ranking
    compensate: bool = False

    @property
    def label(self) -> str:
        names = {"l1": "magnitude L1", "l2": "magnitude L2", "wanda_sp": "Wanda-sp", "flap": "FLAP",
                 "activation": "activation", "taylor": "Taylor"}  # fmt: skip
        comp = " + compensation" if self.compensate else ""
        ranking = {False: "uniform", "standardized": "global", "mean": "global (mean)"}[self.ranking]
        return f"{names[self.criterion]}{comp}, {ranking}"


_RECIPES: tuple[tuple[Kind, bool], ...] = (
    ("l1", False), ("l2", False), ("wanda_sp", False), ("activation", False), ("taylor", False), ("flap", False),
    ("flap", True),
)  # fmt: skip
_RANKINGS: tuple[Ranking, ...] = (False, "standardized")
METHODS = tuple(Method(kind, ranking, comp) for kind, comp in _RECIPES for ranking in _RANKINGS)
TP_LABEL = "Torch-Pruning 1.6.1 L2, uniform"


class Row(NamedTuple):
    """One pruned model's result. `metric` / `tuned`: accuracy or perplexity before / after the
    fine-tune (None: not run); `exact`: max |pruned - masked| (None: not checked); `note`: why
    there is no result, or a remark (off target); `widths`: what each pruned group kept."""

    model: str
    method: str
    target: float
    level: float
    kept: float
    params: int
    metric: float | None
    tuned: float | None
    exact: float | None
    seconds: float
    note: str = ""
    widths: str = ""


@dataclass(frozen=True)
class Task:
    """One model with everything the methods need."""

    name: str
    model: nn.Module
    groups: tuple[fprune.ChannelGroup, ...]
    ignore: tuple[str, ...] | None
    statistics: Statistics
    evaluate: Callable[[nn.Module], float]
    tune: Callable[[nn.Module], nn.Module]
    probe: Callable[[nn.Module, Mapping[str, Tensor] | None], Tensor]
    """The model's output on fixed inputs; with parameters, through functional_call."""
    compensable: frozenset[str]
    """Producer FQNs of the groups whose consumers can take compensation exactly."""
    retrace: Callable[[nn.Module], tuple[fprune.ChannelGroup, ...]]
    """The groups of a pruned copy (for the second, uncompensated apply_prune)."""


def _log(message: str, start: float = 0.0) -> None:
    stamp = f"[{time.perf_counter() - start:7.1f}s] " if start else ""
    print(f"{stamp}{message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the models


def _digits_labels(data: Digits, batches: int, batch_size: int = 64) -> list[Tensor]:
    """The labels of ``digits_calibration(data, batches, batch_size)``'s images (same order)."""
    order = torch.randperm(data.train_images.shape[0], generator=torch.Generator().manual_seed(0))
    return [data.train_labels[order[i * batch_size : (i + 1) * batch_size]] for i in range(batches)]


def _padded_conv(module: nn.Module) -> bool:
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return False
    padding = module.padding
    return padding == "same" or (isinstance(padding, tuple) and any(p != 0 for p in padding))


def _compensable(model: nn.Module, groups: Sequence[fprune.ChannelGroup]) -> frozenset[str]:
    """Producers of the groups no zero-padded conv reads (compensation is exact there)."""
    ok: set[str] = set()
    for group in groups:
        readers = [model.get_submodule(m.fqn.rpartition(".")[0]) for m in group.members if m.role == "consumer"]
        if not any(_padded_conv(r) for r in readers):
            ok.update(group.producers)
    return frozenset(ok)


def digits_task(calibration: int = 4) -> Task:
    """The digits CNN, its groups, statistics (with Taylor terms) from `calibration` batches of
    64 training images, and evaluation."""
    model, data = digits_cnn(), digits_data()
    groups = tuple(fprune.channel_groups(torch.fx.symbolic_trace(model)))
    batches = digits_calibration(data, calibration)
    order = torch.randperm(data.train_images.shape[0], generator=torch.Generator().manual_seed(0))
    if not torch.equal(batches[0], data.train_images[order[:64]]):
        raise RuntimeError("digits_calibration's order changed: update _digits_labels")
    labels = {id(b): y for b, y in zip(batches, _digits_labels(data, calibration))}

    def loss(output: object, batch: object) -> Tensor:
        assert isinstance(output, Tensor)
        return F.cross_entropy(output, labels[id(batch)])

    stats = collect_statistics(model, batches, groups=groups, loss=loss, progress=False)
    steps, lr = DIGITS_TUNE
    probe_x = data.test_images[:64]

    def probe(m: nn.Module, params: Mapping[str, Tensor] | None) -> Tensor:
        with torch.no_grad():
            out = m(probe_x) if params is None else torch.func.functional_call(m, dict(params), (probe_x,))
        assert isinstance(out, Tensor)
        return out

    return Task(
        name="digits",
        model=model,
        groups=groups,
        ignore=DIGITS_IGNORE,
        statistics=stats,
        evaluate=lambda m: digits_accuracy(m, data),
        tune=lambda m: fine_tune_digits(m, data, steps, lr),
        probe=probe,
        compensable=_compensable(model, groups),
        retrace=lambda m: tuple(fprune.channel_groups(torch.fx.symbolic_trace(m))),
    )


def _logits(output: object) -> Tensor:
    logits = getattr(output, "logits", output)
    assert isinstance(logits, Tensor)
    return logits


def lm_task(text: TextData, calibration: int = 4) -> Task:
    """The byte-level Llama, its exported groups, statistics (with Taylor terms) from
    `calibration` batches of 8 training windows of 128 bytes, and evaluation."""
    model = byte_lm()
    ids = lm_calibration(text, 1, 1, 32)[0]
    program = torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
    groups = tuple(fprune.channel_groups(program))
    batches = [{"input_ids": b, "use_cache": False} for b in lm_calibration(text, calibration)]

    def loss(output: object, batch: object) -> Tensor:
        assert isinstance(batch, dict)
        logits, target = _logits(output), batch["input_ids"]
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1))

    stats = collect_statistics(model, batches, groups=groups, loss=loss, progress=False)
    steps, lr = LM_TUNE
    starts = torch.linspace(0, text.eval.numel() - 129, 4).round().long()
    probe_ids = text.eval[starts[:, None] + torch.arange(128)[None, :]].long()

    def probe(m: nn.Module, params: Mapping[str, Tensor] | None) -> Tensor:
        kwargs = {"use_cache": False}
        with torch.no_grad():
            out = m(probe_ids, **kwargs) if params is None else torch.func.functional_call(m, dict(params), (probe_ids,), kwargs)
        return _logits(out)

    def retrace(m: nn.Module) -> tuple[fprune.ChannelGroup, ...]:
        raise NotImplementedError("the LM's groups are all compensable")

    return Task(
        name="lm",
        model=model,
        groups=groups,
        ignore=LM_IGNORE,
        statistics=stats,
        evaluate=lambda m: perplexity(m, text),
        tune=lambda m: fine_tune_lm(m, text, steps, lr, batch_size=LM_TUNE_BATCH),
        probe=probe,
        compensable=_compensable(model, groups),
        retrace=retrace,
    )


# ---------------------------------------------------------------- pruning


def criterion_of(kind: Kind, stats: Statistics) -> fprune.Criterion | fprune.calibrate.GroupCriterion:
    """fprune's criterion for `kind`."""
    if kind == "l1":
        return fprune.l1_norm
    if kind == "l2":
        return fprune.l2_norm
    return {"wanda_sp": wanda_sp, "flap": flap, "activation": activation, "taylor": taylor}[kind](stats)


def kept_parameters(model: nn.Module, groups: Sequence[fprune.ChannelGroup], masks: Mapping[str, Tensor]) -> int:
    """The parameter count of ``apply_prune(model, masks, groups)`` (without compensation's new
    biases), from the masks: every member tensor loses its removed channels' slices."""
    params = dict(model.named_parameters())
    removed: dict[str, dict[int, set[int]]] = {}
    for index, keep in group_keeps(groups, masks).items():
        group = groups[index]
        gone = set(torch.nonzero(~keep.cpu()).flatten().tolist())
        for member in group.members:
            if member.fqn in params:
                positions = {p for p, c in zip(member.positions, member.channels) if c in gone}
                removed.setdefault(member.fqn, {}).setdefault(member.dim, set()).update(positions)
    total = 0
    for fqn, p in params.items():
        shape = list(p.shape)
        for dim, positions in removed.get(fqn, {}).items():
            shape[dim] -= len(positions)
        total += math.prod(shape)
    return total


@dataclass(frozen=True)
class _Cached(fprune.calibrate.GroupCriterion):
    """`criterion`'s scores of each group, computed once (keyed by the group's producers), so
    bisecting `level` does not score the model again at every step; the final masks come from
    the real criterion."""

    model: nn.Module
    criterion: fprune.Criterion | fprune.calibrate.GroupCriterion
    table: dict[tuple[str, ...], Tensor] = dataclasses.field(default_factory=dict)
    name: ClassVar[str] = "cached"

    def scores(self, tensors: Mapping[str, Tensor], group: fprune.ChannelGroup) -> Tensor:
        if group.producers not in self.table:
            self.table[group.producers] = fprune.group_scores(self.model, group, self.criterion)
        return self.table[group.producers]

    def read(self, tensors: Mapping[str, Tensor], group: fprune.ChannelGroup) -> Tensor | None:
        return self.criterion.read(tensors, group) if isinstance(self.criterion, fprune.calibrate.GroupCriterion) else None


class Found(NamedTuple):
    level: float
    masks: dict[str, Tensor]
    params: int


def masks_for_target(task: Task, method: Method, target: float) -> Found:
    """Masks whose pruned copy keeps about ``1 - target`` of the parameters: `level` bisected."""
    total = parameter_count(task.model)
    goal = (1.0 - target) * total
    criterion = criterion_of(method.criterion, task.statistics)
    ignore = None if task.ignore is None else list(task.ignore)
    cached = _Cached(task.model, criterion)
    lo, hi = 0.0, 0.99
    best: tuple[float, int] | None = None
    for _ in range(BISECT_STEPS):
        level = (lo + hi) / 2
        masks = fprune.group_masks(task.model, task.groups, level, criterion=cached, global_ranking=method.ranking, ignore=ignore)
        params = kept_parameters(task.model, task.groups, masks)
        if best is None or abs(params - goal) < abs(best[1] - goal):
            best = (level, params)
        if abs(params - goal) <= 0.002 * total or hi - lo < 1e-4:
            break
        lo, hi = (level, hi) if params > goal else (lo, level)
    assert best is not None
    level = best[0]
    masks = fprune.group_masks(task.model, task.groups, level, criterion=criterion, global_ranking=method.ranking, ignore=ignore)
    params = kept_parameters(task.model, task.groups, masks)
    if params != best[1]:
        _log(f"  note: {method.label}: the real criterion's masks keep {params:,} parameters, the cached scores' {best[1]:,}")
    return Found(level, masks, params)


def prune(task: Task, masks: Mapping[str, Tensor], compensate: bool) -> nn.Module:
    """``apply_prune``; with `compensate`, the groups no zero-padded conv reads are compensated
    and the others (if any) pruned after, without compensation."""
    if not compensate:
        return fprune.apply_prune(task.model, masks, task.groups)
    exact = {k: v for k, v in masks.items() if k in task.compensable}
    rest = {k: v for k, v in masks.items() if k not in task.compensable}
    pruned = fprune.apply_prune(task.model, exact, task.groups, compensate=task.statistics) if exact else task.model
    if rest:
        pruned = fprune.apply_prune(pruned, rest, task.retrace(pruned))
    return pruned


def run_method(task: Task, method: Method, target: float, tune: bool, check: bool) -> Row:
    """One method at one target: masks, pruned copy, metric, fine-tuned metric, exactness."""
    began = time.perf_counter()
    total = parameter_count(task.model)
    found = masks_for_target(task, method, target)
    pruned = prune(task, found.masks, method.compensate)
    params = parameter_count(pruned)
    if not method.compensate and params != found.params:
        raise RuntimeError(f"{method.label}: counted {found.params:,} parameters from the masks, the pruned copy has {params:,}")
    exact = None
    if check and not method.compensate:
        masked = fprune.masked_parameters(task.model, found.masks, task.groups)
        exact = float((task.probe(pruned, None) - task.probe(task.model, masked)).abs().max())
    metric = task.evaluate(pruned)
    tuned = task.evaluate(task.tune(pruned)) if tune else None
    return Row(task.name, method.label, target, found.level, params / total, params, metric, tuned, exact,
               time.perf_counter() - began, _off_target(params / total, target), widths(task.groups, found.masks))  # fmt: skip


def _off_target(kept: float, target: float) -> str:
    """A note when `kept` is further than TOLERANCE from ``1 - target``."""
    return f"{100 * abs(kept - (1 - target)):.1f}% off target" if abs(kept - (1 - target)) > TOLERANCE else ""


def widths(groups: Sequence[fprune.ChannelGroup], masks: Mapping[str, Tensor]) -> str:
    """What each pruned group keeps, in graph order: ``heads`` (whole units, e.g. GQA units)
    kept of their count, else channels."""
    parts = []
    for index, keep in sorted(group_keeps(groups, masks).items()):
        group = groups[index]
        if group.units:
            kept_units = sum(bool(keep[list(unit)].all()) for unit in group.units)
            parts.append(f"{kept_units}/{len(group.units)} units")
        else:
            parts.append(f"{int(keep.sum())}/{group.size}")
    return " · ".join(parts)


# ---------------------------------------------------------------- Torch-Pruning (child process)


def _tp_prune(name: str, model: nn.Module, ratio: float, example: Tensor) -> nn.Module:
    """A copy of `model` pruned by Torch-Pruning at `ratio` (uniform, L2)."""
    import torch_pruning as tp  # type: ignore[import-untyped]  # the comparison only; never imported by fprune

    model = copy.deepcopy(model)
    importance = tp.importance.MagnitudeImportance(p=2)
    if name == "digits":
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=importance, pruning_ratio=ratio,
            ignored_layers=[model.get_submodule("classifier.2")],
        )  # fmt: skip
    else:
        config = getattr(model, "config")
        num_heads: dict[nn.Module, int] = {}
        for fqn, module in model.named_modules():
            if fqn.endswith("self_attn"):
                num_heads[module.get_submodule("q_proj")] = config.num_attention_heads
                num_heads[module.get_submodule("k_proj")] = config.num_key_value_heads
                num_heads[module.get_submodule("v_proj")] = config.num_key_value_heads
        pruner = tp.pruner.MetaPruner(
            model, example_inputs={"input_ids": example, "use_cache": False}, importance=importance,
            pruning_ratio=ratio, ignored_layers=[model.get_submodule(f) for f in LM_IGNORE], num_heads=num_heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        )  # fmt: skip
    pruner.step()
    return model


def _tp_child(name: str, target: float, tune: bool) -> None:
    """Torch-Pruning at `target`: bisect its ratio, evaluate, fine-tune; JSON lines on stdout."""
    began = time.perf_counter()

    def say(**fields: object) -> None:
        print(json.dumps({"seconds": round(time.perf_counter() - began, 2), **fields}), flush=True)

    evaluate: Callable[[nn.Module], float]
    tuner: Callable[[nn.Module], nn.Module]
    if name == "digits":
        data = digits_data()
        model, example = digits_cnn(), data.test_images[:1]
        evaluate = lambda m: digits_accuracy(m, data)  # noqa: E731
        tuner = lambda m: fine_tune_digits(m, data, *DIGITS_TUNE)  # noqa: E731
    else:
        text = text_data()
        model, example = byte_lm(), lm_calibration(text, 1, 1, 32)[0]
        evaluate = lambda m: perplexity(m, text)  # noqa: E731
        tuner = lambda m: fine_tune_lm(m, text, *LM_TUNE, batch_size=LM_TUNE_BATCH)  # noqa: E731
    total = parameter_count(model)
    goal = (1.0 - target) * total
    say(event="loaded")
    lo, hi = 0.0, 0.95
    best: tuple[float, nn.Module, int] | None = None
    for _ in range(BISECT_STEPS):
        ratio = (lo + hi) / 2
        say(event="try", ratio=ratio)
        pruned = _tp_prune(name, model, ratio, example)
        params = parameter_count(pruned)
        say(event="pruned", ratio=ratio, params=params)
        if best is None or abs(params - goal) < abs(best[2] - goal):
            best = (ratio, pruned, params)
        if abs(params - goal) <= 0.002 * total or hi - lo < 1e-4:
            break
        lo, hi = (ratio, hi) if params > goal else (lo, ratio)
    assert best is not None
    ratio, pruned, params = best
    hidden = None
    if name == "lm":
        embedding = pruned.get_submodule("model.embed_tokens")
        assert isinstance(embedding, nn.Embedding)
        hidden = embedding.embedding_dim
    say(event="evaluating")
    metric = evaluate(pruned)
    say(event="tuning" if tune else "done", metric=metric)
    tuned = evaluate(tuner(pruned)) if tune else None
    say(event="result", ratio=ratio, params=params, kept=params / total, metric=metric, tuned=tuned, hidden=hidden)


def torch_pruning_row(name: str, target: float, tune: bool, timeout: float) -> Row:
    """Runs :func:`_tp_child` in a child process; killed after `timeout` s without a line."""
    began = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.quality", "--tp-child", name, "--target", str(target)]
    if tune:
        command.append("--tune")
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    def read_errors() -> None:
        assert child.stderr is not None
        errors.extend(child.stderr)

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=read_errors, daemon=True).start()
    last: dict[str, object] = {}
    note = ""
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            child.kill()
            child.wait()
            what = f"pruning_ratio {last.get('ratio')}" if last.get("event") == "try" else str(last.get("event", "start"))
            note = f"did not finish in {timeout:.0f} s (at: {what})"
            break
        if line is None:
            break
        if line.startswith("{"):
            last = json.loads(line)
    code = child.wait()
    seconds = time.perf_counter() - began
    if not note and last.get("event") != "result":
        tail = " ".join("".join(errors).strip().splitlines()[-1:])[:200]
        note = f"failed (exit {code}): {tail}"
    if note:
        return Row(name, TP_LABEL, target, math.nan, math.nan, 0, None, None, None, seconds, note)
    hidden = last.get("hidden")
    extra = f"hidden size {hidden}" if hidden not in (None, 256) else _off_target(_number(last["kept"]), target)
    tuned = last["tuned"]
    return Row(
        name, TP_LABEL, target, _number(last["ratio"]), _number(last["kept"]), int(_number(last["params"])),
        _number(last["metric"]), None if tuned is None else _number(tuned), None, seconds, extra,
    )  # fmt: skip


def _number(value: object) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a number from the Torch-Pruning child, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- report


def _fmt(value: float | None, name: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.1f}" if name.startswith("digits") else f"{value:.3f}"


def table(rows: Sequence[Row], name: str, base: float, targets: Sequence[float], tuned: float | None = None) -> list[str]:
    """One model's table: a line per method, per target kept %, metric, fine-tuned metric."""
    what = "accuracy %" if name.startswith("digits") else "ppl"
    head = "| method | " + " | ".join(f"{100 * t:.0f}% removed: kept · {what} · tuned" for t in targets) + " |"
    lines = [head, "|---|" + "---|" * len(targets)]
    methods = list(dict.fromkeys(r.method for r in rows if r.model == name))
    for method in methods:
        cells = []
        for target in targets:
            row = next((r for r in rows if r.model == name and r.method == method and r.target == target), None)
            if row is None:
                cells.append("")
            elif row.note and row.metric is None:
                cells.append(row.note)
            else:
                cells.append(f"{100 * row.kept:.1f}% · {_fmt(row.metric, name)} · {_fmt(row.tuned, name)}"
                             + (f" ({row.note})" if row.note else ""))  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| unpruned | " + " | ".join(f"100% · {_fmt(base, name)} · {_fmt(tuned, name)}" for _ in targets) + " |")
    return lines


def widths_table(rows: Sequence[Row], target: float) -> list[str]:
    """What each method kept of each group at `target` (graph order)."""
    lines = [f"| model | method | level | kept per group ({100 * target:.0f}% removed) |", "|---|---|---|---|"]
    for r in rows:
        if r.target == target and r.widths:
            lines.append(f"| {r.model} | {r.method} | {r.level:.4f} | {r.widths} |")
    return lines


def exact_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| model | method | target | level | max abs(pruned − masked) |", "|---|---|---|---|---|"]
    for r in rows:
        if r.exact is not None:
            lines.append(f"| {r.model} | {r.method} | {100 * r.target:.0f}% | {r.level:.4f} | {r.exact:.2e} |")
    return lines


def targets_check(rows: Sequence[Row], digits_base: float, lm_base: float) -> list[str]:
    """Issue 15's targets at 30 % removed, no retraining."""
    at = [r for r in rows if r.target == 0.3 and r.metric is not None and r.method != TP_LABEL]
    lines: list[str] = []
    for name, base, ratio, sign in (("lm", lm_base, 1 / 3, 1.0), ("digits", digits_base, 1 / 2, -1.0)):
        mine = [r for r in at if r.model == name]
        if not mine:
            continue
        harm = {r.method: sign * (float(r.metric) - base) for r in mine}  # type: ignore[arg-type]
        magnitude = min((m for m in harm if m.startswith("magnitude") and m.endswith("uniform")), key=lambda m: harm[m])
        calibrated = [m for m in harm if not m.startswith("magnitude")]
        best = min(calibrated, key=lambda m: harm[m])
        what = "perplexity increase" if name == "lm" else "accuracy drop (points)"
        scale = 1.0 if name == "lm" else 100.0
        met = harm[best] <= ratio * harm[magnitude]
        lines.append(
            f"- {name}: {what} at 30% removed, no fine-tune: best calibration criterion **{best}** "
            f"{scale * harm[best]:.3f} vs magnitude (**{magnitude}**) {scale * harm[magnitude]:.3f}: ratio "
            f"{harm[best] / harm[magnitude] if harm[magnitude] else math.inf:.3f} (target ≤ {ratio:.3f}): "
            f"**{'met' if met else 'not met'}**"
        )
    return lines


def plot(rows: Sequence[Row], name: str, base: float, tuned_base: float | None, path: Path) -> None:
    """Metric against the fraction of parameters kept: a colour per criterion, circles for
    uniform widths, squares for global ranking; solid: no fine-tune, dashed: fine-tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r.model == name and r.metric is not None]
    methods = list(dict.fromkeys(r.method for r in mine))
    families = list(dict.fromkeys(m.rpartition(",")[0] for m in methods))
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(figsize=(12, 6.5))
    scale = 100.0 if name == "digits" else 1.0
    for method in methods:
        family, _, ranking = method.rpartition(",")
        colour = "black" if method == TP_LABEL else colours(families.index(family) % 10)
        marker = "s" if "global" in ranking else "o"
        points = sorted((r for r in mine if r.method == method), key=lambda r: r.kept)
        xs = [100 * r.kept for r in points]
        ys = [scale * r.metric for r in points if r.metric is not None]
        axes.plot(xs, ys, "-", color=colour, marker=marker, label=method, markersize=4, linewidth=1.2)
        tuned = [(100 * r.kept, scale * r.tuned) for r in points if r.tuned is not None]
        if tuned:
            axes.plot([x for x, _ in tuned], [y for _, y in tuned], "--", color=colour, marker=marker, markersize=3,
                      linewidth=0.9, markerfacecolor="none")  # fmt: skip
    axes.axhline(scale * base, color="grey", linewidth=1.0, linestyle=":", label="unpruned")
    if tuned_base is not None:
        axes.axhline(scale * tuned_base, color="grey", linewidth=1.0, linestyle="--", label="unpruned, same fine-tune")
    axes.set_xlabel("parameters kept (%)")
    if name == "lm":
        axes.set_yscale("log")
        axes.set_ylabel("held-out perplexity per byte (log scale)")
        axes.set_title("Byte-level Llama (2.9 M parameters): solid = no fine-tune, dashed = fine-tuned")
    else:
        axes.set_ylabel("test accuracy (%)")
        axes.set_title("Digits CNN (102 k parameters): solid = no fine-tune, dashed = fine-tuned")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------- investigation


def investigate(start: float) -> tuple[list[Row], list[str]]:
    """Side runs at 30 % removed, no fine-tune: the digits CNN with 4x more calibration images
    and with mean-normalised global ranking; the LM with its heads kept (MLP only) and with 4x
    more calibration windows. Rows and their markdown tables."""
    rows: list[Row] = []
    out: list[str] = []
    calibrated = [m for m in METHODS if m.criterion not in ("l1", "l2")]
    variants: list[tuple[str, Callable[[], Task], Sequence[Method]]] = [
        ("digits, 16 x 64 calibration images", lambda: digits_task(16), calibrated),
        ("digits, global ranking 'mean'", digits_task,
         [Method(k, "mean", c) for k, c in _RECIPES]),
        ("lm, MLP only (heads kept)", lambda: _mlp_only(lm_task(text_data())), METHODS),
        ("lm, 16 x 8 calibration windows", lambda: lm_task(text_data(), 16), calibrated),
    ]  # fmt: skip
    for name, make, methods in variants:
        task = make()
        task = dataclasses.replace(task, name=name)
        for method in methods:
            row = run_method(task, method, 0.3, False, False)
            rows.append(row)
            _log(f"{name} {method.label}: kept {100 * row.kept:.2f}%, {row.metric:.4f}", start)
        out += ["", f"### {name}", "", *table(rows, name, task.evaluate(task.model), (0.3,))]
    out += ["", "### Widths", "", *widths_table(rows, 0.3)]
    return rows, out


def _mlp_only(task: Task) -> Task:
    heads = tuple(sorted({p.rpartition(".")[0] for g in task.groups if g.units for p in g.producers}))
    return dataclasses.replace(task, ignore=(task.ignore or ()) + heads)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the 30%% target only, no fine-tune, no plots")
    parser.add_argument("--skip-tp", action="store_true", help="leave Torch-Pruning out")
    parser.add_argument("--investigate", action="store_true", help="only the side runs at 30%% (calibration size, ranking, MLP only)")
    parser.add_argument("--only", choices=("digits", "lm"), help="one model only")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--from-json", type=Path, help="print the report (and plots, with --plots) of a saved --json run")
    parser.add_argument("--plots", type=Path, help="folder for the PNGs (default docs/ for a full run; none with --quick)")
    parser.add_argument("--tp-timeout", type=float, default=TP_TIMEOUT, help="seconds Torch-Pruning may go silent")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2)")
    parser.add_argument("--tp-child", choices=("digits", "lm"), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tune", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["QUALITY_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.tp_child:
        _tp_child(args.tp_child, args.target, args.tune)
        return 0
    if args.from_json:
        rerender(args.from_json, args.plots)
        return 0

    start = time.perf_counter()
    load_before = os.getloadavg()
    if args.investigate:
        side, lines = investigate(start)
        print("\n".join([f"# Pruning quality: side runs ({datetime.date.today().isoformat()}, "
                         f"{(time.perf_counter() - start) / 60:.1f} min, {torch.get_num_threads()} threads)", *lines]))  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"rows": [r._asdict() for r in side]}, indent=1))
        return 0
    targets = QUICK_TARGETS if args.quick else TARGETS
    tune = not args.quick
    plots = args.plots if args.plots is not None else (None if args.quick else ROOT / "docs")
    rows: list[Row] = []
    bases: dict[str, float] = {}
    tasks: list[Callable[[], Task]] = []
    if args.only in (None, "digits"):
        tasks.append(digits_task)
    if args.only in (None, "lm"):
        tasks.append(lambda: lm_task(text_data()))
    for make in tasks:
        task = make()
        bases[task.name] = task.evaluate(task.model)
        if tune:  # what the fine-tune alone does to the unpruned model
            bases[f"{task.name} tuned"] = task.evaluate(task.tune(task.model))
        _log(f"{task.name}: {parameter_count(task.model):,} parameters, unpruned {bases[task.name]:.4f} "
             f"(fine-tuned: {bases.get(f'{task.name} tuned')})", start)  # fmt: skip
        for method in METHODS:
            for target in targets:
                row = run_method(task, method, target, tune, check=target == 0.3)
                rows.append(row)
                _log(f"{task.name} {method.label} {100 * target:.0f}%: level {row.level:.4f}, kept {100 * row.kept:.2f}%, "
                     f"{row.metric:.4f} -> {row.tuned} ({row.seconds:.1f} s)", start)  # fmt: skip
        if not args.skip_tp:
            for target in targets:
                row = torch_pruning_row(task.name, target, tune, args.tp_timeout)
                rows.append(row)
                _log(f"{task.name} Torch-Pruning {100 * target:.0f}%: {row.note or row.metric} ({row.seconds:.1f} s)", start)
                if row.note.startswith("did not finish"):
                    for rest in targets[targets.index(target) + 1 :]:
                        rows.append(row._replace(target=rest, note=f"not tried ({100 * target:.0f}% {row.note})"))
                    break
    elapsed = time.perf_counter() - start
    header = [
        f"- date: {datetime.date.today().isoformat()}; whole run {elapsed / 60:.1f} min",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"transformers {version('transformers')}; Torch-Pruning {version('torch-pruning')}; Python {platform.python_version()}",
        f"- load average before: {' / '.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- fine-tune: digits {DIGITS_TUNE[0]} steps x 64 images, lr {DIGITS_TUNE[1]}; LM {LM_TUNE[0]} steps x "
        f"{LM_TUNE_BATCH} x 128 bytes, lr {LM_TUNE[1]}" if tune else "- no fine-tune",
    ]  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"bases": bases, "rows": [r._asdict() for r in rows], "header": header, "targets": targets,
                                         "quick": args.quick}, indent=1))  # fmt: skip
    print(render(rows, bases, header, targets, args.quick))
    if plots is not None:
        for name in ("digits", "lm"):
            if name in bases:
                plot(rows, name, bases[name], bases.get(f"{name} tuned"), plots / f"quality_{name}.png")
    _log(f"done in {elapsed / 60:.1f} min", start)
    return 0


def render(rows: Sequence[Row], bases: Mapping[str, float], header: Sequence[str], targets: Sequence[float], quick: bool) -> str:
    """The markdown report."""
    out = [f"# Pruning quality ({'--quick' if quick else 'full run'})", "", *header]
    for name, title in (("digits", "Digits CNN: test accuracy %"), ("lm", "Byte-level Llama: held-out perplexity per byte")):
        if name in bases:
            tuned = bases.get(f"{name} tuned")
            out += ["", f"## {title} (unpruned: {_fmt(bases[name], name)}; after the same fine-tune: {_fmt(tuned, name)})", "",
                    *table(rows, name, bases[name], targets, tuned)]  # fmt: skip
    out += ["", "## Widths at 30% removed", "", *widths_table(rows, 0.3)]
    out += ["", "## Exactness (pruned copy against the masked model, 30% target)", "", *exact_table(rows)]
    out += ["", "## Targets (30% removed, no fine-tune)", "", *targets_check(rows, bases.get("digits", math.nan), bases.get("lm", math.nan))]
    return "\n".join(out)


def rerender(path: Path, plots: Path | None) -> None:
    """The report (and plots) again from a ``--json`` file of a run."""
    saved = json.loads(path.read_text())
    rows = [Row(**r) for r in saved["rows"]]
    bases: dict[str, float] = saved["bases"]
    print(render(rows, bases, saved["header"], saved["targets"], saved["quick"]))
    if plots is not None:
        for name in ("digits", "lm"):
            if name in bases:
                plot(rows, name, bases[name], bases.get(f"{name} tuned"), plots / f"quality_{name}.png")


if __name__ == "__main__":
    raise SystemExit(main())
