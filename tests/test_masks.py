"""Tests of fprune._masks: pure keep-mask criteria (scores per row, then the rows kept).

Covers golden values (the torch.ao peer-suite examples), differential agreement with the
installed torch.ao pruners, hypothesis properties over shapes/dtypes/levels, and every
PruneError path.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Any, Callable, Literal, cast

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import fprune
from fprune import PruneError, fpgm_mask, fpgm_scores, lstm_saliency_mask, lstm_unit_scores, row_norms, saliency_mask, select_kept

# torch.ao is untyped: keep it behind `Any` so that mypy --strict stays clean.
ao_pruner: Any = importlib.import_module("torch.ao.pruning._experimental.pruner")

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _bits(t: Tensor) -> Tensor:
    """The raw bytes of `t` (bit-for-bit comparison, -0.0 and NaN payloads included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


def _assert_unchanged(before: Tensor, after: Tensor) -> None:
    assert after.dtype == before.dtype
    assert after.shape == before.shape
    assert after.device == before.device
    assert torch.equal(_bits(after), _bits(before))


def _expected_keep(scores: Tensor, removed: int) -> list[bool]:
    """Reference selection: remove the `removed` rows smallest by (score, index)."""
    values = [float(v) for v in scores.tolist()]
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    keep = [True] * len(values)
    for i in order[:removed]:
        keep[i] = False
    return keep


def _assert_selection_properties(keep: Tensor, scores: Tensor, removed: int) -> None:
    """Properties every keep-mask must have, given the scores it was selected from."""
    n = scores.shape[0]
    assert keep.dtype == torch.bool
    assert keep.shape == (n,)
    assert keep.device == scores.device
    assert int((~keep).sum()) == removed
    s = scores.detach().to(torch.float64).cpu()
    k = keep.cpu()
    if bool(k.any()) and bool((~k).any()):
        # removed rows never score above a kept row
        assert float(s[~k].max()) <= float(s[k].min())
    # ties broken by index: among equal scores, a kept row never precedes a removed one
    equal = s[:, None] == s[None, :]
    i_before_j = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)
    bad = equal & i_before_j & k[:, None] & ~k[None, :]
    assert not bool(bad.any())
    # ... which, together with the count, pins the mask down completely
    assert k.tolist() == _expected_keep(s, removed)


@st.composite
def weights(
    draw: st.DrawFn,
    min_dims: int = 2,
    max_dims: int = 4,
    max_rows: int = 64,
    dtypes: list[torch.dtype] | None = None,
) -> Tensor:
    """Random weights: 2-D..4-D, 1..64 rows, any float dtype; sometimes with many ties."""
    ndim = draw(st.integers(min_dims, max_dims))
    rows = draw(st.integers(1, max_rows))
    rest = [draw(st.integers(1, 4)) for _ in range(ndim - 1)]
    dtype = draw(st.sampled_from(dtypes if dtypes is not None else FLOAT_DTYPES))
    kind = draw(st.sampled_from(["randn", "small_ints", "constant", "row_constant"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = [rows, *rest]
    if kind == "randn":
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
    elif kind == "small_ints":
        w = torch.randint(-2, 3, shape, generator=gen).to(torch.float64)
    elif kind == "constant":
        w = torch.full(shape, draw(st.sampled_from([0.0, 1.0, -0.5])), dtype=torch.float64)
    else:  # every row constant, values from a tiny set: plenty of exact score ties
        vals = torch.randint(-2, 3, (rows,), generator=gen).to(torch.float64)
        w = vals.reshape(rows, *([1] * (ndim - 1))).expand(shape).clone()
    return w.to(dtype)


levels = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


# --------------------------------------------------------------------------------------------
# golden values
# --------------------------------------------------------------------------------------------


def _rows_1234() -> Tensor:
    return torch.arange(1.0, 5.0).reshape(4, 1).expand(4, 4).clone()


def test_saliency_golden_rows_1_to_4() -> None:
    w = _rows_1234()
    keep = saliency_mask(w, 0.5)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, True, True]
    assert torch.equal(w[keep], torch.tensor([[3.0] * 4, [4.0] * 4]))


def test_saliency_golden_via_linear_module() -> None:
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(_rows_1234())
    keep = saliency_mask(lin.weight, 0.5)
    assert torch.equal(lin.weight.detach()[keep], torch.tensor([[3.0] * 4, [4.0] * 4]))
    assert not keep.requires_grad


def test_saliency_uses_l1_of_absolute_values() -> None:
    w = torch.tensor([[-5.0, 0.0], [1.0, 1.0], [-1.0, 3.0]])  # L1: 5, 2, 4
    assert saliency_mask(w, 0.34).tolist() == [True, False, True]  # int(1.02) = 1
    assert saliency_mask(w, 0.67).tolist() == [True, False, False]  # int(2.01) = 2


def test_row_norms_golden() -> None:
    w = torch.tensor([[[3.0, -4.0]], [[0.0, 0.0]], [[1.0, 1.0]]])
    assert torch.allclose(row_norms(w), torch.tensor([7.0, 0.0, 2.0]))
    assert torch.allclose(row_norms(w, p=2), torch.tensor([5.0, 0.0, math.sqrt(2.0)]))


def test_saliency_p2_ranks_differently_from_p1() -> None:
    # row 0: L1 = 3, L2 = 3; row 1: L1 = 4, L2 = 2
    w = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert saliency_mask(w, 0.5).tolist() == [False, True]
    assert saliency_mask(w, 0.5, p=1).tolist() == [False, True]
    assert saliency_mask(w, 0.5, p=2).tolist() == [True, False]


def _fpgm_filters() -> Tensor:
    return torch.tensor([3.0, 2.0, 0.1]).reshape(3, 1, 1, 1) * torch.ones(3, 1, 3, 3)


def test_fpgm_scores_golden() -> None:
    scores = fpgm_scores(_fpgm_filters())
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, torch.tensor([11.7, 8.7, 14.4]), rtol=1e-5, atol=1e-4)


def test_fpgm_scores_golden_p1() -> None:
    # 9 elements per filter: L1 distances are 9x the value gaps
    scores = fpgm_scores(_fpgm_filters(), p=1)
    torch.testing.assert_close(scores, torch.tensor([35.1, 26.1, 43.2]), rtol=1e-5, atol=1e-4)


def test_fpgm_mask_golden_removes_the_median_filter() -> None:
    w = _fpgm_filters()
    assert fpgm_mask(w, 0.3).tolist() == [True, False, True]  # round(0.9) = 1
    assert fpgm_mask(w, 0.1).tolist() == [True, True, True]  # round(0.3) = 0
    assert fpgm_mask(w, 0.5).tolist() == [False, False, True]  # round(1.5) = 2
    assert saliency_mask(w, 0.3).tolist() == [True, True, True]  # int(0.9) = 0


def test_fpgm_uses_python_bankers_rounding() -> None:
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert int((~fpgm_mask(w, 0.625)).sum()) == 2  # round(2.5) == 2
    assert int((~fpgm_mask(w, 0.375)).sum()) == 2  # round(1.5) == 2
    with pytest.raises(PruneError, match="would remove all 4 rows"):
        fpgm_mask(w, 0.875)  # round(3.5) == 4
    assert int((~fpgm_mask(torch.ones(1, 2), 0.5)).sum()) == 0  # round(0.5) == 0


def _lstm_weight(values: list[list[float]], in_features: int = 3) -> Tensor:
    """Packed [4 * hidden, in] weight; gate g, unit u row = values[g][u] * ones(in)."""
    v = torch.tensor(values)
    return v.reshape(-1, 1).expand(v.numel(), in_features).clone()


LSTM_VALUES = [
    [1.0, 5.0, 2.0, 9.0],  # input gate
    [1.0, 5.0, 2.0, 9.0],  # forget gate
    [8.0, 0.5, 2.0, 9.0],  # cell gate: alone, it would prune units 1 and 2
    [1.0, 5.0, 2.0, 9.0],  # output gate
]


def test_lstm_unit_scores_sum_the_four_gates() -> None:
    w = _lstm_weight(LSTM_VALUES)
    scores = lstm_unit_scores(w)
    # unit sums 11, 15.5, 8, 36; each row has 3 equal entries
    torch.testing.assert_close(scores, torch.tensor([33.0, 46.5, 24.0, 108.0]))
    # the same, computed gate by gate from row norms
    hidden = 4
    norms = row_norms(w)
    by_hand = torch.zeros(hidden)
    for u in range(hidden):
        for g in range(4):
            by_hand[u] += norms[g * hidden + u]
    torch.testing.assert_close(scores, by_hand)


def test_lstm_unit_scores_p2_and_random_weight() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4 * 5, 7, generator=gen)
    for p in (1.0, 2.0):
        expected = torch.zeros(5)
        for g in range(4):
            for u in range(5):
                expected[u] += torch.linalg.vector_norm(w[g * 5 + u], ord=p)
        torch.testing.assert_close(lstm_unit_scores(w, p=p), expected)


def test_lstm_saliency_mask_golden_same_units_in_all_gates() -> None:
    w = _lstm_weight(LSTM_VALUES)
    keep = lstm_saliency_mask(w, 0.5)  # int(4 * 0.5) = 2 units: 2 (24) and 0 (33)
    unit = [False, True, False, True]
    assert keep.dtype == torch.bool
    assert keep.tolist() == unit * 4
    # int(hidden * level) units, not int(4 * hidden * level) rows
    assert lstm_saliency_mask(w, 0.3).tolist() == [True, True, False, True] * 4  # int(1.2) = 1
    assert lstm_saliency_mask(w, 0.2).tolist() == [True] * 16  # int(0.8) = 0


def test_lstm_saliency_mask_ties_remove_lower_unit_first() -> None:
    w = torch.ones(4 * 6, 2)
    assert lstm_saliency_mask(w, 0.5).tolist() == ([False] * 3 + [True] * 3) * 4


def test_all_equal_rows_remove_the_first_half() -> None:
    for rows in (2, 4, 7, 10, 64):
        w = torch.ones(rows, 3)
        removed = int(rows * 0.5)
        expected = [False] * removed + [True] * (rows - removed)
        assert saliency_mask(w, 0.5).tolist() == expected
        assert select_kept(torch.zeros(rows), 0.5).tolist() == expected
        fpgm_removed = round(rows * 0.5)
        assert fpgm_mask(w, 0.5).tolist() == [False] * fpgm_removed + [True] * (
            rows - fpgm_removed
        )


def test_select_kept_golden() -> None:
    scores = torch.tensor([0.5, -1.0, 3.0, 0.5, 2.0])
    assert select_kept(scores, 0.0).tolist() == [True] * 5
    assert select_kept(scores, 0.2).tolist() == [True, False, True, True, True]
    assert select_kept(scores, 0.4).tolist() == [False, False, True, True, True]
    assert select_kept(scores, 0.6).tolist() == [False, False, True, False, True]
    assert select_kept(scores, 0.5).tolist() == [False, False, True, True, True]  # int(2.5)
    assert select_kept(scores, 0.5, rounding="round").tolist() == [False, False, True, True, True]
    assert select_kept(scores, 0.65, rounding="round").tolist() == [False, False, True, False, True]  # round(3.25)


def test_select_kept_handles_infinities_and_signed_zero() -> None:
    scores = torch.tensor([math.inf, 0.0, -math.inf, -0.0, 1.0])
    # -0.0 == 0.0: a tie, so the lower index (1) goes first
    assert select_kept(scores, 0.4).tolist() == [True, False, False, True, True]
    assert select_kept(scores, 0.6).tolist() == [True, False, False, False, True]
    assert select_kept(scores, 0.8).tolist() == [True, False, False, False, False]


def test_select_kept_integer_scores() -> None:
    assert select_kept(torch.tensor([3, 1, 2]), 0.5).tolist() == [True, False, True]


def test_level_zero_keeps_everything() -> None:
    w = torch.randn(5, 3)
    for keep in (
        saliency_mask(w, 0.0),
        fpgm_mask(w, 0.0),
        saliency_mask(w, 0),
        select_kept(torch.randn(5), -0.0),
    ):
        assert keep.tolist() == [True] * 5
    assert lstm_saliency_mask(torch.randn(8, 3), 0.0).tolist() == [True] * 8


def test_integer_weight_is_scored_in_float() -> None:
    w = torch.tensor([[1, 1], [-3, 0], [0, 0]])
    torch.testing.assert_close(row_norms(w), torch.tensor([2.0, 3.0, 0.0]))
    assert saliency_mask(w, 0.5).tolist() == [True, True, False]
    assert fpgm_scores(w).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_are_scored_in_float32(dtype: torch.dtype) -> None:
    # |row| sums overflow float16 (max 65504) but not float32
    w = torch.full((3, 8), 60000.0).to(dtype)
    w[1] = 0.5
    norms = row_norms(w)
    assert norms.dtype == torch.float32
    assert bool(torch.isfinite(norms).all())
    assert saliency_mask(w, 0.34).tolist() == [True, False, True]
    assert fpgm_scores(w).dtype == torch.float32
    assert bool(torch.isfinite(fpgm_scores(w)).all())


def test_float64_scores_stay_float64() -> None:
    w = torch.randn(4, 3, dtype=torch.float64)
    assert row_norms(w).dtype == torch.float64
    assert fpgm_scores(w).dtype == torch.float64


def test_parameter_with_grad_is_not_tracked_or_changed() -> None:
    conv = nn.Conv2d(3, 6, 3)
    before = conv.weight.detach().clone()
    for keep in (saliency_mask(conv.weight, 0.5), fpgm_mask(conv.weight, 0.5)):
        assert not keep.requires_grad
        assert keep.grad_fn is None
    assert not fpgm_scores(conv.weight).requires_grad
    assert not row_norms(conv.weight).requires_grad
    assert conv.weight.grad is None
    _assert_unchanged(before, conv.weight.detach())


def test_non_contiguous_weight_gives_the_same_mask() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 10, 3, generator=gen)
    w = base.transpose(1, 2)  # (6, 3, 10), non-contiguous
    assert not w.is_contiguous()
    c = w.contiguous()
    assert torch.equal(saliency_mask(w, 0.5), saliency_mask(c, 0.5))
    assert torch.equal(fpgm_mask(w, 0.5), fpgm_mask(c, 0.5))
    torch.testing.assert_close(fpgm_scores(w), fpgm_scores(c))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_results_stay_on_cuda() -> None:
    w = torch.randn(8, 4, 3, device="cuda")
    for keep in (saliency_mask(w, 0.5), fpgm_mask(w, 0.5), lstm_saliency_mask(w, 0.5)):
        assert keep.device == w.device
        assert keep.dtype == torch.bool
    assert row_norms(w).device == w.device
    assert fpgm_scores(w).device == w.device
    assert select_kept(torch.randn(5, device="cuda"), 0.5).device.type == "cuda"
    assert torch.equal(saliency_mask(w, 0.5).cpu(), saliency_mask(w.cpu(), 0.5))


def test_public_api_exports() -> None:
    for name in (
        "fpgm_mask",
        "fpgm_scores",
        "lstm_saliency_mask",
        "lstm_unit_scores",
        "row_norms",
        "saliency_mask",
        "select_kept",
        "PruneError",
    ):
        assert hasattr(fprune, name)


# --------------------------------------------------------------------------------------------
# agreement with torch.ao
# --------------------------------------------------------------------------------------------


def _ao_mask(pruner: Any, layer: nn.Module, weight: Tensor) -> Tensor:
    with torch.no_grad():
        cast(Tensor, layer.weight).copy_(weight)
    model: Any = nn.Sequential(layer)
    pruner.prepare(model, None)
    pruner.step()
    mask: Tensor = model[0].parametrizations.weight[0].mask
    return mask.detach().clone()


def _layer_for(shape: tuple[int, ...]) -> nn.Module:
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0])
    return nn.Conv2d(shape[1], shape[0], (shape[2], shape[3]))


def _boundary_is_clear(scores: Tensor, removed: int) -> bool:
    """No near-tie between the last removed and the first kept score (float noise safe)."""
    if removed == 0 or removed >= scores.shape[0]:
        return True
    s = torch.sort(scores.to(torch.float64)).values
    gap = float(s[removed] - s[removed - 1])
    return gap > 1e-4 * max(1.0, abs(float(s[removed])))


@st.composite
def ao_weights(draw: st.DrawFn) -> Tensor:
    conv = draw(st.booleans())
    rows = draw(st.integers(1, 32))
    shape: tuple[int, ...]
    if conv:
        shape = (rows, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        shape = (rows, draw(st.integers(1, 16)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn(shape, generator=gen)


@FAST
@given(w=ao_weights(), level=levels)
def test_saliency_mask_matches_torch_ao(w: Tensor, level: float) -> None:
    removed = int(w.shape[0] * level)
    assume(removed < w.shape[0])
    assume(_boundary_is_clear(row_norms(w), removed))
    expected = _ao_mask(
        ao_pruner.SaliencyPruner({"sparsity_level": level}), _layer_for(tuple(w.shape)), w
    )
    assert torch.equal(saliency_mask(w, level), expected)


@FAST
@given(w=ao_weights(), level=levels)
def test_fpgm_mask_matches_torch_ao(w: Tensor, level: float) -> None:
    removed = round(w.shape[0] * level)
    assume(removed < w.shape[0])
    assume(_boundary_is_clear(fpgm_scores(w), removed))
    expected = _ao_mask(
        ao_pruner.FPGMPruner(sparsity_level=level), _layer_for(tuple(w.shape)), w
    )
    assert torch.equal(fpgm_mask(w, level), expected)


@pytest.mark.parametrize("dist", [1, 2])
def test_fpgm_scores_match_torch_ao_distance(dist: int) -> None:
    w = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(dist))
    expected: Tensor = ao_pruner.FPGMPruner(dist=dist)._compute_distance(w)
    torch.testing.assert_close(fpgm_scores(w, p=float(dist)), expected)


def test_fpgm_golden_matches_torch_ao() -> None:
    w = _fpgm_filters()
    expected = _ao_mask(ao_pruner.FPGMPruner(sparsity_level=0.3), nn.Conv2d(1, 3, 3), w)
    assert expected.tolist() == [True, False, True]
    assert torch.equal(fpgm_mask(w, 0.3), expected)


def test_saliency_golden_matches_torch_ao() -> None:
    w = _rows_1234()
    expected = _ao_mask(ao_pruner.SaliencyPruner({"sparsity_level": 0.5}), nn.Linear(4, 4), w)
    assert torch.equal(saliency_mask(w, 0.5), expected)


def test_lstm_prunes_the_same_count_per_gate_as_torch_ao() -> None:
    # torch.ao's LSTMSaliencyPruner removes int(hidden * level) rows per gate, picked per gate;
    # fprune removes the same count per gate but on the same units in every gate.
    gen = torch.Generator().manual_seed(7)
    hidden = 6
    lstm = nn.LSTM(3, hidden)
    with torch.no_grad():
        cast(Tensor, lstm.weight_ih_l0).copy_(torch.randn(4 * hidden, 3, generator=gen))
    model: Any = nn.Sequential(lstm)
    pruner = ao_pruner.LSTMSaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(model, [{"tensor_fqn": "0.weight_ih_l0"}])
    pruner.step()
    ao_mask: Tensor = model[0].parametrizations.weight_ih_l0[0].mask
    w = model[0].parametrizations.weight_ih_l0.original.detach()
    ours = lstm_saliency_mask(w, 0.5)
    for g in range(4):
        gate = slice(g * hidden, (g + 1) * hidden)
        assert int((~ao_mask[gate]).sum()) == int((~ours[gate]).sum()) == 3
        assert torch.equal(ours[gate], ours[:hidden])


# --------------------------------------------------------------------------------------------
# hypothesis properties
# --------------------------------------------------------------------------------------------


@FAST
@given(w=weights(), level=levels, p=st.sampled_from([1.0, 2.0]))
def test_saliency_mask_properties(w: Tensor, level: float, p: float) -> None:
    rows = w.shape[0]
    before = w.clone()
    removed = int(rows * level)
    keep = saliency_mask(w, level, p=p)
    _assert_unchanged(before, w)
    assert keep.device == w.device
    _assert_selection_properties(keep, row_norms(w, p=p), removed)
    assert torch.equal(keep, saliency_mask(w, level, p=p))
    _assert_unchanged(before, w)


@FAST
@given(w=weights(), level=levels)
def test_fpgm_mask_properties(w: Tensor, level: float) -> None:
    rows = w.shape[0]
    before = w.clone()
    removed = round(rows * level)
    if removed >= rows:
        with pytest.raises(PruneError, match=f"would remove all {rows} rows"):
            fpgm_mask(w, level)
        _assert_unchanged(before, w)
        return
    keep = fpgm_mask(w, level)
    _assert_unchanged(before, w)
    assert keep.device == w.device
    _assert_selection_properties(keep, fpgm_scores(w), removed)
    assert torch.equal(keep, fpgm_mask(w, level))
    _assert_unchanged(before, w)


@FAST
@given(w=weights(), p=st.sampled_from([1.0, 2.0]))
def test_score_properties(w: Tensor, p: float) -> None:
    rows = w.shape[0]
    before = w.clone()
    norms = row_norms(w, p=p)
    dists = fpgm_scores(w, p=p)
    _assert_unchanged(before, w)
    for s in (norms, dists):
        assert s.shape == (rows,)
        assert s.device == w.device
        assert s.dtype == (torch.float64 if w.dtype == torch.float64 else torch.float32)
        assert bool((s >= 0).all())
        assert not s.requires_grad
    flat = w.to(torch.float64).reshape(rows, -1)
    torch.testing.assert_close(
        norms.to(torch.float64), torch.linalg.vector_norm(flat, ord=p, dim=1), rtol=1e-5, atol=1e-5
    )
    if rows == 1:
        assert float(dists[0]) == 0.0


@FAST
@given(w=weights(max_rows=16).map(lambda t: t.repeat(4, *([1] * (t.dim() - 1)))), level=levels)
def test_lstm_saliency_mask_properties(w: Tensor, level: float) -> None:
    hidden = w.shape[0] // 4
    before = w.clone()
    keep = lstm_saliency_mask(w, level)
    _assert_unchanged(before, w)
    assert keep.dtype == torch.bool
    assert keep.shape == (4 * hidden,)
    assert keep.device == w.device
    unit = keep[:hidden]
    for g in range(4):
        assert torch.equal(keep[g * hidden : (g + 1) * hidden], unit)
    scores = lstm_unit_scores(w)
    assert scores.shape == (hidden,)
    _assert_selection_properties(unit, scores, int(hidden * level))
    assert torch.equal(keep, lstm_saliency_mask(w, level))


@st.composite
def score_vectors(draw: st.DrawFn) -> Tensor:
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    width: Literal[16, 32, 64] = (
        64 if dtype == torch.float64 else 16 if dtype == torch.float16 else 32
    )
    n = draw(st.integers(1, 64))
    if draw(st.booleans()):
        values = draw(st.lists(st.sampled_from([-1.0, 0.0, -0.0, 1.0, 2.5]), min_size=n, max_size=n))
    else:
        values = draw(
            st.lists(st.floats(allow_nan=False, width=width), min_size=n, max_size=n)
        )
    return torch.tensor(values, dtype=dtype)


@FAST
@given(scores=score_vectors(), level=levels, rounding=st.sampled_from(["floor", "round"]))
def test_select_kept_properties(scores: Tensor, level: float, rounding: str) -> None:
    n = scores.shape[0]
    before = scores.clone()
    removed = int(n * level) if rounding == "floor" else round(n * level)
    mode = cast(Any, rounding)
    if removed >= n:
        with pytest.raises(PruneError, match=f"would remove all {n} rows"):
            select_kept(scores, level, rounding=mode)
        return
    keep = select_kept(scores, level, rounding=mode)
    _assert_unchanged(before, scores)
    _assert_selection_properties(keep, scores, removed)
    assert torch.equal(keep, select_kept(scores, level, rounding=mode))


@FAST
@given(n=st.integers(1, 64), level=levels)
def test_select_kept_default_is_floor(n: int, level: float) -> None:
    scores = torch.arange(n, dtype=torch.float32).flip(0)
    keep = select_kept(scores, level)
    assert int((~keep).sum()) == int(n * level)
    assert torch.equal(keep, select_kept(scores, level, rounding="floor"))


@FAST
@given(w=weights(max_rows=16), level=levels)
def test_saliency_equals_select_kept_of_row_norms(w: Tensor, level: float) -> None:
    assert torch.equal(saliency_mask(w, level), select_kept(row_norms(w), level))
    if round(w.shape[0] * level) < w.shape[0]:
        assert torch.equal(
            fpgm_mask(w, level), select_kept(fpgm_scores(w), level, rounding="round")
        )


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_prune_error_is_a_value_error() -> None:
    assert issubclass(PruneError, ValueError)
    assert fprune.PruneError is PruneError
    with pytest.raises(ValueError):
        saliency_mask(torch.ones(3), 0.5)


def _call_select_kept(level: Any) -> Tensor:
    return select_kept(torch.arange(4.0), level)


def _call_saliency(level: Any) -> Tensor:
    return saliency_mask(torch.randn(4, 3), level)


def _call_fpgm(level: Any) -> Tensor:
    return fpgm_mask(torch.randn(4, 3), level)


def _call_lstm(level: Any) -> Tensor:
    return lstm_saliency_mask(torch.randn(8, 3), level)


LEVEL_CALLERS = {
    "select_kept": _call_select_kept,
    "saliency_mask": _call_saliency,
    "fpgm_mask": _call_fpgm,
    "lstm_saliency_mask": _call_lstm,
}

# the name each caller's message starts with: its own
LEVEL_ERROR_PREFIX = {name: name for name in LEVEL_CALLERS}


@pytest.mark.parametrize("fn", list(LEVEL_CALLERS))
@pytest.mark.parametrize(
    ("level", "message"),
    [
        (math.nan, r"`level` must be in \[0, 1\) \(the fraction of rows removed\), got nan"),
        (-0.1, r"`level` must be in \[0, 1\) .*got -0\.1"),
        (-1e-300, r"`level` must be in \[0, 1\) .*got -1e-300"),
        (1.0, r"`level` must be in \[0, 1\) .*got 1\.0"),
        (1.5, r"`level` must be in \[0, 1\) .*got 1\.5"),
        (math.inf, r"`level` must be in \[0, 1\) .*got inf"),
        (1, r"`level` must be in \[0, 1\) .*got 1$"),
        (True, r"`level` must be a float in \[0, 1\), got True"),
        (False, r"`level` must be a float in \[0, 1\), got False"),
        ("0.5", r"`level` must be a float in \[0, 1\), got '0\.5'"),
        (None, r"`level` must be a float in \[0, 1\), got None"),
        (torch.tensor(0.5), r"`level` must be a float in \[0, 1\), got tensor"),
    ],
    ids=["nan", "negative", "tiny-negative", "one", "above-one", "inf", "int-one", "True",
         "False", "str", "None", "tensor"],
)
def test_bad_level_raises(fn: str, level: Any, message: str) -> None:
    with pytest.raises(PruneError, match=f"^{LEVEL_ERROR_PREFIX[fn]}: {message}"):
        LEVEL_CALLERS[fn](level)


WEIGHT_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "row_norms": row_norms,
    "fpgm_scores": fpgm_scores,
    "lstm_unit_scores": lstm_unit_scores,
    "saliency_mask": lambda w: saliency_mask(w, 0.5),
    "fpgm_mask": lambda w: fpgm_mask(w, 0.5),
    "lstm_saliency_mask": lambda w: lstm_saliency_mask(w, 0.5),
}

# the name each function's message starts with: its own
WEIGHT_ERROR_PREFIX = {name: name for name in WEIGHT_FUNCTIONS}


@pytest.mark.parametrize("fn", list(WEIGHT_FUNCTIONS))
@pytest.mark.parametrize("weight", [torch.tensor(1.0), torch.ones(8)], ids=["0-dim", "1-dim"])
def test_weight_with_fewer_than_two_dims_raises(fn: str, weight: Tensor) -> None:
    shape = re.escape(str(tuple(weight.shape)))
    with pytest.raises(
        PruneError,
        match=f"^{WEIGHT_ERROR_PREFIX[fn]}: structured pruning needs a weight with at least 2 "
        rf"dims \(rows x \.\.\.\), got shape {shape}",
    ):
        WEIGHT_FUNCTIONS[fn](weight)


@pytest.mark.parametrize("fn", list(WEIGHT_FUNCTIONS))
def test_weight_without_rows_raises(fn: str) -> None:
    with pytest.raises(
        PruneError, match=rf"^{WEIGHT_ERROR_PREFIX[fn]}: the weight has no rows \(shape \(0, 3\)\)"
    ):
        WEIGHT_FUNCTIONS[fn](torch.ones(0, 3))


@pytest.mark.parametrize("fn", list(WEIGHT_FUNCTIONS))
def test_non_tensor_weight_raises(fn: str) -> None:
    with pytest.raises(
        PruneError, match=rf"^{WEIGHT_ERROR_PREFIX[fn]}: expected a torch.Tensor weight, got list"
    ):
        WEIGHT_FUNCTIONS[fn](cast(Any, [[1.0, 2.0], [3.0, 4.0]]))


NAN_MESSAGE = r": scores contain NaN \(does the weight hold NaN or inf values\?\)"


def test_select_kept_nan_scores_raise() -> None:
    scores = torch.tensor([1.0, math.nan, 2.0])
    with pytest.raises(PruneError, match="^select_kept" + NAN_MESSAGE):
        select_kept(scores, 0.0)
    with pytest.raises(PruneError, match="^select_kept" + NAN_MESSAGE):
        select_kept(scores, 0.5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_saliency_mask_nan_weight_raises(dtype: torch.dtype) -> None:
    w = torch.randn(4, 3).to(dtype)
    w[2, 1] = math.nan
    before = w.clone()
    with pytest.raises(PruneError, match="^saliency_mask" + NAN_MESSAGE):
        saliency_mask(w, 0.5)
    with pytest.raises(PruneError, match="^fpgm_mask" + NAN_MESSAGE):
        fpgm_mask(w, 0.5)
    with pytest.raises(PruneError, match="^lstm_saliency_mask" + NAN_MESSAGE):
        lstm_saliency_mask(w, 0.5)
    _assert_unchanged(before, w)


def test_fpgm_mask_inf_weight_raises() -> None:
    w = torch.ones(3, 2)
    w[0, 0] = math.inf
    with pytest.raises(PruneError, match="^fpgm_mask" + NAN_MESSAGE):
        fpgm_mask(w, 0.4)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 9, 13])
def test_lstm_rows_not_a_multiple_of_four_raise(rows: int) -> None:
    w = torch.ones(rows, 3)
    message = (
        rf": a packed LSTM weight has 4 \* hidden_size rows, got {rows} rows "
        rf"\(shape \({rows}, 3\)\)"
    )
    with pytest.raises(PruneError, match="^lstm_unit_scores" + message):
        lstm_unit_scores(w)
    with pytest.raises(PruneError, match="^lstm_saliency_mask" + message):
        lstm_saliency_mask(w, 0.5)


@pytest.mark.parametrize(
    ("scores", "shown"),
    [
        (torch.ones(2, 3), r"\(2, 3\)"),
        (torch.ones(4, 1), r"\(4, 1\)"),
        (torch.tensor(1.0), r"\(\)"),
        (cast(Any, [1.0, 2.0]), "list"),
        (cast(Any, None), "NoneType"),
    ],
    ids=["2-D", "column", "0-dim", "list", "None"],
)
def test_select_kept_non_1d_scores_raise(scores: Tensor, shown: str) -> None:
    with pytest.raises(
        PruneError, match=rf"^select_kept: `scores` must be a 1-D tensor, got {shown}$"
    ):
        select_kept(scores, 0.5)


@pytest.mark.parametrize("rounding", ["ceil", "FLOOR", "", None, 1])
def test_select_kept_bad_rounding_raises(rounding: Any) -> None:
    with pytest.raises(
        PruneError,
        match=rf"^select_kept: `rounding` must be 'floor' or 'round', got {re.escape(repr(rounding))}$",
    ):
        select_kept(torch.arange(4.0), 0.5, rounding=rounding)


def test_select_kept_empty_scores_raise() -> None:
    with pytest.raises(PruneError, match=r"^select_kept: level 0\.0 would remove all 0 rows"):
        select_kept(torch.ones(0), 0.0)


@pytest.mark.parametrize(
    ("rows", "level"),
    [
        (1, 0.6),  # round(0.6) == 1
        (2, 0.75),  # round(1.5) == 2
        (10, 0.96),  # round(9.6) == 10
    ],
)
def test_fpgm_level_removing_every_row_raises(rows: int, level: float) -> None:
    w = torch.randn(rows, 3)
    with pytest.raises(
        PruneError,
        match=rf"^fpgm_mask: level {level} would remove all {rows} rows; use a smaller level",
    ):
        fpgm_mask(w, level)


def test_select_kept_round_removing_every_row_raises() -> None:
    with pytest.raises(PruneError, match=r"^select_kept: level 0\.9 would remove all 3 rows"):
        select_kept(torch.arange(3.0), 0.9, rounding="round")  # round(2.7) == 3


def test_floor_never_removes_every_row_below_one() -> None:
    below_one = math.nextafter(1.0, 0.0)
    for rows in (1, 2, 3, 4, 5, 64, 1000):
        keep = saliency_mask(torch.randn(rows, 1), below_one)
        assert int(keep.sum()) >= 1
        assert int((~keep).sum()) == int(rows * below_one)
