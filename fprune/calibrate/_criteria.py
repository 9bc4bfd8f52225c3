"""Calibration-aware criteria: per-channel scores of a channel group from the model's weights
and the :class:`~fprune.calibrate.Statistics` of a few batches. Each is a frozen record that
:func:`fprune.group_masks` (``criterion=``) and :func:`fprune.group_scores` accept.

For a group channel j read by consumer layers m (input column j of W_m, shape [out, in]):

- :func:`activation` (Minitron, Muralidharan et al. 2024, activation-based importance):
  ``sum_m rms(X_m[:, j])``, the root mean square of the channel's input over all positions;
- :func:`wanda_sp` (structured Wanda, as the FLAP paper's baseline; Sun et al. 2023):
  ``sum_m ||X_m[:, j]||_2 * sum_i |W_m[i, j]|``;
- :func:`flap` (FLAP, An et al. 2024, "weighted input feature variance"):
  ``sum_m var(X_m[:, j]) * ||W_m[:, j]||_2^2``, the fluctuation of the input times the column's
  squared norm; its removed channels' means are what bias compensation adds back
  (``apply_prune(..., compensate=statistics)``);
- :func:`taylor` (first-order Taylor, Molchanov et al. 2019; LLM-Pruner, Ma et al. 2023):
  ``|sum over batches, over every weight slice of channel j (producer rows, consumer columns,
  norm and bias entries) of w * dL/dw|``, the estimated change of the loss if the channel went
  (a tied weight's slices count once).

Conv consumers count each input channel over all its positions; a grouped conv's input (its
weight has fewer input columns than channels) and layers the statistics did not see add
nothing. A channel that no scored layer reads (the query and key channels of an attention
heads group, of which only the values reach ``o_proj``) gets the mean score of its unit's read
channels (else the group's), so it neither drags its unit down nor skews a global ranking. A group none of whose consumers was seen (a criterion with input statistics), or with
no first-order term (Taylor), is a PruneError that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._errors import PruneError
from ..groups._records import ChannelGroup, GroupCriterion
from ..groups._slices import channel_index, tensor_named
from ._statistics import Moments, Statistics


def _column_sums(weight: Tensor, dim: int, square: bool) -> Tensor:
    """Per index of `dim`: the sum of |w| (or w squared) over every other dim, in float64."""
    values = weight.detach().to(torch.float64)
    values = values * values if square else values.abs()
    other = [d for d in range(values.dim()) if d != dim]
    return values.sum(other) if other else values


_Term = Callable[[Tensor, int, Moments], Tensor]
"""(consumer weight, its input-channel dim, the moments of its input) -> a score per input channel."""


def _consumer_read(statistics: Statistics, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
    """The channels of `group` that some consumer with statistics reads."""
    read = torch.zeros(group.size, dtype=torch.bool)
    for member in group.members:
        moments = statistics.inputs.get(member.fqn) if member.role == "consumer" else None
        weight = tensors.get(member.fqn)
        if moments is not None and weight is not None and weight.dim() >= 2 and weight.shape[member.dim] == moments.total.shape[0]:
            read[channel_index(member.channels, torch.device("cpu"))] = True
    return read


def _consumer_scores(name: str, term: _Term, statistics: Statistics, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
    scores: Tensor | None = None
    for member in group.members:
        if member.role != "consumer":
            continue
        moments = statistics.inputs.get(member.fqn)
        weight = tensor_named(tensors, member.fqn)
        if moments is None or weight.dim() < 2 or weight.shape[member.dim] != moments.total.shape[0]:
            continue  # not seen, or a grouped conv whose columns are not its input channels
        per_input = term(weight, member.dim, moments).to(weight.device)
        positions = channel_index(member.positions, per_input.device)
        values = per_input[positions].to(torch.float32)
        if scores is None:
            scores = torch.zeros(group.size, dtype=torch.float32, device=per_input.device)
            covered = torch.zeros(group.size, dtype=torch.bool, device=per_input.device)
        channels = channel_index(member.channels, per_input.device)
        scores = scores.index_add(0, channels, values)
        covered[channels] = True
    if scores is not None and not bool(covered.all()):
        scores = _filled(scores, covered, group)
    if scores is None:
        raise PruneError(
            f"the {name} criterion has no input statistics for any layer reading the channels produced by "
            f"{', '.join(group.producers) or '(none)'} (a grouped conv's input is not scored); run collect_statistics "
            "on this model (with these groups) over batches that reach those layers, or leave the group out with `ignore`"
        )
    return scores


def _filled(scores: Tensor, covered: Tensor, group: ChannelGroup) -> Tensor:
    """`scores` with each channel no scored layer reads (the query / key channels of a heads
    group: only ``o_proj`` reads the values) given the mean score of the read channels of its
    unit, or of the group: neutral where units are ranked by their mean, and in a global ranking."""
    filled = scores.clone()
    whole = scores[covered].mean()
    in_unit = torch.zeros_like(covered)
    for unit in group.units:
        index = torch.tensor(unit, dtype=torch.long, device=scores.device)
        in_unit[index] = True
        seen = covered[index]
        filled[index[~seen]] = scores[index[seen]].mean() if bool(seen.any()) else whole
    filled[~covered & ~in_unit] = whole
    return filled


@dataclass(frozen=True)
class _Activation(GroupCriterion):
    statistics: Statistics
    name: ClassVar[str] = "activation"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        return _consumer_scores(self.name, lambda w, d, m: m.rms(), self.statistics, tensors, group)

    def read(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor | None:
        return _consumer_read(self.statistics, tensors, group)


@dataclass(frozen=True)
class _WandaSP(GroupCriterion):
    statistics: Statistics
    name: ClassVar[str] = "wanda_sp"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        return _consumer_scores(self.name, lambda w, d, m: m.norm() * _column_sums(w, d, False), self.statistics, tensors, group)

    def read(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor | None:
        return _consumer_read(self.statistics, tensors, group)


@dataclass(frozen=True)
class _Flap(GroupCriterion):
    statistics: Statistics
    name: ClassVar[str] = "flap"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        return _consumer_scores(self.name, lambda w, d, m: m.variance() * _column_sums(w, d, True), self.statistics, tensors, group)

    def read(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor | None:
        return _consumer_read(self.statistics, tensors, group)


@dataclass(frozen=True)
class _Taylor(GroupCriterion):
    statistics: Statistics
    name: ClassVar[str] = "taylor"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        total: Tensor | None = None
        counted: set[tuple[int | str, int]] = set()
        for member in group.members:
            term = self.statistics.first_order.get((member.fqn, member.dim))
            tensor = tensors.get(member.fqn)
            slices = (id(tensor) if tensor is not None else member.fqn, member.dim)
            if term is None or slices in counted:
                continue  # no term, or a tied weight's other name (its gradient covers every use)
            counted.add(slices)
            values = term[channel_index(member.positions, term.device)]
            if total is None:
                total = torch.zeros(group.size, dtype=torch.float64, device=term.device)
            total = total.index_add(0, channel_index(member.channels, term.device), values)
        if total is None:
            raise PruneError(
                f"the taylor criterion has no first-order terms for the channels produced by "
                f"{', '.join(group.producers) or '(none)'}; run collect_statistics with `loss=` (and these groups), "
                "or leave the group out with `ignore`"
            )
        return total.abs().to(torch.float32)


def activation(statistics: Statistics) -> GroupCriterion:
    """Activation magnitude: the RMS of each channel's input to the layers that read it."""
    return _Activation(statistics)


def wanda_sp(statistics: Statistics) -> GroupCriterion:
    """Structured Wanda: ``||X_j||_2`` times the L1 norm of weight column j, over the readers."""
    return _WandaSP(statistics)


def flap(statistics: Statistics) -> GroupCriterion:
    """FLAP's fluctuation: ``var(X_j)`` times the squared L2 norm of weight column j, over the readers."""
    return _Flap(statistics)


def taylor(statistics: Statistics) -> GroupCriterion:
    """First-order Taylor: ``|sum of w * dL/dw|`` over every slice of the channel (needs
    statistics collected with ``loss=``)."""
    return _Taylor(statistics)


CRITERIA: Mapping[str, Callable[[Statistics], GroupCriterion]] = {
    "activation": activation,
    "wanda_sp": wanda_sp,
    "flap": flap,
    "taylor": taylor,
}
"""The calibration criteria by name (what ``prune_channels(criterion="flap")`` takes)."""
