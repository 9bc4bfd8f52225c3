"""Pure keep-mask criteria: scores per row, then a selection of the rows kept.

Every function here leaves its arguments unchanged and returns new tensors on the input's device.
A keep-mask is a 1-D ``torch.bool`` tensor over dim 0 of a weight: ``True`` = the row is kept.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
from torch import Tensor

from ._errors import PruneError
from ._util.norms import lp_rows

Rounding = Literal["floor", "round"]


def _check_weight(weight: Tensor, what: str) -> None:
    if not isinstance(weight, Tensor):
        raise PruneError(f"{what}: expected a torch.Tensor weight, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise PruneError(
            f"{what}: structured pruning needs a weight with at least 2 dims (rows x ...), "
            f"got shape {tuple(weight.shape)}; 1-D tensors such as biases are pruned with "
            "their layer's weight"
        )
    if weight.shape[0] == 0:
        raise PruneError(f"{what}: the weight has no rows (shape {tuple(weight.shape)})")
    if weight.device.type == "meta":
        raise PruneError(
            f"{what}: the weight is on the meta device and has no values to score; compute masks from "
            "the real weights, or write keep-masks yourself (CPU torch.bool tensors) to prune a meta model"
        )


def _as_float(weight: Tensor) -> Tensor:
    """`weight` detached, in at least float32 precision (scores of half tensors are unstable)."""
    w = weight.detach()
    if w.dtype in (torch.float16, torch.bfloat16) or not w.is_floating_point():
        w = w.to(torch.float32)
    return w


def row_norms(weight: Tensor, *, p: float = 1.0) -> Tensor:
    """Lp norm of each row of `weight` over all its other dims: shape ``[weight.shape[0]]``.

    The saliency score of torch.ao's ``SaliencyPruner`` (p=1). `weight` is left unchanged.
    Raises PruneError if `weight` has fewer than 2 dims.
    """
    _check_weight(weight, "row_norms")
    w = _as_float(weight)
    return lp_rows(w.reshape(w.shape[0], -1), p)


def fpgm_scores(weight: Tensor, *, p: float = 2.0) -> Tensor:
    """Geometric-median score of each row: the summed Lp distance to all other rows.

    Rows with the smallest score are closest to the geometric median, hence the most
    replaceable (FPGM, torch.ao's ``FPGMPruner``). Shape ``[weight.shape[0]]``; `weight`
    is left unchanged. Raises PruneError if `weight` has fewer than 2 dims.
    """
    _check_weight(weight, "fpgm_scores")
    rows = _as_float(weight).reshape(weight.shape[0], -1)
    return torch.cdist(rows, rows, p=p).abs().sum(dim=1)


def lstm_unit_scores(weight: Tensor, *, p: float = 1.0) -> Tensor:
    """Score of each hidden unit of a packed LSTM weight ``[4 * hidden, ...]``: shape ``[hidden]``.

    A unit's score sums the Lp row norms of its four gate rows (input, forget, cell, output),
    so that a unit is kept or removed in all gates at once. `weight` is left unchanged.
    Raises PruneError if dim 0 is not a multiple of 4.
    """
    return _lstm_unit_scores(weight, p, "lstm_unit_scores")


def _lstm_unit_scores(weight: Tensor, p: float, what: str) -> Tensor:
    """:func:`lstm_unit_scores`, its refusals named after `what` (the public function)."""
    _check_weight(weight, what)
    if weight.shape[0] % 4 != 0:
        raise PruneError(
            f"{what}: a packed LSTM weight has 4 * hidden_size rows, got "
            f"{weight.shape[0]} rows (shape {tuple(weight.shape)})"
        )
    return row_norms(weight, p=p).reshape(4, -1).sum(dim=0)


def _count_removed(rows: int, level: float, rounding: Rounding, what: str) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise PruneError(f"{what}: `level` must be a float in [0, 1), got {level!r}")
    if math.isnan(level) or not 0.0 <= level < 1.0:
        raise PruneError(
            f"{what}: `level` must be in [0, 1) (the fraction of rows removed), got {level!r}"
        )
    removed = int(rows * level) if rounding == "floor" else round(rows * level)
    if removed >= rows:
        raise PruneError(
            f"{what}: level {level} would remove all {rows} rows; use a smaller level "
            "(a layer needs at least one row kept)"
        )
    return removed


def select_kept(scores: Tensor, level: float, *, rounding: Rounding = "floor") -> Tensor:
    """Keep-mask for `scores`: removes the ``int(len * level)`` rows with the smallest score.

    With ``rounding="round"`` the count is ``round(len * level)`` (torch.ao's FPGM rule).
    Ties are broken by position: among equal scores, the lower index is removed first, so the
    result is deterministic. Returns a bool tensor of the same length, on `scores`' device.
    Raises PruneError if `level` is not in [0, 1), would remove every row, or if `scores`
    is not 1-D or contains NaN.
    """
    return _select_kept(scores, level, rounding, "select_kept")


def _select_kept(scores: Tensor, level: float, rounding: Rounding, what: str) -> Tensor:
    """:func:`select_kept`, its refusals named after `what` (the public function)."""
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise PruneError(f"{what}: `scores` must be a 1-D tensor, got {shape}")
    if rounding not in ("floor", "round"):
        raise PruneError(f"{what}: `rounding` must be 'floor' or 'round', got {rounding!r}")
    rows = scores.shape[0]
    removed = _count_removed(rows, level, rounding, what)
    if bool(torch.isnan(scores).any()):
        raise PruneError(
            f"{what}: scores contain NaN (does the weight hold NaN or inf values?); "
            "fix the weight or compute scores that are finite"
        )
    keep = torch.ones(rows, dtype=torch.bool, device=scores.device)
    if removed:
        order = torch.sort(scores.detach(), stable=True).indices
        keep[order[:removed]] = False
    return keep


def saliency_mask(weight: Tensor, level: float, *, p: float = 1.0) -> Tensor:
    """Keep-mask over dim 0 of `weight`: True for rows kept.

    Removes ``int(rows * level)`` rows with the smallest Lp norm (torch.ao's ``SaliencyPruner``
    rule). `weight` is left unchanged. Raises PruneError if `level` is not in [0, 1) or
    `weight` has fewer than 2 dims.
    """
    _check_weight(weight, "saliency_mask")
    _count_removed(weight.shape[0], level, "floor", "saliency_mask")
    return _select_kept(row_norms(weight, p=p), level, "floor", "saliency_mask")


def fpgm_mask(weight: Tensor, level: float, *, p: float = 2.0) -> Tensor:
    """Keep-mask over dim 0 of `weight` by Filter Pruning via Geometric Median.

    Removes ``round(rows * level)`` rows with the smallest :func:`fpgm_scores`, the same
    selection as torch.ao's ``FPGMPruner``. `weight` is left unchanged. Raises PruneError
    if `level` is not in [0, 1), would remove every row, or `weight` has fewer than 2 dims.
    """
    _check_weight(weight, "fpgm_mask")
    _count_removed(weight.shape[0], level, "round", "fpgm_mask")
    return _select_kept(fpgm_scores(weight, p=p), level, "round", "fpgm_mask")


def lstm_saliency_mask(weight: Tensor, level: float, *, p: float = 1.0) -> Tensor:
    """Gate-aware keep-mask over dim 0 of a packed LSTM weight ``[4 * hidden, ...]``.

    Removes ``int(hidden * level)`` hidden units with the smallest :func:`lstm_unit_scores`
    and returns the unit mask repeated for the 4 gates (shape ``[4 * hidden]``): every gate
    is pruned equally and on the same units, which is what a physically smaller LSTM needs.
    (torch.ao's ``LSTMSaliencyPruner`` prunes the same count per gate but picks each gate's
    rows separately.) `weight` is left unchanged.
    """
    scores = _lstm_unit_scores(weight, p, "lstm_saliency_mask")
    return _select_kept(scores, level, "floor", "lstm_saliency_mask").repeat(4)

class Criterion(Protocol):
    """How ``group_scores`` / ``group_masks`` score a slice of a weight: takes a 2-D tensor
    ``[entries, features]`` (one row per channel position), returns ``[entries]`` scores; higher
    means more important. :func:`l2_norm` (the default) and :func:`l1_norm` are criteria, and so
    is any function of one tensor such as ``lambda rows: rows.abs().amax(1)``."""

    def __call__(self, rows: Tensor, /) -> Tensor: ...


def l2_norm(rows: Tensor) -> Tensor:
    """The L2 norm of each row (the default criterion)."""
    out: Tensor = torch.linalg.vector_norm(rows, ord=2, dim=1)
    return out


def l1_norm(rows: Tensor) -> Tensor:
    """The L1 norm of each row."""
    return lp_rows(rows, 1)
