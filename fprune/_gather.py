"""Gathering a tensor's kept rows and columns at once."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["take_rows_columns"]


def take_rows_columns(t: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``t[rows][:, columns]`` (int64 indices) as one new contiguous tensor, gathered in one
    indexing op: the (rows x columns) index is broadcast, never built, and no copy of the
    kept rows alone is made, so the only memory used is the result's."""
    rows, columns = rows.to(t.device), columns.to(t.device)
    return t[rows.unsqueeze(1), columns].contiguous()
