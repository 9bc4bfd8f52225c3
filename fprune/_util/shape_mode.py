"""Running a model on shapes alone, fast: the safety net's forward (see ``fprune/groups/_verify.py``).

Inside :class:`ShapeOnly`, every torch call sees meta tensors: the model's own parameters and
buffers stay where they are (CPU, CUDA or meta) and are never written to; any real tensor that
reaches a torch function is replaced by a meta tensor of its shape first. So the run has no
arithmetic, allocates nothing and changes nothing, whatever the input size.

torch's own meta kernels for the commonest ops are slow: elementwise ops, BatchNorm, LayerNorm
and attention go through Python reference implementations (0.1 to 2 ms a call, so a plain meta
forward of MobileNetV2 takes longer than pruning it). For those ops a rule here computes the
output itself, but only for inputs it can see are valid (shapes that agree, one dtype, no
``out=``); anything else goes to torch's meta kernel, which raises torch's own error. A rule
never raises, and never accepts shapes or dtypes that torch's meta kernel refuses
(tests/util/test_shape_mode.py checks each rule against torch on random shapes).

A forward that reads values (``.item()``, a bool of a tensor) fails here, on the original as on
a pruned copy; the safety net then runs both on real tensors instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

_Args = tuple[object, ...]
_Kwargs = dict[str, object]
_Rule = Callable[[_Args, _Kwargs], object]
_META = torch.device("meta")


def to_meta(value: object) -> object:
    """`value` with every tensor in it (through tuples, lists and dicts) replaced by a meta
    tensor of the same shape, dtype and strides; the value itself if it holds no real tensor."""
    if isinstance(value, Tensor):
        return value if value.is_meta else torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=_META)
    if isinstance(value, (tuple, list)):
        items = [to_meta(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        if type(value) in (tuple, list):
            return type(value)(items)
        if isinstance(value, list):  # fx's immutable_list (an Interpreter's arguments), ...
            return items
        if hasattr(value, "_fields"):  # a namedtuple
            return cast(Callable[..., object], type(value))(*items)
        return tuple(items)
    if type(value) is dict:
        return {k: to_meta(v) for k, v in value.items()}
    return value


def _new(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device=_META)


def _like(x: Tensor) -> Tensor:
    """A new meta tensor of `x`'s shape, dtype and strides (a detached alias if `x` is on meta:
    it has its own sizes, and writes to meta storage do nothing)."""
    return x.detach() if x.is_meta else torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=_META)


_PLAIN = (Tensor, torch.nn.Parameter)


def _float(x: object) -> bool:
    """A plain floating-point tensor (not a subclass with behaviour of its own)."""
    return type(x) in _PLAIN and isinstance(x, Tensor) and x.is_floating_point()


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast shape, or None if the shapes do not broadcast."""
    out: list[int] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


# --- rules: each returns the output, or NotImplemented to let torch's meta kernel decide -----


def _unary(inplace: bool) -> _Rule:
    """A float elementwise op of one tensor (activations, dropout, rsqrt, pow by a number)."""

    def rule(args: _Args, kwargs: _Kwargs) -> object:
        if not args or not _float(args[0]):
            return NotImplemented
        x = args[0]
        assert isinstance(x, Tensor)
        for value in (*args[1:], *kwargs.values()):
            if not (value is None or isinstance(value, (bool, int, float, str))):
                return NotImplemented
        if "out" in kwargs:
            return NotImplemented
        if (inplace or kwargs.get("inplace") is True) and x.is_meta:
            return x
        return _like(x)

    return rule


def _binary(inplace: bool) -> _Rule:
    """add / sub / mul / div of float tensors of one dtype, or of a float tensor and a number."""

    def rule(args: _Args, kwargs: _Kwargs) -> object:
        if len(args) != 2 or any(k not in ("alpha", "rounding_mode") for k in kwargs):
            return NotImplemented
        if kwargs.get("rounding_mode") is not None or not (kwargs.get("alpha") is None or _number(kwargs["alpha"])):
            return NotImplemented
        a, b = args
        if not _float(a):
            return NotImplemented
        assert isinstance(a, Tensor)
        if isinstance(b, Tensor):
            if not _float(b) or b.dtype != a.dtype:
                return NotImplemented
            shape = _broadcast(a.shape, b.shape)
        elif _number(b):
            shape = tuple(a.shape)
        else:
            return NotImplemented
        if shape is None:
            return NotImplemented
        if inplace:
            if shape != tuple(a.shape):
                return NotImplemented
            return a if a.is_meta else _like(a)
        return _new(shape, a.dtype)

    return rule


_SAME_SHAPE = _unary(False)


def _pow(args: _Args, kwargs: _Kwargs) -> object:
    if len(args) != 2 or kwargs or not _number(args[1]):
        return NotImplemented
    return _SAME_SHAPE(args[:1], {})


def _linear(args: _Args, kwargs: _Kwargs) -> object:
    if kwargs or not 2 <= len(args) <= 3:
        return NotImplemented
    x, weight, bias = (*args, None)[:3]
    if not (_float(x) and _float(weight)):
        return NotImplemented
    assert isinstance(x, Tensor) and isinstance(weight, Tensor)
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return NotImplemented
    if bias is not None:
        if not _float(bias):
            return NotImplemented
        assert isinstance(bias, Tensor)
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0] or bias.dtype != x.dtype:
            return NotImplemented
    return _new((*x.shape[:-1], weight.shape[0]), x.dtype)


def _tuple(value: object, n: int) -> tuple[int, ...] | None:
    if type(value) is int:
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(type(v) is int for v in value):
        return tuple(value)
    return None


def _conv(n: int) -> _Rule:
    """conv1d / conv2d / conv3d of a batched input with numeric padding."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults: tuple[object, ...] = (None, None, None, 1, 0, 1, 1)

    def rule(args: _Args, kwargs: _Kwargs) -> object:
        if len(args) == 7 and not kwargs:  # as nn.Conv*d calls it
            x, weight, bias, stride_, padding_, dilation_, groups = args
        elif len(args) <= 7 and all(k in names for k in kwargs):
            x, weight, bias, stride_, padding_, dilation_, groups = (
                *args, *(kwargs.get(name, default) for name, default in zip(names[len(args) :], defaults[len(args) :]))
            )  # fmt: skip
        else:
            return NotImplemented
        if type(x) not in _PLAIN or type(weight) not in _PLAIN or type(groups) is not int or groups < 1:
            return NotImplemented
        assert isinstance(x, Tensor) and isinstance(weight, Tensor) and isinstance(groups, int)
        dtype, xs, ws = x.dtype, x.shape, weight.shape
        if not dtype.is_floating_point or weight.dtype != dtype or len(xs) != n + 2 or len(ws) != n + 2:
            return NotImplemented
        out_channels = ws[0]
        if xs[1] != ws[1] * groups or out_channels % groups or out_channels == 0:
            return NotImplemented
        if bias is not None and not _per_channel(bias, out_channels, dtype):
            return NotImplemented
        stride, padding, dilation = _tuple(stride_, n), _tuple(padding_, n), _tuple(dilation_, n)
        if stride is None or padding is None or dilation is None:
            return NotImplemented
        sizes = [xs[0], out_channels]
        for i in range(n):
            s, p, d = stride[i], padding[i], dilation[i]
            if s < 1 or d < 1 or p < 0:
                return NotImplemented
            out = (xs[2 + i] + 2 * p - d * (ws[2 + i] - 1) - 1) // s + 1
            if out < 1:
                return NotImplemented
            sizes.append(out)
        return torch.empty(sizes, dtype=dtype, device=_META)

    return rule


def _per_channel(value: object, count: int, dtype: torch.dtype) -> bool:
    """True if `value` is None or a 1-D tensor of `count` entries and dtype `dtype`."""
    if value is None:
        return True
    if type(value) not in _PLAIN:
        return False
    assert isinstance(value, Tensor)
    return value.dtype == dtype and value.shape == (count,)


_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _batch_norm(args: _Args, kwargs: _Kwargs) -> object:
    if len(args) > len(_BN_NAMES) or any(k not in _BN_NAMES for k in kwargs):
        return NotImplemented
    bound = dict(zip(_BN_NAMES, args))
    bound.update(kwargs)
    x = bound.get("input")
    training = bound.get("training", False)
    if type(x) not in _PLAIN or type(training) is not bool:
        return NotImplemented
    assert isinstance(x, Tensor)
    dtype, shape = x.dtype, x.shape
    if not dtype.is_floating_point or len(shape) < 2:
        return NotImplemented
    channels = shape[1]
    mean, var = bound.get("running_mean"), bound.get("running_var")
    if not (_per_channel(mean, channels, dtype) and _per_channel(var, channels, dtype)):
        return NotImplemented
    if not (_per_channel(bound.get("weight"), channels, dtype) and _per_channel(bound.get("bias"), channels, dtype)):
        return NotImplemented
    if training and shape[0] * math.prod(shape[2:]) <= 1:
        return NotImplemented  # torch: "Expected more than 1 value per channel when training"
    if not training and (mean is None or var is None):
        return NotImplemented
    return _like(x)


def _layer_norm(args: _Args, kwargs: _Kwargs) -> object:
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return NotImplemented
    bound = dict(zip(names, args))
    bound.update(kwargs)
    x, normalized = bound.get("input"), bound.get("normalized_shape")
    if not _float(x) or not isinstance(normalized, (tuple, list, torch.Size)):
        return NotImplemented
    assert isinstance(x, Tensor)
    shape = tuple(normalized)
    if not shape or x.dim() < len(shape) or tuple(x.shape[-len(shape) :]) != shape:
        return NotImplemented
    for name in ("weight", "bias"):
        value = bound.get(name)
        if value is not None and not (_float(value) and isinstance(value, Tensor) and tuple(value.shape) == shape and value.dtype == x.dtype):
            return NotImplemented
    return _like(x)


def _sdpa(args: _Args, kwargs: _Kwargs) -> object:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return NotImplemented
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q, k, v = bound.get("query"), bound.get("key"), bound.get("value")
    if bound.get("attn_mask") is not None or not (_float(q) and _float(k) and _float(v)):
        return NotImplemented
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    if not (isinstance(bound.get("is_causal", False), bool) and isinstance(bound.get("enable_gqa", False), bool)):
        return NotImplemented
    if not (bound.get("scale") is None or _number(bound.get("scale"))) or not _number(bound.get("dropout_p", 0.0)):
        return NotImplemented
    if not (q.dim() == k.dim() == v.dim() == 4) or not (q.dtype == k.dtype == v.dtype):
        return NotImplemented
    heads_ok = q.shape[1] == k.shape[1] or (bound.get("enable_gqa") is True and k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0)
    if not (q.shape[0] == k.shape[0] == v.shape[0] and k.shape[1] == v.shape[1] and heads_ok):
        return NotImplemented
    if k.shape[2] != v.shape[2] or q.shape[3] != k.shape[3] or min(q.shape) < 1 or min(k.shape) < 1 or min(v.shape) < 1:
        return NotImplemented
    return _new((*q.shape[:-1], v.shape[-1]), q.dtype)


def _mean(args: _Args, kwargs: _Kwargs) -> object:
    names = ("input", "dim", "keepdim")
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return NotImplemented
    bound = dict(zip(names, args))
    bound.update(kwargs)
    x, dim, keepdim = bound.get("input"), bound.get("dim"), bound.get("keepdim", False)
    if not _float(x) or not isinstance(keepdim, bool):
        return NotImplemented
    assert isinstance(x, Tensor)
    dims = _tuple(dim, 1) if isinstance(dim, int) else (_tuple(dim, len(dim)) if isinstance(dim, (tuple, list)) and dim else None)
    if dims is None or x.dim() == 0 or any(not -x.dim() <= d < x.dim() for d in dims):
        return NotImplemented
    chosen = {d % x.dim() for d in dims}
    if len(chosen) != len(dims):
        return NotImplemented
    shape = [1 if i in chosen else s for i, s in enumerate(x.shape)] if keepdim else [s for i, s in enumerate(x.shape) if i not in chosen]
    return _new(shape, x.dtype)


def _adaptive_avg_pool(n: int) -> _Rule:
    """adaptive_avg_pool1d / 2d / 3d to a given output size."""

    def rule(args: _Args, kwargs: _Kwargs) -> object:
        if len(args) + len(kwargs) != 2 or any(k != "output_size" for k in kwargs):
            return NotImplemented
        x = args[0]
        size = args[1] if len(args) == 2 else kwargs["output_size"]
        if not _float(x):
            return NotImplemented
        assert isinstance(x, Tensor)
        sizes = (size,) * n if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(sizes, (tuple, list)) or len(sizes) != n or x.dim() not in (n + 1, n + 2) or min(x.shape[1:]) < 1:
            return NotImplemented
        out = [x.shape[-n + i] if s is None else s for i, s in enumerate(sizes)]
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
            return NotImplemented
        return _new((*x.shape[:-n], *out), x.dtype)

    return rule


def _multihead_attention(args: _Args, kwargs: _Kwargs) -> object:
    """F.multi_head_attention_forward for batched self- or cross-attention with packed weights,
    no masks and no extra key/value biases (what nn.MultiheadAttention calls in most models)."""
    names = (
        "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
        "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training", "key_padding_mask",
        "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
        "static_k", "static_v", "average_attn_weights", "is_causal",
    )  # fmt: skip
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return NotImplemented
    bound = dict(zip(names, args))
    bound.update(kwargs)
    for absent in ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v"):
        if bound.get(absent) is not None:
            return NotImplemented
    if bound.get("add_zero_attn") is not False or bound.get("use_separate_proj_weight", False) is not False or bound.get("is_causal", False) is not False:
        return NotImplemented
    q, k, v = bound.get("query"), bound.get("key"), bound.get("value")
    w, b = bound.get("in_proj_weight"), bound.get("in_proj_bias")
    ow, ob = bound.get("out_proj_weight"), bound.get("out_proj_bias")
    heads, embed = bound.get("num_heads"), bound.get("embed_dim_to_check")
    need, average = bound.get("need_weights", True), bound.get("average_attn_weights", True)
    if not (_float(q) and _float(k) and _float(v) and _float(w) and _float(ow)):
        return NotImplemented
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor) and isinstance(w, Tensor) and isinstance(ow, Tensor)
    if not (isinstance(heads, int) and isinstance(embed, int) and isinstance(need, bool) and isinstance(average, bool)):
        return NotImplemented
    if not _number(bound.get("dropout_p")) or not isinstance(bound.get("training", True), bool):
        return NotImplemented
    dtype = q.dtype
    if not (q.dim() == k.dim() == v.dim() == 3) or any(t.dtype != dtype for t in (k, v, w, ow)):
        return NotImplemented
    tgt, batch, width = q.shape
    src = k.shape[0]
    if width != embed or heads < 1 or embed % heads or k.shape != v.shape or k.shape[1] != batch or k.shape[2] != embed:
        return NotImplemented
    if min(tgt, batch, src, embed) < 1 or tuple(w.shape) != (3 * embed, embed) or ow.dim() != 2 or ow.shape[1] != embed:
        return NotImplemented
    if not (_per_channel(b, 3 * embed, dtype) and _per_channel(ob, ow.shape[0], dtype)):
        return NotImplemented
    out = _new((tgt, batch, ow.shape[0]), dtype)
    if not need:
        return out, None
    return out, _new((batch, tgt, src) if average else (batch, heads, tgt, src), dtype)


def _rules() -> dict[object, _Rule]:
    T = torch.Tensor
    rules: dict[object, _Rule] = {}
    unary_functions = (
        F.relu, torch.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.mish, F.elu, F.selu,
        F.celu, F.leaky_relu, F.softplus, torch.sigmoid, torch.tanh, torch.rsqrt, torch.sqrt, torch.exp, F.dropout,
    )  # fmt: skip
    for function in unary_functions:
        rules[function] = _unary(False)
    for method in ("relu", "sigmoid", "tanh", "rsqrt", "sqrt", "exp"):
        rules[getattr(T, method)] = _unary(False)
    for inplace in (torch.relu_, T.relu_, F.hardtanh_, F.leaky_relu_, T.sigmoid_, T.tanh_):
        rules[inplace] = _unary(True)
    for name in ("add", "sub", "mul", "div"):
        rules[getattr(torch, name)] = _binary(False)
        rules[getattr(T, name)] = _binary(False)
        rules[getattr(T, f"__{name}__" if name != "div" else "__truediv__")] = _binary(False)
        rules[getattr(T, f"{name}_")] = _binary(True)
        rules[getattr(T, f"__i{name}__" if name != "div" else "__itruediv__")] = _binary(True)
    for name in ("__radd__", "__rmul__"):
        rules[getattr(T, name)] = _binary(False)
    for power in (torch.pow, T.pow, T.__pow__):
        rules[power] = _pow
    rules[F.linear] = _linear
    rules[torch.conv1d] = _conv(1)
    rules[torch.conv2d] = _conv(2)
    rules[torch.conv3d] = _conv(3)
    rules[F.batch_norm] = _batch_norm
    rules[F.layer_norm] = _layer_norm
    rules[F.scaled_dot_product_attention] = _sdpa
    rules[torch.mean] = rules[T.mean] = _mean
    rules[F.multi_head_attention_forward] = _multihead_attention
    rules[F.adaptive_avg_pool1d] = _adaptive_avg_pool(1)
    rules[F.adaptive_avg_pool2d] = _adaptive_avg_pool(2)
    rules[F.adaptive_avg_pool3d] = _adaptive_avg_pool(3)
    return rules


_RULES = _rules()
_METADATA = frozenset(
    {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.is_floating_point, torch.Tensor.stride, torch.Tensor.__len__}
    | {getattr(torch.Tensor, name).__get__ for name in ("shape", "dtype", "device", "ndim", "is_cuda", "is_meta")}
)
"""Calls that only read a tensor's metadata: they run as they are, on real tensors too."""


class ShapeOnly(TorchFunctionMode):
    """Runs torch calls on meta tensors: real tensors that reach a call are replaced by meta
    tensors of their shape (they are never written to), and the hot ops of common models get
    their output shape from the rules above instead of torch's slow Python meta kernels."""

    def __torch_function__(
        self, func: Callable[..., object], types: object, args: Sequence[object] = (), kwargs: dict[str, object] | None = None
    ) -> object:
        kwargs = kwargs or {}
        try:
            rule = _RULES.get(func)
            metadata = rule is None and func in _METADATA
        except TypeError:  # an unhashable callable
            rule, metadata = None, False
        if rule is not None:
            out = rule(args if isinstance(args, tuple) else tuple(args), kwargs)
            if out is not NotImplemented:
                return out
        if metadata:
            return func(*args, **kwargs)
        meta_args = to_meta(tuple(args))
        meta_kwargs = to_meta(kwargs)
        assert isinstance(meta_args, tuple) and isinstance(meta_kwargs, dict)
        return func(*meta_args, **meta_kwargs)
