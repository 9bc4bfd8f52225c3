"""The built-in pruners of ``fprune.sparsifier``: torch.ao's three, each over a pure mask function.

Each ``update_mask`` scores the *masked* tensor (rows removed so far are zero) and ANDs the new
keep-mask into the existing one, so masks accumulate across steps as torch.ao's do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn

from .._errors import PruneError
from .._masks import (
    fpgm_mask,
    fpgm_scores,
    lstm_saliency_mask,
    saliency_mask,
    select_kept,
)
from ..patterns._records import Pattern, PruneFunction
from ._base import BaseStructuredSparsifier, masked_weight_and_mask, sparsity_level


class SaliencyPruner(BaseStructuredSparsifier):
    """Removes the rows with the smallest L1 norm: torch.ao's ``SaliencyPruner``.

    Each step removes ``int(rows * sparsity_level)`` rows of the masked tensor by
    :func:`fprune.saliency_mask` (ties: lower index first). Config key: ``sparsity_level`` in
    [0, 1), required (in the entry or the defaults).
    """

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        """Clear the mask entries of the lowest-norm rows; see the class docstring."""
        weight, mask = masked_weight_and_mask(module, tensor_name)
        mask &= saliency_mask(weight, sparsity_level(kwargs))


class LSTMSaliencyPruner(BaseStructuredSparsifier):
    """Removes LSTM hidden units with the smallest L1 norm, in all 4 gates at once.

    Each step removes ``int(hidden * sparsity_level)`` units of a packed ``weight_ih_l*`` /
    ``weight_hh_l*`` by :func:`fprune.lstm_saliency_mask`. torch.ao's ``LSTMSaliencyPruner``
    picks each gate's rows separately, so its gates can disagree on which units go, which no
    smaller LSTM can represent. A layer's ``weight_hh`` is masked with its ``weight_ih`` (and
    vice versa), so with the same level both pick the same units. Config key:
    ``sparsity_level`` in [0, 1), required.
    """

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        """Clear the 4 gate rows of the lowest-scoring hidden units; see the class docstring."""
        weight, mask = masked_weight_and_mask(module, tensor_name)
        mask &= lstm_saliency_mask(weight, sparsity_level(kwargs))


class FPGMPruner(BaseStructuredSparsifier):
    """Filter Pruning via Geometric Median: torch.ao's ``FPGMPruner``.

    Each step removes ``round(rows * sparsity_level)`` rows of the masked tensor whose summed
    distance to the other rows is smallest (:func:`fprune.fpgm_mask`).

    Args:
        sparsity_level: the default ``sparsity_level``, in [0, 1) (a config entry may override it).
            torch.ao resets the mask to all True at a level <= 0 and clears it at >= 1; here 0
            removes nothing more and a level outside [0, 1) raises PruneError at ``step``.
        dist: the distance between flattened rows: None or 2 (Euclidean), 1 (Manhattan), any
            other p > 0 (``torch.cdist``'s p), or a function from the ``(rows, features)``
            matrix to its ``(rows, rows)`` distance matrix.
        patterns: as for :class:`BaseStructuredSparsifier` (torch.ao's takes none).
    """

    def __init__(
        self,
        sparsity_level: float = 0.5,
        dist: float | Callable[[Tensor], Tensor] | None = None,
        *,
        patterns: Mapping[Pattern, PruneFunction] | None = None,
    ) -> None:
        if dist is None:
            dist = 2.0
        if not callable(dist) and (isinstance(dist, bool) or not isinstance(dist, (int, float)) or not dist > 0):
            raise PruneError(f"FPGMPruner: `dist` must be 1, 2, another p > 0, or a distance function; got {dist!r}")
        self.dist = dist
        super().__init__({"sparsity_level": sparsity_level}, patterns)

    def _compute_distance(self, t: Tensor) -> Tensor:
        """The FPGM score of each row of `t`: its summed distance to all rows, shape ``[rows]``.

        torch.ao's ``FPGMPruner._compute_distance``, with its signature and results: the rows
        flattened to ``(rows, features)``, the distance matrix by `dist` (``torch.cdist``
        with p = `dist`, or the given function), then ``sum(|matrix|, dim=1)``. A numeric
        `dist` is :func:`fprune.fpgm_scores`. `t` is left unchanged; raises PruneError if it
        has fewer than 2 dims.
        """
        if callable(self.dist):
            if not isinstance(t, Tensor) or t.dim() < 2:
                got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise PruneError(f"FPGMPruner._compute_distance: expects a weight with 2+ dims (rows first), got {got}")
            return self.dist(t.reshape(t.shape[0], -1)).abs().sum(dim=1)
        return fpgm_scores(t, p=float(self.dist))

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        """Clear the mask entries of the rows closest to the geometric median; see the class docstring."""
        weight, mask = masked_weight_and_mask(module, tensor_name)
        level = sparsity_level(kwargs)
        if callable(self.dist):
            mask &= select_kept(self._compute_distance(weight), level, rounding="round")
        else:
            mask &= fpgm_mask(weight, level, p=float(self.dist))
