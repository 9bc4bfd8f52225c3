"""The default pattern dict: every torch.ao structured-pruning pattern, plus BatchNorm,
dropout, method-form activations and output variants as tuples, plus open-ended chains
(producer, a :class:`ZeroOrMore` run of pass-through ops, consumer or output) for any run
:func:`prune_chain` prunes exactly."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._ops import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES
from ._functions import (
    prune_chain,
    prune_conv2d,
    prune_conv2d_activation_conv2d,
    prune_conv2d_activation_pool_conv2d,
    prune_conv2d_conv2d,
    prune_conv2d_pool_activation_conv2d,
    prune_conv2d_pool_flatten_linear,
    prune_linear,
    prune_linear_activation_linear,
    prune_linear_linear,
)
from ._lstm import prune_lstm_output_layernorm_linear, prune_lstm_output_linear
from ._records import Pattern, PatternElement, PruneFunction, ZeroOrMore


class PatternDict(dict[Pattern, PruneFunction]):
    """A plain ``dict`` of patterns that counts its changes, so that ``match_patterns`` can
    use the shared index of the default table while a copy of it is unmodified.

    ``match_patterns`` only reads it: no index or cache is ever stored on the dict.
    """

    version: int = 0  # changes made through the dict's methods
    origin: PatternDict | None = None  # the default table this one was copied from (default_patterns)

    def _changed(self) -> None:
        self.version += 1

    def __setitem__(self, key: Pattern, value: PruneFunction) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Pattern) -> None:
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other: Mapping[Pattern, PruneFunction]) -> PatternDict:  # type: ignore[override, misc]
        super().__ior__(other)
        self._changed()
        return self

    def update(self, other: Mapping[Pattern, PruneFunction] = {}, /) -> None:  # type: ignore[override]  # noqa: B006
        super().update(other)
        self._changed()

    def setdefault(self, key: Pattern, default: PruneFunction, /) -> PruneFunction:
        value = super().setdefault(key, default)
        self._changed()
        return value

    def pop(self, key: Pattern, /) -> PruneFunction:  # type: ignore[override]
        value = super().pop(key)
        self._changed()
        return value

    def popitem(self) -> tuple[Pattern, PruneFunction]:
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()

_ACTIVATIONS = ACTIVATION_FUNCTIONS + ACTIVATION_MODULES + ACTIVATION_METHODS + (nn.Identity,)
_POOLS: tuple[PatternElement, ...] = (nn.AvgPool2d, F.avg_pool2d, nn.MaxPool2d, F.max_pool2d)
_ADAPTIVE_POOLS: tuple[PatternElement, ...] = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
)  # fmt: skip
_FLATTENS: tuple[PatternElement, ...] = (nn.Flatten, torch.flatten, "flatten")


Elements = tuple[PatternElement, ...]

# --- open-ended chains: the pass-through runs prune_chain prunes exactly ---------------------------
# Elementwise ops (any layout); dropout is the identity in eval mode (in train mode it is random
# in the masked model too). A producer's channels sit on dim 1 of a conv's output and on the last
# dim of a Linear's, so pools and BatchNormNd belong to the conv family of their rank only (on a
# Linear's output a pool would mix features), and a flatten only follows a conv (it keeps each
# channel's features consecutive there): after it, only elementwise ops until the Linear.
_ELEMENTWISE: Elements = (
    *ACTIVATION_FUNCTIONS, *ACTIVATION_MODULES, *ACTIVATION_METHODS,
    nn.Softshrink, nn.Threshold, F.softshrink, F.threshold, nn.Identity,
    nn.Dropout, nn.AlphaDropout, F.dropout, F.alpha_dropout,
)  # fmt: skip
_POOLS_1D: Elements = (
    nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d,
    F.max_pool1d, F.avg_pool1d, F.adaptive_max_pool1d, F.adaptive_avg_pool1d,
)  # fmt: skip
_POOLS_3D: Elements = (
    nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d,
    F.max_pool3d, F.avg_pool3d, F.adaptive_max_pool3d, F.adaptive_avg_pool3d,
)  # fmt: skip

PASS_THROUGH_LINEAR = ZeroOrMore(*_ELEMENTWISE, nn.BatchNorm1d, name="PASS_THROUGH_LINEAR")
"""Ops a Linear producer's channels (its last dim) pass through: elementwise activations in
module / function / method form (``ACTIVATION_*``, softshrink, threshold), per-channel PReLU,
``nn.Identity``, dropout and BatchNorm1d."""

PASS_THROUGH_1D = ZeroOrMore(
    *_ELEMENTWISE, *_POOLS_1D, nn.BatchNorm1d, nn.Dropout1d, F.dropout1d, name="PASS_THROUGH_1D"
)
"""Ops a Conv1d producer's channels pass through: as ``PASS_THROUGH_LINEAR`` plus max / avg /
adaptive 1d pools (module and function form) and ``Dropout1d``."""

PASS_THROUGH_2D = ZeroOrMore(
    *_ELEMENTWISE, *_POOLS, *_ADAPTIVE_POOLS, nn.BatchNorm2d, nn.Dropout2d, F.dropout2d, name="PASS_THROUGH_2D"
)
"""Ops a Conv2d producer's channels pass through: elementwise ops, max / avg / adaptive 2d
pools (module and function form), BatchNorm2d, dropout and ``Dropout2d``."""

PASS_THROUGH_3D = ZeroOrMore(
    *_ELEMENTWISE, *_POOLS_3D, nn.BatchNorm3d, nn.Dropout3d, F.dropout3d, name="PASS_THROUGH_3D"
)
"""Ops a Conv3d producer's channels pass through: as ``PASS_THROUGH_2D``, in 3d."""

PASS_THROUGH_FLAT = ZeroOrMore(*_ELEMENTWISE, name="PASS_THROUGH_FLAT")
"""Ops between a conv producer's flatten and the Linear consumer: elementwise ops and dropout."""

_RUNS: tuple[tuple[type[nn.Module], ZeroOrMore, type[nn.Module]], ...] = (
    (nn.Linear, PASS_THROUGH_LINEAR, nn.Linear),
    (nn.Conv1d, PASS_THROUGH_1D, nn.Conv1d),
    (nn.Conv2d, PASS_THROUGH_2D, nn.Conv2d),
    (nn.Conv3d, PASS_THROUGH_3D, nn.Conv3d),
)


def _run_patterns() -> Iterator[tuple[Pattern, PruneFunction]]:
    """Producer, any run of its pass-through ops, then a consumer of its kind or the output; a
    conv may also end in flatten, elementwise ops and a Linear (or the output)."""
    for producer, run, consumer in _RUNS:
        yield (producer, run, consumer), prune_chain
        yield (producer, run, "output"), prune_chain
        if producer is nn.Linear:
            continue
        for flatten in _FLATTENS:
            yield (producer, run, flatten, PASS_THROUGH_FLAT, nn.Linear), prune_chain
            yield (producer, run, flatten, PASS_THROUGH_FLAT, "output"), prune_chain


def _optional(*elements: PatternElement) -> Iterator[Elements]:
    yield ()
    for element in elements:
        yield (element,)


def _linear_patterns() -> Iterator[tuple[Pattern, PruneFunction]]:
    yield (nn.Linear, "output"), prune_linear
    yield (nn.Linear, nn.Linear), prune_linear_linear
    for act in _ACTIVATIONS:
        yield (nn.Linear, act, nn.Linear), prune_linear_activation_linear
    norm: Elements
    act_: Elements
    drop: Elements
    for norm in _optional(nn.BatchNorm1d):
        for act_ in _optional(*_ACTIVATIONS):
            for drop in _optional(nn.Dropout):
                middle = norm + act_ + drop
                if middle:
                    yield (nn.Linear, *middle, nn.Linear), prune_chain
                    yield (nn.Linear, *middle, "output"), prune_chain


def _conv_patterns() -> Iterator[tuple[Pattern, PruneFunction]]:
    yield (nn.Conv2d, "output"), prune_conv2d
    yield (nn.Conv2d, nn.Conv2d), prune_conv2d_conv2d
    for act in _ACTIVATIONS:
        yield (nn.Conv2d, act, nn.Conv2d), prune_conv2d_activation_conv2d
        for pool in _POOLS:
            yield (nn.Conv2d, act, pool, nn.Conv2d), prune_conv2d_activation_pool_conv2d
            yield (nn.Conv2d, pool, act, nn.Conv2d), prune_conv2d_pool_activation_conv2d
    for adaptive in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        for flatten in (nn.Flatten, torch.flatten):
            yield (nn.Conv2d, adaptive, flatten, nn.Linear), prune_conv2d_pool_flatten_linear
    cores: list[Elements] = [(), *((p,) for p in _POOLS)]
    for act in _ACTIVATIONS:
        cores += [(act,)] + [(act, p) for p in _POOLS] + [(p, act) for p in _POOLS]
    norm: Elements
    drop: Elements
    acts: Elements
    for norm in _optional(nn.BatchNorm2d):
        for core in cores:
            for drop in _optional(nn.Dropout, nn.Dropout2d):
                middle = norm + core + drop
                if middle:
                    yield (nn.Conv2d, *middle, nn.Conv2d), prune_chain
                    yield (nn.Conv2d, *middle, "output"), prune_chain
        for acts in _optional(*_ACTIVATIONS):
            for pool in _ADAPTIVE_POOLS:
                for flat in _FLATTENS:
                    for drop in _optional(nn.Dropout):
                        yield (nn.Conv2d, *norm, *acts, pool, flat, *drop, nn.Linear), prune_chain


def _lstm_patterns() -> Iterator[tuple[Pattern, PruneFunction]]:
    yield (nn.LSTM, operator.getitem, nn.Linear), prune_lstm_output_linear
    yield (nn.LSTM, operator.getitem, nn.LayerNorm, nn.Linear), prune_lstm_output_layernorm_linear


def default_patterns() -> PatternDict:
    """A fresh dict ``pattern -> prune function`` with every default pattern.

    Holds every key of torch.ao's ``_get_default_structured_pruning_patterns()`` mapped to the
    function of the same name, plus: BatchNorm2d/1d right after the producer, dropout before
    the consumer, ``nn.Identity`` wherever an activation may stand, ``torch.relu``/``torch.sigmoid``/``torch.tanh`` and the ``x.relu()`` /
    ``x.sigmoid()`` / ``x.tanh()`` method forms, functional adaptive pools, ``x.flatten(1)``,
    and ``"output"`` endings after any of those. The generated ones map to :func:`prune_chain`.

    It also holds open-ended chains, mapped to :func:`prune_chain`: a Linear / Conv1d / Conv2d /
    Conv3d producer, a :class:`ZeroOrMore` run of the ops it passes through
    (``PASS_THROUGH_LINEAR`` / ``_1D`` / ``_2D`` / ``_3D``), then a consumer of its kind or
    ``"output"``; a conv's run may end in a flatten, ``PASS_THROUGH_FLAT`` and a Linear. Where a
    tuple pattern matches the same nodes, the tuple wins (it is more specific).
    Each call returns a new dict (a :class:`PatternDict`, a ``dict`` subclass that lets
    ``match_patterns`` reuse its index until the dict changes): extend it freely.
    Note: ``F.sigmoid`` and ``F.tanh`` trace as the methods ``x.sigmoid()`` / ``x.tanh()``, so
    the ``"sigmoid"`` / ``"tanh"`` patterns are the ones that match them.
    """
    table = default_table()
    fresh = PatternDict(table)
    fresh.origin = table
    return fresh


def default_table() -> PatternDict:
    """The default patterns, built once on first use from data that never changes; never
    handed to users (``default_patterns()`` returns copies) and never modified."""
    if not _PRISTINE:
        patterns: dict[Pattern, PruneFunction] = {}
        for source in (_linear_patterns(), _conv_patterns(), _lstm_patterns(), _run_patterns()):
            for pattern, function in source:
                patterns.setdefault(pattern, function)
        _PRISTINE.append(PatternDict(patterns))
    return _PRISTINE[0]


_PRISTINE: list[PatternDict] = []  # the defaults, built once and never modified
