"""The op catalogue both engines share: the key type that names an op in a pattern or a flow
rule table, and the families of ops that keep channels in place (activations, dropouts, pools)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias, Union

import torch
import torch.nn.functional as F
from torch import nn

OpKey: TypeAlias = Union[type[nn.Module], Callable[..., object], str]
"""How an op is named in a pattern or a rule table: a module class, a function (``F.relu``),
or a string: a method name (``"relu"`` for ``x.relu()``), or ``"output"`` (patterns only)
for the graph's output."""
ACTIVATION_FUNCTIONS: tuple[OpKey, ...] = (
    F.relu, F.rrelu, F.hardtanh, F.relu6, F.sigmoid, F.hardsigmoid, F.tanh, F.silu, F.mish,
    F.hardswish, F.elu, F.celu, F.selu, F.hardshrink, F.leaky_relu, F.logsigmoid, F.softplus,
    F.prelu, F.softsign, F.tanhshrink, F.gelu, torch.relu, torch.sigmoid, torch.tanh,
)  # fmt: skip
"""Elementwise activation functions as they appear in ``call_function`` nodes
(torch.ao's 21, plus ``torch.relu``, ``torch.sigmoid`` and ``torch.tanh``)."""

ACTIVATION_MODULES: tuple[OpKey, ...] = (
    nn.ReLU, nn.RReLU, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.Hardshrink, nn.LeakyReLU,
    nn.LogSigmoid, nn.Softplus, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.GELU,
)  # fmt: skip
"""Elementwise activation modules (torch.ao's 21)."""

ACTIVATION_METHODS: tuple[OpKey, ...] = ("relu", "sigmoid", "tanh")
"""Tensor methods (``x.relu()``); ``F.sigmoid`` and ``F.tanh`` also trace to these."""

DROPOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
"""Dropout modules: the identity in eval mode."""

CAST_METHODS: tuple[str, ...] = ("to", "float", "double", "half", "bfloat16", "type")
"""Tensor methods that change only the dtype (``x.to(torch.float32)``, ``x.float()``): the
values' channels stay where they are."""

DROPOUT_FUNCTIONS: tuple[Callable[..., object], ...] = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
"""Dropout functions: the identity with ``training=False``."""

MAX_POOL_MODULES: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVG_POOL_MODULES: tuple[type[nn.Module], ...] = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
ADAPTIVE_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
MAX_POOL_FUNCTIONS: tuple[Callable[..., object], ...] = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
AVG_POOL_FUNCTIONS: tuple[Callable[..., object], ...] = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
"""``avg_pool{n}d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)``"""
ADAPTIVE_POOL_FUNCTIONS: tuple[Callable[..., object], ...] = (
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
)  # fmt: skip
POOLS: tuple[OpKey, ...] = (
    *MAX_POOL_MODULES, *AVG_POOL_MODULES, *ADAPTIVE_POOL_MODULES,
    *MAX_POOL_FUNCTIONS, *AVG_POOL_FUNCTIONS, *ADAPTIVE_POOL_FUNCTIONS,
)  # fmt: skip
"""Every max / average / adaptive pool, 1d to 3d, module and function form: each pools within a
channel, so channels keep their place."""
