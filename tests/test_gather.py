"""take_rows_columns: the kept rows and columns of a tensor, in one gather."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fprune._gather import take_rows_columns


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    seed=st.integers(0, 2**16),
    transposed=st.booleans(),
)
def test_take_rows_columns_equals_two_index_selects(shape: list[int], seed: int, transposed: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=generator, dtype=torch.float64)
    if transposed:  # a non-contiguous input (a transposed view) gives the same result
        t = t.transpose(0, 1).contiguous().transpose(0, 1)
    rows = torch.randperm(shape[0], generator=generator)[: max(1, shape[0] // 2)].sort().values
    columns = torch.randperm(shape[1], generator=generator)[: max(1, shape[1] - 1)].sort().values
    before = t.clone()
    out = take_rows_columns(t, rows, columns)
    assert torch.equal(out, t.index_select(0, rows).index_select(1, columns))
    assert out.is_contiguous() and out.data_ptr() != t.data_ptr()
    assert torch.equal(t, before)


def test_take_rows_columns_keeps_dtype_and_unsorted_order() -> None:
    t = torch.arange(24, dtype=torch.int32).reshape(4, 3, 2)
    out = take_rows_columns(t, torch.tensor([3, 0]), torch.tensor([2, 1]))
    assert out.dtype == torch.int32 and out.shape == (2, 2, 2)
    assert out.tolist() == [[[22, 23], [20, 21]], [[4, 5], [2, 3]]]
