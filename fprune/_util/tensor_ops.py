"""What pruning does to one tensor, as data: the ops of a plan (``fprune.plan``), and the one
function that runs them. ``apply_prune`` computes the same values with the same torch ops in
the same order, so a plan replayed on the original weights gives the pruned copy's tensors bit
for bit (``make_plan`` checks that it does).

Each op takes the tensor as the ops before it left it; :class:`Fold` and :class:`Compensate`
also read other tensors of the original model (a consumer's weight), by FQN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from .gather import take


@dataclass(frozen=True)
class Take:
    """Keep only these indices: ``kept`` is ``(dim, sorted indices)`` per dim that loses some."""

    kept: tuple[tuple[int, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Fold:
    """``x + (value * W.index_select(dim, removed).sum(over every dim but rows)).to(x.dtype)``:
    a constant `value` that removed channels hold where layer `weight` reads them (dim `dim`),
    added to its bias (`rows`: the weight's output dim)."""

    weight: str
    dim: int
    removed: tuple[int, ...]
    value: float
    rows: int


@dataclass(frozen=True)
class MeanTerm:
    """One layer's part of a :class:`Compensate`: its `weight` reads the `removed` channels
    (along `dim`), whose mean inputs are `means` (float64, one per removed channel)."""

    weight: str
    dim: int
    removed: tuple[int, ...]
    means: tuple[float, ...]
    rows: int


@dataclass(frozen=True)
class Compensate:
    """Bias compensation: the terms' ``sum of W[removed] * means`` over every dim but the
    rows, summed in float64 in order, added to ``x`` in float64 and cast back; with
    `replace`, ``x`` (a new bias of zeros) is replaced by the sum cast to its dtype."""

    terms: tuple[MeanTerm, ...]
    replace: bool


@dataclass(frozen=True)
class Scale:
    """``x * factor``, or with an `offset`, ``(x + offset) * factor - offset`` (a norm that
    multiplies by ``offset + weight``)."""

    factor: float
    offset: float | None = None


@dataclass(frozen=True)
class Full:
    """Every entry set to `value` (a scalar buffer such as Gemma's ``embed_scale``)."""

    value: float


@dataclass(frozen=True)
class Zeros:
    """A new tensor of zeros of `shape`, with the dtype and device of the model's tensor
    `like` (the layer's weight): the start of a tensor pruning adds (a bias)."""

    shape: tuple[int, ...]
    like: str


TensorOp = Union[Take, Fold, Compensate, Scale, Full, Zeros]
"""One step of what pruning does to a tensor."""

Lookup = Callable[[str], Tensor]
"""The original model's tensor of an FQN (a consumer weight that a fold reads)."""


def _index(values: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _fold(x: Tensor, op: Fold, tensor: Lookup) -> Tensor:
    weight = tensor(op.weight).detach()
    columns = weight.index_select(op.dim, _index(op.removed, weight.device))
    total = columns.sum(dim=tuple(d for d in range(columns.dim()) if d != op.rows))
    return x + (op.value * total).to(x.dtype)


def _term(term: MeanTerm, tensor: Lookup) -> Tensor:
    weight = tensor(term.weight).detach()
    at = _index(term.removed, weight.device)
    columns = weight.index_select(term.dim, at).to(torch.float64)
    shape = [1] * columns.dim()
    shape[term.dim] = -1
    means = torch.tensor(term.means, dtype=torch.float64, device=weight.device)
    product = columns * means.reshape(shape)
    return product.sum(dim=tuple(d for d in range(product.dim()) if d != term.rows))


def _compensate(x: Tensor, op: Compensate, tensor: Lookup) -> Tensor:
    total = _term(op.terms[0], tensor)
    for term in op.terms[1:]:
        total = total + _term(term, tensor)
    if op.replace:
        return total.to(x.dtype)
    return (x.to(torch.float64) + total.to(x.device)).to(x.dtype)


def scaled(x: Tensor, factor: float, offset: float | None) -> Tensor:
    """``x * factor``, or ``(x + offset) * factor - offset``."""
    return x * factor if offset is None else (x + offset) * factor - offset


def run_ops(x: Tensor | None, ops: Sequence[TensorOp], tensor: Lookup) -> Tensor:
    """The tensor `ops` make of `x` (None for a tensor they create: the first op is then a
    :class:`Zeros`). `x` and the tensors `tensor` returns are not changed."""
    with torch.no_grad():
        for op in ops:
            if isinstance(op, Zeros):
                like = tensor(op.like)
                x = torch.zeros(op.shape, dtype=like.dtype, device=like.device)
                continue
            assert x is not None, "a created tensor starts with Zeros"
            if isinstance(op, Take):
                x = take(x.detach(), {dim: _index(kept, x.device) for dim, kept in op.kept})
            elif isinstance(op, Fold):
                x = _fold(x.detach(), op, tensor)
            elif isinstance(op, Compensate):
                x = _compensate(x.detach(), op, tensor)
            elif isinstance(op, Scale):
                x = scaled(x.detach(), op.factor, op.offset)
            else:
                x = torch.full_like(x, op.value)
    assert x is not None
    return x.detach()


def output_shape(shape: tuple[int, ...], ops: Sequence[TensorOp]) -> tuple[int, ...]:
    """The shape `ops` give a tensor of `shape` (without computing it)."""
    for op in ops:
        if isinstance(op, Zeros):
            shape = op.shape
        elif isinstance(op, Take):
            sizes = list(shape)
            for dim, kept in op.kept:
                sizes[dim] = len(kept)
            shape = tuple(sizes)
    return shape


def reads(ops: Sequence[TensorOp]) -> tuple[str, ...]:
    """The FQNs of other tensors `ops` read (fold and compensation weights, a Zeros' `like`)."""
    names: list[str] = []
    for op in ops:
        if isinstance(op, (Fold, Zeros)):
            names.append(op.weight if isinstance(op, Fold) else op.like)
        elif isinstance(op, Compensate):
            names.extend(term.weight for term in op.terms)
    return tuple(dict.fromkeys(names))
