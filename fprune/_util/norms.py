"""Lp norms of a tensor's slices along one dim, computed without copying the tensor.

Each tensor is read block by block through a reused work buffer (a fresh block-sized temporary
each time would cost page faults), and a weight whose rows and columns are both scored is read
once for both. torch's own ``vector_norm`` is used where it is fast (p = 2 over a contiguous
last dim); its p = 1 kernel accumulates without vectorisation and is about 4x slower than
``abs`` + ``sum``, so L1 norms are summed here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Scratch = dict[tuple[torch.dtype, torch.device], Tensor]
"""Reused work buffers, one per dtype and device, for one call that touches many tensors."""

BLOCK = 1 << 18  # elements per block (1 MiB of float32): the work buffer stays in cache


def buffer(scratch: Scratch, size: int, like: Tensor) -> Tensor:
    """A flat buffer of at least `size` elements of `like`'s dtype and device, from `scratch`."""
    key = (like.dtype, like.device)
    found = scratch.get(key)
    if found is None or found.numel() < size:
        found = scratch[key] = torch.empty(size, dtype=like.dtype, device=like.device)
    return found


def _power(block: Tensor, p: int, work: Tensor) -> Tensor:
    """``|block| ** p`` (p = 1 or 2) written into `work` (a flat buffer), in `block`'s shape."""
    out = work[: block.numel()].view(block.shape)
    if p == 1:
        torch.abs(block, out=out)
    else:
        torch.mul(block, block, out=out)
    return out


def _root(sums: Tensor, p: int) -> Tensor:
    return sums if p == 1 else sums.sqrt()


def lp_rows(rows: Tensor, p: float, scratch: Scratch | None = None) -> Tensor:
    """The Lp norm of each row of the 2-D tensor `rows` (shape ``[rows.shape[0]]``, its dtype).

    p = 1 sums absolute values block by block; any other p is torch's ``vector_norm``.
    `rows` is left unchanged.
    """
    if p != 1 or rows.numel() == 0 or not rows.is_floating_point() or rows.device.type == "meta":
        norms: Tensor = torch.linalg.vector_norm(rows, ord=p, dim=1)
        return norms
    count, width = rows.shape
    step = max(1, min(count, BLOCK // max(1, width)))
    work = buffer({} if scratch is None else scratch, step * width, rows)
    out = torch.empty(count, dtype=rows.dtype, device=rows.device)
    for start in range(0, count, step):
        torch.sum(_power(rows[start : start + step], 1, work), dim=1, out=out[start : start + step])
    return out


def row_column_norms(tensor: Tensor, p: int, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """The L`p` norms (p = 1 or 2) of the slices of `tensor` (2 or more dims) along dim 0 and
    along dim 1, in float32, from one read of the tensor: a weight that loses rows as a
    producer and columns as a consumer is scored for both at the cost of one."""
    rows, columns = tensor.shape[0], tensor.shape[1]
    flat = tensor.reshape(rows, columns, -1)
    inner = flat.shape[2]
    half = flat.dtype not in (torch.float32, torch.float64)  # accumulate float16 / bfloat16 in float32
    sums_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    row_sums = torch.empty(rows, dtype=sums_dtype, device=tensor.device)
    column_sums = torch.zeros(columns, dtype=sums_dtype, device=tensor.device)
    step = max(1, min(rows, BLOCK // max(1, columns * inner)))
    for start in range(0, rows, step):
        block = flat[start : start + step]
        block = block.float() if half else block
        powered = _power(block, p, buffer(scratch, block.numel(), block))
        per = powered.sum(dim=2) if inner > 1 else powered.view(powered.shape[:2])  # [block, columns]
        torch.sum(per, dim=1, out=row_sums[start : start + step])
        column_sums += per.sum(dim=0)
    return _root(row_sums, p).to(torch.float32), _root(column_sums, p).to(torch.float32)


def dim_norms(tensor: Tensor, dim: int, p: int, scratch: Scratch) -> Tensor:
    """The L`p` norm (p = 1 or 2) of each slice ``tensor.select(dim, i)``, in float32.

    Never copies the tensor: trailing dims are reduced first (contiguous), then leading dims
    block by block, so a weight's columns cost about what its rows do.
    """
    size = tensor.shape[dim]
    lead = math.prod(tensor.shape[:dim])
    flat = tensor.reshape(lead, size, -1)
    half = flat.dtype not in (torch.float32, torch.float64)  # accumulate float16 / bfloat16 in float32
    if lead == 1:
        rows = flat[0]
        return lp_rows(rows.float() if half else rows, p, scratch).to(torch.float32)
    total = torch.zeros(size, dtype=torch.float64 if flat.dtype == torch.float64 else torch.float32, device=tensor.device)
    inner = flat.shape[2]
    if inner > 1 and not half:  # reduce each kernel first (one contiguous pass), then the rows
        per: Tensor = torch.linalg.vector_norm(flat, ord=p, dim=2)
        summed = per.sum(dim=0) if p == 1 else (per * per).sum(dim=0).sqrt()
        return summed.to(torch.float32)
    if inner == 1:
        flat = flat.reshape(lead, size)  # 2-D blocks: torch sums these over dim 0 much faster
    step = max(1, BLOCK // max(1, size * inner))
    dims = (0, 2) if inner > 1 else (0,)
    for start in range(0, lead, step):
        block = flat[start : start + step]
        block = block.float() if half else block
        total += _power(block, p, buffer(scratch, block.numel(), block)).sum(dim=dims)
    return _root(total, p).to(torch.float32)
