"""The slice norms behind scoring: blocked, read-once, and equal to torch's vector_norm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fprune._util.norms import BLOCK, dim_norms, lp_rows, row_column_norms


def _reference(t: Tensor, dim: int, p: int) -> Tensor:
    norms: Tensor = torch.linalg.vector_norm(t.double().movedim(dim, 0).reshape(t.shape[dim], -1), ord=p, dim=1)
    return norms


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    p=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_row_column_norms_equal_the_norms_of_each_dim(shape: list[int], p: int, dtype: torch.dtype, seed: int) -> None:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    before = t.clone()
    rows, columns = row_column_norms(t, p, {})
    assert rows.dtype == columns.dtype == torch.float32
    for dim, norms in ((0, rows), (1, columns)):
        torch.testing.assert_close(norms.double(), _reference(t, dim, p), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dim_norms(t, dim, p, {}).double(), _reference(t, dim, p), rtol=1e-5, atol=1e-5)
    assert torch.equal(t, before)


@pytest.mark.parametrize("shape", [(3, BLOCK // 2 + 5), (BLOCK // 64 + 3, 64), (2, 2 * BLOCK + 1)])
def test_blocks_cover_every_row_when_a_tensor_spans_several(shape: tuple[int, int]) -> None:
    """Blocks of whole rows, a row wider than a block, and a last partial block."""
    t = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    torch.testing.assert_close(lp_rows(t, 1), t.abs().sum(dim=1))
    rows, columns = row_column_norms(t, 2, {})
    torch.testing.assert_close(rows.double(), t.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(columns.double(), t.norm(dim=0), rtol=1e-5, atol=1e-6)


def test_lp_rows_keeps_dtype_and_handles_other_orders() -> None:
    t = torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=torch.float64)
    assert lp_rows(t, 1).tolist() == [7.0, 0.0] and lp_rows(t, 1).dtype == torch.float64
    assert lp_rows(t, 2).tolist() == [5.0, 0.0]
    assert lp_rows(t, float("inf")).tolist() == [4.0, 0.0]
    assert lp_rows(torch.empty(0, 3), 1).shape == (0,)
