"""Gathering the kept slices of a tensor: one new tensor, in one indexing op, in the layout
of the original (a channels_last conv weight stays channels_last)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def _memory_order(t: Tensor) -> list[int]:
    """`t`'s dims from outermost to innermost in memory: ``(0, 2, 3, 1)`` for a channels_last
    4-D tensor, ``(0, 2, 3, 4, 1)`` for channels_last_3d, else ``0, 1, ...`` (a tensor in any
    other layout is gathered into the default contiguous one)."""
    if not t.is_contiguous():
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
            return [0, 2, 3, 1]
        if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
            return [0, 2, 3, 4, 1]
    return list(range(t.dim()))


def take(t: Tensor, index: Mapping[int, Tensor]) -> Tensor:
    """`t` restricted to `index` (int64 indices per dim) as one new tensor in `t`'s memory
    format, gathered in one indexing op. In memory order, `t` is seen as rows (its outermost
    dim) of a middle part (the dims up to the last one cut, whose kept entries are listed
    once, flat) and an inner part kept whole; so no intermediate such as the kept rows with
    all their columns is made, and the only memory used is the result's. `t` is unchanged."""
    order = _memory_order(t)
    view = t.permute(order)  # contiguous: dims in memory order
    at = {order.index(dim): i.to(t.device) for dim, i in index.items()}
    last = max(at)
    if last == 0:
        out = torch.index_select(view, 0, at[0])
    else:
        flat = torch.zeros((), dtype=torch.long, device=t.device)  # flat position in the middle part
        stride = 1
        for position in range(last, 0, -1):
            values = at.get(position)
            values = torch.arange(view.shape[position], device=t.device) if values is None else values
            flat = flat.unsqueeze(0) + (values * stride).view((-1,) + (1,) * flat.dim())
            stride *= view.shape[position]
        parts = view.reshape(view.shape[0], stride, -1)  # [rows, middle, inner]
        flat = flat.reshape(-1)
        out = parts[at[0].unsqueeze(1), flat] if 0 in at else torch.index_select(parts, 1, flat)
        out = out.view([at[p].numel() if p in at else view.shape[p] for p in range(view.dim())])
    if order != sorted(order):
        out = out.permute([order.index(dim) for dim in range(t.dim())])
    return out if out._base is None else out.detach()  # a tensor of its own, not a view of a temporary


def take_rows_columns(t: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``t[rows][:, columns]`` as one new tensor (see :func:`take`)."""
    return take(t, {0: rows, 1: columns})
