"""The safety net's shape-only forward (fprune/_shape_mode.py).

Its fast rules must agree with torch's own meta kernels: same output shapes and dtypes where
they accept the inputs, and never accept inputs torch refuses (property tests over random,
often mismatched, shapes). A whole model run under ShapeOnly returns the shapes a real forward
returns and leaves the model untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.fx.immutable_collections import immutable_list

from fprune._util.shape_mode import _RULES, ShapeOnly, to_meta

from ..zoo import ZOO

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True)

dims = st.integers(1, 4)
dtypes = st.sampled_from(DTYPES)
float_dtypes = st.sampled_from(DTYPES[:4])


def _meta(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _leaves(value: object) -> list[object]:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _agree(func: Callable[..., object], *args: object, **kwargs: object) -> None:
    """The rule for `func` accepts only what torch's meta kernel accepts, with its result."""
    fast = _RULES[func](tuple(args), dict(kwargs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            real = func(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - torch refused: the rule must have too
        assert fast is NotImplemented, f"the rule accepted inputs torch refuses ({error})"
        return
    if fast is NotImplemented:
        return
    got, want = _leaves(fast), _leaves(real)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, Tensor):
            assert isinstance(g, Tensor) and g.is_meta
            assert (tuple(g.shape), g.dtype) == (tuple(w.shape), w.dtype), (func, args, kwargs)
        else:
            assert g is None and w is None


@SETTINGS
@given(st.lists(dims, max_size=4), st.lists(dims, max_size=4), dtypes, dtypes, st.booleans(), st.sampled_from(["add", "sub", "mul", "div"]), st.integers(0, 4))
def test_binary_rules_agree_with_torch(a: list[int], b: list[int], da: torch.dtype, db: torch.dtype, number: bool, name: str, form: int) -> None:
    x = _meta(tuple(a), da)
    y: object = 2.5 if number else _meta(tuple(b), db)
    T = torch.Tensor
    dunder = "__truediv__" if name == "div" else f"__{name}__"
    inplace = "__itruediv__" if name == "div" else f"__i{name}__"
    func = [getattr(torch, name), getattr(T, name), getattr(T, dunder), getattr(T, f"{name}_"), getattr(T, inplace)][form]
    _agree(func, x, y)
    if name in ("add", "sub") and form < 2:
        _agree(func, x, y, alpha=2)


@SETTINGS
@given(st.lists(dims, max_size=4), dtypes, st.integers(0, 19), st.booleans())
def test_unary_rules_agree_with_torch(shape: list[int], dtype: torch.dtype, which: int, inplace: bool) -> None:
    functions = [F.relu, torch.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.mish, F.elu,
                 F.selu, F.celu, F.leaky_relu, F.softplus, torch.sigmoid, torch.tanh, torch.rsqrt, torch.sqrt, torch.exp, F.dropout]  # fmt: skip
    func = functions[which]
    x = _meta(tuple(shape), dtype)
    if inplace and func in (F.relu, F.relu6, F.hardtanh, F.silu, F.hardswish, F.elu, F.leaky_relu, F.dropout):
        _agree(func, x, inplace=True)
    else:
        _agree(func, x)
    _agree(torch.Tensor.pow, x, 2)
    _agree(torch.Tensor.relu_, x)


@SETTINGS
@given(st.lists(dims, min_size=1, max_size=4), st.integers(1, 4), st.integers(1, 4), float_dtypes, float_dtypes, st.booleans(), st.integers(0, 4))
def test_linear_rule_agrees_with_torch(batch: list[int], width: int, out: int, dx: torch.dtype, dw: torch.dtype, bias: bool, bias_size: int) -> None:
    x = _meta((*batch[:-1], width), dx)
    weight = _meta((out, batch[-1]), dw)
    _agree(F.linear, x, weight, _meta((bias_size,), dw) if bias else None)
    _agree(F.linear, x, weight)


@SETTINGS
@given(
    st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.lists(st.integers(1, 9), min_size=3, max_size=3),
    st.lists(st.integers(1, 4), min_size=3, max_size=3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
    st.integers(1, 3), st.booleans(), st.integers(1, 3),
)  # fmt: skip
def test_conv_rules_agree_with_torch(
    n: int, channels: int, out: int, size: list[int], kernel: list[int], stride: int, padding: int, dilation: int, groups: int, bias: bool, per_group: int
) -> None:
    x = _meta((2, channels, *size[:n]))
    weight = _meta((out * groups, per_group, *kernel[:n]))
    func = {1: torch.conv1d, 2: torch.conv2d, 3: torch.conv3d}[n]
    _agree(func, x, weight, _meta((out * groups,)) if bias else None, stride, padding, dilation, groups)
    _agree(func, x, weight, None, (stride,) * n, (padding,) * n, (dilation,) * n, groups)


@SETTINGS
@given(st.lists(dims, min_size=1, max_size=4), st.integers(1, 4), st.booleans(), st.lists(st.booleans(), min_size=4, max_size=4), float_dtypes)
def test_batch_norm_rule_agrees_with_torch(shape: list[int], count: int, training: bool, present: list[bool], dtype: torch.dtype) -> None:
    x = _meta(tuple(shape), dtype)
    vectors = [_meta((count,), dtype) if p else None for p in present]
    _agree(F.batch_norm, x, vectors[0], vectors[1], weight=vectors[2], bias=vectors[3], training=training, momentum=0.1, eps=1e-5)


@SETTINGS
@given(st.lists(dims, min_size=1, max_size=4), st.lists(dims, min_size=1, max_size=2), st.booleans(), st.booleans())
def test_layer_norm_rule_agrees_with_torch(shape: list[int], normalized: list[int], weight: bool, bias: bool) -> None:
    x = _meta(tuple(shape))
    w = _meta(tuple(normalized)) if weight else None
    b = _meta(tuple(normalized)) if bias else None
    _agree(F.layer_norm, x, tuple(normalized), weight=w, bias=b, eps=1e-5)


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=12, max_size=12), st.booleans(), st.booleans())
def test_sdpa_rule_agrees_with_torch(sizes: list[int], gqa: bool, causal: bool) -> None:
    q = _meta(tuple(sizes[0:4]))
    k = _meta(tuple(sizes[4:8]))
    v = _meta(tuple(sizes[8:12]))
    _agree(F.scaled_dot_product_attention, q, k, v, is_causal=causal, enable_gqa=gqa)
    _agree(F.scaled_dot_product_attention, q, q, q)


@SETTINGS
@given(st.lists(dims, min_size=1, max_size=4), st.lists(st.integers(-5, 4), min_size=1, max_size=3), st.booleans())
def test_mean_rule_agrees_with_torch(shape: list[int], reduce: list[int], keepdim: bool) -> None:
    x = _meta(tuple(shape))
    _agree(torch.Tensor.mean, x, reduce[0], keepdim=keepdim)
    _agree(torch.mean, x, tuple(reduce), keepdim)


@SETTINGS
@given(st.integers(1, 3), st.lists(st.integers(0, 4), min_size=5, max_size=5), st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_adaptive_pool_rules_agree_with_torch(n: int, shape: list[int], size: list[int]) -> None:
    func = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[n]
    _agree(func, _meta(tuple(shape[: n + 2])), size[0])
    _agree(func, _meta(tuple(shape[: n + 1])), tuple(size[:n]))


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=3, max_size=3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans(), st.booleans(), st.booleans())
def test_multihead_attention_rule_agrees_with_torch(lengths: list[int], heads: int, head_dim: int, skew: int, bias: bool, need: bool, average: bool) -> None:
    tgt, src, batch = lengths
    embed = heads * head_dim
    query, key = _meta((tgt, batch, embed)), _meta((src, batch, embed + (skew == 1)))
    in_proj = _meta((3 * embed + (skew == 2), embed))
    _agree(
        F.multi_head_attention_forward, query, key, key, embed, heads, in_proj, _meta((3 * embed,)) if bias else None,
        None, None, False, 0.0, _meta((5, embed)), _meta((5,)) if bias else None,
        training=False, key_padding_mask=None, need_weights=need, attn_mask=None, average_attn_weights=average, is_causal=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("train", [False, True])
def test_zoo_models_run_on_shapes_alone_and_stay_untouched(name: str, train: bool) -> None:
    model, x = ZOO[name]()
    model.train(train)
    with torch.no_grad():
        want = model(x)  # in train mode this updates BatchNorm statistics: the state is read after it
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with ShapeOnly():
            got = model(to_meta(x))
    got_leaves, want_leaves = _leaves(got), _leaves(want)
    assert [tuple(g.shape) for g in got_leaves if isinstance(g, Tensor)] == [tuple(w.shape) for w in want_leaves if isinstance(w, Tensor)]
    assert all(g.is_meta for g in got_leaves if isinstance(g, Tensor))
    model.train(train)
    for key, value in model.state_dict().items():  # BatchNorm statistics and counters included
        assert torch.equal(value, before[key]), key


def test_real_tensors_reaching_an_op_are_never_written() -> None:
    counter = torch.zeros(3)
    scale = nn.Parameter(torch.ones(3))
    with torch.no_grad(), ShapeOnly():
        counter.add_(1)
        counter[0] = 5.0
        out = _meta((2, 3)) * scale
    assert torch.equal(counter, torch.zeros(3)) and out.is_meta and out.shape == (2, 3)


def test_arguments_in_fx_immutable_lists_become_meta_too() -> None:
    """An fx Interpreter passes list arguments (``torch.cat([x, h])``) as fx's immutable_list;
    its real tensors must become meta tensors like any list's (regression: they stayed real,
    and the call failed on mixed devices)."""
    x = torch.randn(2, 3)
    converted = to_meta((immutable_list([x, torch.empty(2, 1, device="meta")]),))
    assert isinstance(converted, tuple) and all(t.is_meta for t in converted[0])
    with ShapeOnly():
        assert torch.cat(immutable_list([x, torch.relu(x)]), dim=-1).shape == (2, 6)
