"""Random chain models for the pattern path: Linear / Conv2d stacks joined by runs of pass-through ops.

Every layer of a model feeds the next through a run of zero to four ops, in any order:
BatchNorm (affine or not, running statistics or not; one per run), activations in module / function /
method form (tests/pipeline/fuzz_models.py's lists, PReLU per channel included), pools (max / avg,
padded or not, ``count_include_pad`` or not, adaptive; module or function form), dropout and
``nn.Identity``. A CNN ends in a flatten head (an optional adaptive pool, then ``nn.Flatten``,
``torch.flatten(x, 1)`` or ``x.flatten(1)``, maybe an activation or dropout) and a Linear stack,
or in a 1x1 conv, or returns its last run's output. Convs have kernel 1 or 3, padding 0 or 1
(zeros, or at times reflect / replicate / circular), stride 1 or 2 and a bias or not.

Models are float64 with tests/pipeline/fuzz_models.py's weights, in eval mode or (a quarter) in train
mode, where BatchNorm uses batch statistics and dropout has p=0. Every producer weight gets a
keep-mask (saliency, FPGM, random, keep-one, drop-one or keep-all), and ``prune_bias`` is True
(the default, 80%), False (10%) or a mapping per weight (10%).

:func:`run_chain_case` runs ``match_patterns(default_patterns())`` + ``apply_prune`` on the
model (or, 15% of the time, on its traced GraphModule) and compares the pruned copy with
``functional_call(model, masked_parameters(...))`` in float64, and the input model with a
snapshot taken before. ``python -m tests.pipeline.chain_report`` prints the figures;
tests/patterns/test_passthrough.py enforces them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

import fprune

from .fuzz_models import BATCH, Chooser, Pool, RandomChooser, _activation, _initialize
from .fuzz_pipelines import ATOL, RTOL, reason_of
from ..purity import changes, snapshot

__all__ = [
    "EXACTNESS_REASONS",
    "ChainCase",
    "ChainNet",
    "ChainOutcome",
    "build_and_run",
    "chain_case",
    "is_exactness_refusal",
    "run_chain_case",
]

Status = Literal["exact", "refused", "mismatch", "mutated", "error"]

EXACTNESS_REASONS = (
    "cannot be folded into a bias exactly",  # zero-padded consumer conv, padded avg pool, BatchNorm after it
)
"""What a refusal for exactness says: the pruned model could not compute what the masked one does."""


def is_exactness_refusal(message: str) -> bool:
    """True if a PruneError message gives an exactness reason (see `EXACTNESS_REASONS`)."""
    return any(reason in message for reason in EXACTNESS_REASONS)


# --- the model ------------------------------------------------------------------------------------


class Flatten(nn.Module):
    """``torch.flatten(x, 1)`` or ``x.flatten(1)``, traced through (``nn.Flatten`` is used as is)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1) if self.form == "torch.flatten" else x.flatten(1)

    def extra_repr(self) -> str:
        return self.form


class ChainNet(nn.Module):
    """The steps applied one after the other: ``steps[0]`` is the first layer."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x


@dataclass(frozen=True)
class ChainCase:
    """A chain model, its input, its masks and its ``prune_bias``.

    Attributes:
        model: float64, in eval or train mode.
        x: the example input.
        masks: a keep-mask for every producer weight.
        prune_bias: True, False or per weight FQN.
        out_weight: the FQN of the last producer weight: its rows are the output's channels
            (dim 1), so its mask shrinks the output.
        seed: the torch.Generator seed of the weights and the input.
        layout: one word per step, for reports.
    """

    model: ChainNet
    x: Tensor
    masks: dict[str, Tensor]
    prune_bias: bool | dict[str, bool]
    out_weight: str
    seed: int
    layout: tuple[str, ...]

    def __repr__(self) -> str:
        mode = "train" if self.model.training else "eval"
        return f"ChainCase(seed={self.seed}, {mode}, input={tuple(self.x.shape)}, prune_bias={self.prune_bias}, steps={list(self.layout)})"


def _conv(choose: Chooser, c_in: int, c_out: int, size: int) -> nn.Conv2d:
    kernel = choose.choice([3, 1]) if size >= 3 else 1
    padding = choose.choice([1, 0]) if kernel == 3 else 0
    stride = choose.choice([1, 1, 2]) if size >= 4 else 1
    mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"
    if padding and choose.chance(0.2):
        mode = choose.choice(("reflect", "replicate", "circular"))
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=choose.chance(0.7), padding_mode=mode)


def _dropout(choose: Chooser, image: bool, train: bool) -> nn.Module:
    p = 0.0 if train else choose.choice([0.5, 0.1])
    return nn.Dropout2d(p) if image and choose.chance(0.5) else nn.Dropout(p)


def _run(choose: Chooser, channels: int, shape: tuple[int, ...], train: bool, *, image: bool) -> list[nn.Module]:
    """Zero to four pass-through ops in random order (pools only where the map is big enough).

    At most one BatchNorm per run: stacked train-mode BatchNorms of a nearly constant channel
    amplify float64 rounding (summing fewer terms) past the comparison's tolerance.
    """
    ops: list[nn.Module] = []
    kind: Literal["img2", "vec"] = "img2" if image else "vec"
    for _ in range(choose.integer(0, 4)):
        what = choose.choice(["bn", "act", "act", "pool", "dropout", "identity"] if image else ["bn", "act", "act", "dropout", "identity"])
        if what == "bn" and any(isinstance(op, (nn.BatchNorm1d, nn.BatchNorm2d)) for op in ops):
            what = "identity"
        if what == "bn":
            bn_type = nn.BatchNorm2d if image else nn.BatchNorm1d
            ops.append(bn_type(channels, affine=not choose.chance(0.1), track_running_stats=not choose.chance(0.1)))
        elif what == "act":
            ops.append(_activation(choose, channels, kind))
        elif what == "pool":
            size = min(shape[2:])
            kinds = [k for (s, k) in _POOL_KINDS if s == 2 and (size >= 2 or "3s1p1" in k)]
            ops.append(Pool(2, choose.choice(kinds), choose.chance(0.4)))
            shape = _shape_after(ops[-1], shape)
        elif what == "dropout":
            ops.append(_dropout(choose, image, train))
        else:
            ops.append(nn.Identity())
    return ops


_POOL_KINDS = (
    (2, "max2"), (2, "avg2"), (2, "max3s1p1"), (2, "avg3s1p1"), (2, "avg3s1p1-nopad"), (2, "adaptive-avg2"), (2, "adaptive-max2"),
)  # fmt: skip


def _shape_after(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(shape))
    module.train(training)
    return tuple(out.shape)


def _width(choose: Chooser) -> int:
    return choose.integer(1, 16)


def _head(choose: Chooser, shape: tuple[int, ...], train: bool) -> tuple[list[nn.Module], list[str]]:
    """Images to features: an optional adaptive pool, a flatten, maybe an activation / dropout."""
    steps: list[nn.Module] = []
    layout: list[str] = []
    if shape[2] * shape[3] > 16 or choose.chance(0.5):
        size = 1 if shape[2] * shape[3] > 16 else choose.choice([1, 2])
        if size == 2:
            steps.append(Pool(2, choose.choice(["adaptive-avg2", "adaptive-max2"]), choose.chance(0.4)))
        else:
            steps.append(choose.choice([nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)]))
        layout.append(_word(steps[-1]))
    form = choose.choice(["nn.Flatten", "torch.flatten", "x.flatten(1)"])
    steps.append(nn.Flatten() if form == "nn.Flatten" else Flatten(form))
    layout.append(form)
    if choose.chance(0.3):
        steps.append(_activation(choose, 1, "seq") if choose.chance(0.5) else _dropout(choose, False, train))  # no PReLU(c)
        layout.append(_word(steps[-1]))
    return steps, layout


def _word(op: nn.Module) -> str:
    form = getattr(op, "form", None)
    if isinstance(op, Pool):
        return f"{'function' if op.functional else 'module'} pool {op.kind}"
    if form is not None:
        return f"{form} {getattr(op, 'name', '')}".strip()
    return type(op).__name__


def chain_case(choose: Chooser) -> ChainCase:
    """One random chain model with its input and masks, all from `choose`."""
    seed = choose.integer(0, 2**31 - 1)
    kind = choose.choice(["mlp", "cnn", "cnn", "cnn-only"])
    train = choose.chance(0.25)
    if kind == "mlp":
        shape: tuple[int, ...] = (BATCH, _width(choose))
    else:
        side = choose.integer(3, 10)
        shape = (BATCH, choose.integer(1, 6), side, side + choose.integer(0, 2))
    input_shape = shape
    steps: list[nn.Module] = []
    layout: list[str] = []
    producers: list[str] = []

    def add(step: nn.Module, word: str) -> None:
        nonlocal shape
        if isinstance(step, (nn.Linear, nn.Conv2d)):
            producers.append(f"steps.{len(steps)}.weight")
        steps.append(step)
        layout.append(word)
        shape = _shape_after(step, shape)

    if kind != "mlp":
        for _ in range(choose.integer(1, 4)):
            add(_conv(choose, shape[1], _width(choose), min(shape[2:])), "conv")
            for op in _run(choose, shape[1], shape, train, image=True):
                add(op, _word(op))
        if kind == "cnn-only":
            if choose.chance(0.6):
                add(nn.Conv2d(shape[1], choose.integer(1, 8), 1, bias=choose.chance(0.7)), "conv-head")
        else:
            for step, word in zip(*_head(choose, shape, train)):
                add(step, word)
    if kind != "cnn-only":
        blocks = choose.integer(0 if kind == "cnn" else 1, 3)
        for _ in range(blocks):
            add(nn.Linear(shape[1], _width(choose), bias=choose.chance(0.7)), "linear")
            for op in _run(choose, shape[1], shape, train, image=False):
                add(op, _word(op))
        if blocks == 0 or choose.chance(0.7):  # a CNN's flattened features always meet a Linear
            add(nn.Linear(shape[1], choose.integer(1, 8), bias=choose.chance(0.7)), "linear-head")
    model = ChainNet(steps).double()
    generator = torch.Generator().manual_seed(seed)
    _initialize(model, generator, choose.choice(["none", "none", "none", "rounded"]))
    model.train(train)
    x = torch.randn(input_shape, generator=generator, dtype=torch.float64)
    masks = {fqn: _mask(choose, model.get_parameter(fqn).detach()) for fqn in producers}
    prune_bias: bool | dict[str, bool] = True
    style = choose.choice(["default"] * 8 + ["fold", "mixed"])
    if style == "fold":
        prune_bias = False
    elif style == "mixed":
        prune_bias = {fqn: choose.chance(0.5) for fqn in masks}
    return ChainCase(model, x, masks, prune_bias, producers[-1], seed, tuple(layout))


def _mask(choose: Chooser, weight: Tensor) -> Tensor:
    rows = weight.shape[0]
    style = choose.choice(["saliency", "fpgm", "random", "keep-one", "drop-one", "keep-all"])
    if style == "saliency":
        return fprune.saliency_mask(weight, choose.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9]))
    if style == "fpgm":
        return fprune.fpgm_mask(weight, choose.choice([v for v in (0.0, 0.1, 0.25, 0.5, 0.75) if round(rows * v) < rows]))
    keep = torch.ones(rows, dtype=torch.bool)
    if style == "keep-one":
        keep[:] = False
        keep[choose.integer(0, rows - 1)] = True
    elif style == "drop-one" and rows > 1:
        keep[choose.integer(0, rows - 1)] = False
    elif style == "random":
        keep = torch.tensor([choose.chance(0.5) for _ in range(rows)], dtype=torch.bool)
        if not bool(keep.any()):
            keep[choose.integer(0, rows - 1)] = True
    return keep


# --- the pipeline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainOutcome:
    """What one case did: `status`, the normalized refusal `reason` (tests/pipeline/fuzz_pipelines.py's
    ``reason_of``), the full `detail` (the PruneError message), `exactness`: the refusal gives
    an exactness reason."""

    status: Status
    reason: str = ""
    detail: str = ""
    exactness: bool = False


def run_chain_case(case: ChainCase, choose: Chooser, patterns: Mapping[fprune.patterns.Pattern, fprune.patterns.PruneFunction] | None = None) -> ChainOutcome:
    """match_patterns(`patterns`, default: default_patterns()) + apply_prune on `case`, checked
    against the masked model in float64 and against a snapshot of the input model."""
    before = snapshot(case.model)
    gm = fx.symbolic_trace(case.model)
    code = gm.code
    model: nn.Module = gm if choose.chance(0.15) else case.model

    def unchanged(outcome: ChainOutcome) -> ChainOutcome:
        found = changes(case.model, before)
        if gm.code != code:
            found.append("the traced GraphModule's code changed")
        return ChainOutcome("mutated", "input model changed", "; ".join(found)) if found else outcome

    try:
        matches = fprune.match_patterns(gm, fprune.default_patterns() if patterns is None else patterns)
        pruned = fprune.apply_prune(model, case.masks, matches, prune_bias=case.prune_bias)
    except fprune.PruneError as error:
        message = str(error)
        return unchanged(ChainOutcome("refused", reason_of(message), message, is_exactness_refusal(message)))
    params = fprune.masked_parameters(model, case.masks, matches, prune_bias=case.prune_bias)
    with torch.no_grad():
        expected = functional_call(copy.deepcopy(model), params, (case.x,))  # a copy: train mode updates statistics
        got = pruned(case.x)
    assert isinstance(expected, Tensor) and isinstance(got, Tensor)
    keep = case.masks[case.out_weight]  # the output's dim 1 holds the last producer's channels
    expected = expected.index_select(1, keep.nonzero().squeeze(1))
    if got.shape != expected.shape:
        return unchanged(ChainOutcome("mismatch", "output shape", f"pruned {tuple(got.shape)}, masked {tuple(expected.shape)}"))
    if not torch.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
        return unchanged(ChainOutcome("mismatch", "output values", f"max abs difference {float((got - expected).abs().max()):.3g}"))
    return unchanged(ChainOutcome("exact"))


def build_and_run(case_seed: int, patterns: Mapping[fprune.patterns.Pattern, fprune.patterns.PruneFunction] | None = None) -> tuple[ChainCase, ChainOutcome]:
    """The case of `case_seed` and its outcome (the report and the tests share this); any
    exception other than a PruneError propagates."""
    choose = RandomChooser(random.Random(case_seed))
    case = chain_case(choose)
    return case, run_chain_case(case, choose, patterns)
