"""Run one generated model through an fprune pipeline and classify what happened.

Both pipelines take a :class:`~tests.pipeline.fuzz_models.FuzzCase` and a chooser for the masks:

- ``groups``: ``channel_groups`` on the traced model, masks from ``group_masks`` (levels near
  0 and near 1, ``round_to``, global ranking, the output group included or not) or random
  keep-masks per group (keep-one, keep-all, drop-one, random; whole attention heads), then
  ``apply_prune(model, masks, groups)``; half the time, its plan (``make_plan``, through JSON,
  ``apply_plan``) must replay the pruned copy bit for bit;
- ``groups/export``: the same on the groups found through ``torch.export.export(model, (x,),
  strict=False)`` (in the model's train or eval mode; an export that fails is refused); apply
  exports the pruned copy again to check the sizes it changed;
- ``patterns``: ``match_patterns`` with the default patterns, masks from ``saliency_mask`` /
  ``fpgm_mask`` or random, ``prune_bias`` True, False or per tensor, then ``apply_prune``.

The result is ``exact`` (the pruned copy computes what ``functional_call`` with
``masked_parameters`` computes, in float64, with the removed output channels dropped),
``refused`` (a ``PruneError``, with a normalized reason), ``mismatch`` or ``mutated`` (the input
model changed: state, ``requires_grad``, train/eval flags, structure, attributes, hooks or
parametrizations). Any other exception propagates: it is a bug too.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

import fprune

from .fuzz_models import Chooser, FuzzCase
from ..purity import changes, snapshot

__all__ = [
    "LEVELS",
    "Outcome",
    "PIPELINES",
    "STATS",
    "STATUSES",
    "Stats",
    "reason_of",
    "run_export",
    "run_pipeline",
]

LEVELS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
PIPELINES = ("groups/group_masks", "groups/random", "groups/export", "patterns")
RTOL = 1e-9
ATOL = 1e-10

Status = Literal["exact", "refused", "mismatch", "mutated", "error"]
STATUSES: tuple[Status, ...] = ("exact", "refused", "mismatch", "mutated", "error")
"""``error``: an exception other than PruneError (the report runner catches it; tests let it fail)."""


@dataclass(frozen=True)
class Outcome:
    """What one case did: `status`, a short `reason` (refusals: the normalized message), the
    full `detail`; `removed`: the masks removed at least one channel."""

    pipeline: str
    status: Status
    reason: str = ""
    detail: str = ""
    removed: bool = False


@dataclass
class Stats:
    """Counts of outcomes per pipeline, and of refusal reasons."""

    tried: Counter[str] = field(default_factory=Counter)
    status: Counter[tuple[str, str]] = field(default_factory=Counter)
    removed: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.tried[outcome.pipeline] += 1
        self.status[(outcome.pipeline, outcome.status)] += 1
        if outcome.status == "exact" and outcome.removed:
            self.removed[outcome.pipeline] += 1
        if outcome.status == "refused":
            self.reasons[(outcome.pipeline, outcome.reason)] += 1

    def summary(self) -> str:
        lines = []
        for pipeline in sorted(self.tried):
            counts = ", ".join(f"{s} {self.status[(pipeline, s)]}" for s in STATUSES if self.status[(pipeline, s)])
            lines.append(f"{pipeline}: {self.tried[pipeline]} models ({counts}; channels removed in {self.removed[pipeline]} exact ones)")
        return "\n".join(lines)


STATS = Stats()
"""The counts of this process (the tests add to it; conftest prints it at the end)."""


# --- refusal reasons -----------------------------------------------------------------------------


def reason_of(message: str) -> str:
    """A PruneError message without names and numbers, cut to its gist, for counting."""
    text = re.sub(r"^[\w.]+(\(\))?: ", "", message)  # the public function's name, which starts every message
    if "could not be traced again" in text:
        return "head counts: the pruned copy could not be traced again to check them"
    if "pruning changes counts that forward writes" in text:
        return "head counts: a count written as a literal in forward"
    blocked = re.search(r"cannot be pruned: `[^`]*`: (.*)", text)
    if blocked:
        text = "group blocked: " + blocked.group(1)
    unmatched = re.search(r"no match prunes it: (?:`[^`]*` \([^)]*\): )?(.*)", text)
    if unmatched:
        text = "no match: " + unmatched.group(1)
    chain = re.match(r"pruning `[^`]*` \(chain [^)]*\): (.*)", text)
    if chain:
        text = "chain: " + chain.group(1)
    text = re.sub(r"^masks? for `[^`]*`(?:(?:, | and )`[^`]*`)*:? ", "mask ", text)
    text = re.sub(r"`[^`]*`", "_", text)
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\s?\([^()]*\)", "", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    parts = re.split(r"[;:]\s", text, maxsplit=2)
    gist = parts[0] if not parts[0].endswith(("blocked", "no match", "chain")) else ": ".join(parts[:2])
    return re.sub(r"\s+", " ", gist).strip()[:150]


# --- masks ---------------------------------------------------------------------------------------


def _producer_mask(model: nn.Module, group: fprune.ChannelGroup, fqn: str, keep: Tensor) -> Tensor:
    """A keep-mask over the producer weight `fqn`'s rows (its member's dim) from a keep vector
    over the group's channels (rows outside the group are kept)."""
    member = next(m for m in group.members if m.fqn == fqn and m.role == "producer")
    rows = model.get_parameter(fqn).shape[member.dim]
    mask = torch.ones(rows, dtype=torch.bool)
    mask[torch.tensor(list(member.positions), dtype=torch.long)] = keep[torch.tensor(list(member.channels), dtype=torch.long)]
    return mask


def _keep_items(choose: Chooser, count: int, style: str) -> list[bool]:
    if style == "keep-all" or count == 1 and style in ("drop-one", "random"):
        return [True] * count
    if style == "keep-one":
        keep = [False] * count
        keep[choose.integer(0, count - 1)] = True
        return keep
    if style == "drop-one":
        keep = [True] * count
        keep[choose.integer(0, count - 1)] = False
        return keep
    keep = [choose.chance(0.5) for _ in range(count)]
    if not any(keep):
        keep[choose.integer(0, count - 1)] = True
    return keep


def _group_keep(choose: Chooser, group: fprune.ChannelGroup) -> Tensor | None:
    """A keep vector over the group's channels (whole units), or None to leave it alone."""
    style = choose.choice(["random", "keep-one", "drop-one", "keep-all", "skip"])
    if style == "skip":
        return None
    if choose.chance(0.005):  # probes: every channel removed, or part of a head
        return torch.zeros(group.size, dtype=torch.bool)
    in_units = {c for unit in group.units for c in unit}
    items: list[Sequence[int]] = [*group.units, *((c,) for c in range(group.size) if c not in in_units)]
    if group.units and choose.chance(0.03):
        items = [(c,) for c in range(group.size)]
    keep = torch.zeros(group.size, dtype=torch.bool)
    for item, kept in zip(items, _keep_items(choose, len(items), style)):
        keep[torch.tensor(list(item), dtype=torch.long)] = kept
    return keep


def _covers(group: fprune.ChannelGroup, fqn: str) -> bool:
    """The producer `fqn`'s rows hold every channel of the group."""
    channels = {c for m in group.members if m.fqn == fqn and m.role == "producer" for c in m.channels}
    return len(channels) == group.size


def _mask_keys(group: fprune.ChannelGroup, choose: Chooser) -> list[str]:
    """The producers whose masks decide the group: the first that holds every channel, or
    else every producer (concat branches hold part each); at times all producers, or one
    chosen at random (a refusal probe where it holds only part)."""
    if len(group.producers) > 1 and choose.chance(0.15):
        return [choose.choice(group.producers)]
    if len(group.producers) > 1 and choose.chance(0.15):
        return list(group.producers)
    covering = next((p for p in group.producers if _covers(group, p)), None)
    return [covering] if covering is not None else list(group.producers)


def random_group_masks(model: nn.Module, groups: Sequence[fprune.ChannelGroup], choose: Chooser) -> dict[str, Tensor]:
    """Random keep-masks for some groups: mostly prunable ones not returned by forward, keyed
    as `_mask_keys` says; at times a blocked group (a refusal probe)."""
    masks: dict[str, Tensor] = {}
    for group in groups:
        if not group.producers:
            continue
        if not group.prunable and not choose.chance(0.05):
            continue
        if group.reaches_output and not choose.chance(0.3):
            continue
        keep = _group_keep(choose, group)
        if keep is None:
            continue
        for fqn in _mask_keys(group, choose):
            masks[fqn] = _producer_mask(model, group, fqn, keep)
    return masks


def _random_rows(choose: Chooser, rows: int, style: str) -> Tensor:
    return torch.tensor(_keep_items(choose, rows, style), dtype=torch.bool)


def pattern_masks(model: nn.Module, matches: Sequence[fprune.Match], choose: Chooser) -> dict[str, Tensor]:
    """Masks for some matches (saliency, FPGM or random), and at times one for a weight no
    match covers (a refusal probe)."""
    masks: dict[str, Tensor] = {}
    covered: set[str] = set()
    for match in matches:
        covered.update(match.mask_fqns)
        if match.mask_fqns != (match.weight_fqn,):
            continue  # LSTM chains take per-layer masks; the fuzzer builds no LSTM
        weight = model.get_parameter(match.weight_fqn).detach()
        style = choose.choice(["saliency", "random", "keep-one", "fpgm", "keep-all", "skip"])
        if style == "skip":
            continue
        if style == "saliency":
            masks[match.weight_fqn] = fprune.saliency_mask(weight, choose.choice(LEVELS))
        elif style == "fpgm":  # it rounds: levels that would remove every row are refused
            rows = weight.shape[0]
            masks[match.weight_fqn] = fprune.fpgm_mask(weight, choose.choice([v for v in LEVELS if round(rows * v) < rows]))
        else:
            masks[match.weight_fqn] = _random_rows(choose, weight.shape[0], style)
    if choose.chance(0.05):
        others = [fqn for fqn, p in model.named_parameters() if p.dim() >= 2 and fqn not in covered]
        if others:
            fqn = choose.choice(others)
            masks[fqn] = _random_rows(choose, model.get_parameter(fqn).shape[0], "random")
    return masks


# --- the pipelines -------------------------------------------------------------------------------


def _compare(
    case: FuzzCase,
    pipeline: str,
    model: nn.Module,
    pruned: nn.Module,
    masks: Mapping[str, Tensor],
    records: Sequence[fprune.Match] | Sequence[fprune.ChannelGroup],
    prune_bias: bool | Mapping[str, bool],
) -> Outcome:
    """`pruned` against the masked `model` (the case's model or its GraphModule) on the case's
    input, without the removed output channels."""
    x = case.x
    try:
        params = fprune.masked_parameters(model, masks, records, prune_bias=prune_bias)
    except fprune.PruneError as error:
        return Outcome(pipeline, "mismatch", "masked_parameters refused what apply_prune pruned", str(error))
    with torch.no_grad():
        # on a copy: a train-mode forward updates BatchNorm statistics; seeded alike: stochastic depth
        torch.manual_seed(0)
        expected = functional_call(copy.deepcopy(model), params, (x,))
        torch.manual_seed(0)
        got = pruned(x)
    assert isinstance(expected, Tensor) and isinstance(got, Tensor)
    head_keep = masks.get(case.head)
    if head_keep is not None:
        expected = expected.index_select(case.out_dim, head_keep.nonzero().squeeze(1))
    if got.shape != expected.shape:
        return Outcome(pipeline, "mismatch", "output shape", f"pruned output {tuple(got.shape)}, masked model {tuple(expected.shape)}")
    if not torch.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
        worst = float((got - expected).abs().max())
        return Outcome(pipeline, "mismatch", "output values", f"max abs difference {worst:.3g} (masks: {sorted(masks)})")
    # a GraphModule's class is made per instance (deepcopy too): the copy is a GraphModule
    same_class = isinstance(pruned, fx.GraphModule) if isinstance(model, fx.GraphModule) else type(pruned) is type(model)
    if not same_class:
        return Outcome(pipeline, "mismatch", "pruned copy type", f"{type(pruned).__name__} is not {type(model).__name__}")
    modes = {n: m.training for n, m in model.named_modules()}
    if {n: m.training for n, m in pruned.named_modules() if n in modes} != modes:
        return Outcome(pipeline, "mismatch", "pruned copy train/eval flags", "")
    return Outcome(pipeline, "exact", removed=any(not bool(m.all()) for m in masks.values()))


def _plan_problem(model: nn.Module, masks: Mapping[str, Tensor], groups: Sequence[fprune.ChannelGroup], pruned: nn.Module, x: Tensor) -> str | None:
    """Where the plan of the pruning, through its JSON and replayed, is not `pruned` bit for
    bit (its tensors, their Parameter-ness and requires_grad, its output on `x`), or None."""
    try:
        plan = fprune.Plan.from_json(fprune.make_plan(model, masks, groups).to_json())
        replayed = fprune.apply_plan(model, plan)
    except fprune.PruneError as error:
        return f"make_plan / apply_plan refused what apply_prune pruned: {error}"
    want = dict(pruned.named_parameters(remove_duplicate=False)) | dict(pruned.named_buffers(remove_duplicate=False))
    got = dict(replayed.named_parameters(remove_duplicate=False)) | dict(replayed.named_buffers(remove_duplicate=False))
    if want.keys() != got.keys():
        return f"the replayed copy's tensors differ: {sorted(want.keys() ^ got.keys())[:3]}"
    for name, tensor in want.items():
        other = got[name]
        if tensor.dtype != other.dtype or tensor.shape != other.shape or not torch.equal(tensor, other):
            return f"the replayed copy's `{name}` differs"
        if tensor.requires_grad != other.requires_grad or isinstance(tensor, nn.Parameter) != isinstance(other, nn.Parameter):
            return f"the replayed copy's `{name}` is another kind of tensor"
    with torch.no_grad():  # on copies: a train-mode forward updates BatchNorm statistics
        torch.manual_seed(0)
        a = copy.deepcopy(pruned)(x)
        torch.manual_seed(0)
        b = replayed(x)
    if not (isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)):
        return "the replayed copy's output differs"
    return None


class _Guard:
    """Snapshots of the case's model and of its traced GraphModule (which shares its modules),
    checked after every fprune call."""

    def __init__(self, case: FuzzCase, pipeline: str) -> None:
        self.case, self.pipeline = case, pipeline
        self.before = snapshot(case.model)
        self.gm: fx.GraphModule | None = None
        self.code = ""

    def traced(self) -> fx.GraphModule:
        self.gm = fx.symbolic_trace(self.case.model)
        self.code = self.gm.code
        return self.gm

    def check(self, outcome: Outcome) -> Outcome:
        changed = changes(self.case.model, self.before)
        if self.gm is not None and self.gm.code != self.code:
            changed.append("the traced GraphModule's code changed")
        if changed:
            return Outcome(self.pipeline, "mutated", "input model changed", "; ".join(changed))
        return outcome

    def refused(self, error: fprune.PruneError) -> Outcome:
        return self.check(Outcome(self.pipeline, "refused", reason_of(str(error)), str(error)))


def run_groups(case: FuzzCase, choose: Chooser, *, masks_from: str) -> Outcome:
    """The channel-group pipeline; `masks_from` is "group_masks" or "random". At times the
    traced GraphModule is pruned instead of the model (head counts are then rewritten in
    its graph)."""
    guard = _Guard(case, f"groups/{masks_from}")
    try:
        gm = guard.traced()
        groups = fprune.channel_groups(gm, example_inputs=(case.x,))
        model: nn.Module = gm if choose.chance(0.15) else case.model
        if masks_from == "group_masks":
            masks = fprune.group_masks(
                model,
                groups,
                choose.choice(LEVELS),
                ignore=() if choose.chance(0.25) else None,
                round_to=choose.choice([1, 2, 4, 8]),
                global_ranking=choose.chance(0.2),
            )
        else:
            masks = random_group_masks(model, groups, choose)
        pruned = fprune.apply_prune(model, masks, groups)
    except fprune.PruneError as error:
        return guard.refused(error)
    outcome = guard.check(Outcome(guard.pipeline, "exact"))
    if outcome.status != "exact":
        return outcome
    if choose.chance(0.5):  # the plan of the pruning replays it, bit for bit (before a forward runs on the copy)
        problem = _plan_problem(model, masks, groups, pruned, case.x)
        if problem is not None:
            return guard.check(Outcome(guard.pipeline, "mismatch", "plan replay", problem))
    return guard.check(_compare(case, guard.pipeline, model, pruned, masks, groups, True))


def run_export(case: FuzzCase, choose: Chooser) -> Outcome:
    """The channel-group pipeline on ``channel_groups`` of the exported model: masks from
    ``group_masks`` or random, as the other group pipelines choose them, applied to the model."""
    guard = _Guard(case, "groups/export")
    try:
        program = torch.export.export(case.model, (case.x,), strict=False)
    except Exception as error:  # noqa: BLE001 - whatever export raises, the case is refused
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return guard.check(Outcome(guard.pipeline, "refused", f"torch.export failed: {type(error).__name__}: {reason_of(first)}", str(error)))
    try:
        groups = fprune.channel_groups(program)
        if choose.chance(0.5):
            masks = fprune.group_masks(
                case.model, groups, choose.choice(LEVELS), round_to=choose.choice([1, 2, 4]), global_ranking=choose.chance(0.2)
            )
        else:
            masks = random_group_masks(case.model, groups, choose)
        pruned = fprune.apply_prune(case.model, masks, groups)
    except fprune.PruneError as error:
        return guard.refused(error)
    outcome = guard.check(Outcome(guard.pipeline, "exact"))
    if outcome.status != "exact":
        return outcome
    if choose.chance(0.5):  # the plan of the pruning replays it, bit for bit (before a forward runs on the copy)
        problem = _plan_problem(case.model, masks, groups, pruned, case.x)
        if problem is not None:
            return guard.check(Outcome(guard.pipeline, "mismatch", "plan replay", problem))
    return guard.check(_compare(case, guard.pipeline, case.model, pruned, masks, groups, True))


def run_patterns(case: FuzzCase, choose: Chooser) -> Outcome:
    """The pattern pipeline: match_patterns, masks per match, apply_prune with prune_bias
    (True, False, or per weight); at times on the traced GraphModule."""
    guard = _Guard(case, "patterns")
    prune_bias: bool | dict[str, bool] = True
    try:
        gm = guard.traced()
        matches = fprune.match_patterns(gm, fprune.default_patterns())
        model: nn.Module = gm if choose.chance(0.15) else case.model
        masks = pattern_masks(model, matches, choose)
        prune_bias = choose.chance(0.5)
        if choose.chance(0.15):
            prune_bias = {fqn: choose.chance(0.5) for fqn in masks}
        pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    except fprune.PruneError as error:
        return guard.refused(error)
    outcome = guard.check(Outcome(guard.pipeline, "exact"))
    if outcome.status != "exact":
        return outcome
    return guard.check(_compare(case, guard.pipeline, model, pruned, masks, matches, prune_bias))


def run_pipeline(pipeline: str, case: FuzzCase, choose: Chooser) -> Outcome:
    """One of `PIPELINES` on `case`, masks chosen by `choose`."""
    if pipeline == "patterns":
        return run_patterns(case, choose)
    if pipeline == "groups/export":
        return run_export(case, choose)
    return run_groups(case, choose, masks_from=pipeline.partition("/")[2])
