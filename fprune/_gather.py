"""Gathering a tensor's kept rows and columns at once, through a reused work buffer."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Scratch", "buffer", "take_rows_columns"]

Scratch = dict[tuple[torch.dtype, torch.device], Tensor]
"""Reused work buffers, one per dtype and device, for one call that touches many tensors."""

BLOCK = 1 << 18  # elements gathered at a time: the work buffer stays small and in cache


def buffer(scratch: Scratch, size: int, like: Tensor) -> Tensor:
    """A flat buffer of at least `size` elements of `like`'s dtype and device, from `scratch`."""
    key = (like.dtype, like.device)
    found = scratch.get(key)
    if found is None or found.numel() < size:
        found = scratch[key] = torch.empty(size, dtype=like.dtype, device=like.device)
    return found


def take_rows_columns(t: Tensor, rows: Tensor, columns: Tensor, scratch: Scratch) -> Tensor:
    """``t[rows][:, columns]`` (int64 indices) as one new contiguous tensor, gathered block by
    block through `scratch`: no copy of the rows alone is ever made whole, and no fresh
    temporary per block (each would cost page faults)."""
    rows, columns = rows.to(t.device), columns.to(t.device)
    out = torch.empty((rows.numel(), columns.numel()) + tuple(t.shape[2:]), dtype=t.dtype, device=t.device)
    row_size = max(1, t[0].numel())
    step = max(1, min(rows.numel(), BLOCK // row_size))
    work = buffer(scratch, max(BLOCK, step * row_size), t)
    for start in range(0, rows.numel(), step):
        taken = rows[start : start + step]
        part = work[: taken.numel() * row_size].view((taken.numel(),) + tuple(t.shape[1:]))
        torch.index_select(t, 0, taken, out=part)
        torch.index_select(part, 1, columns, out=out[start : start + step])
    return out
