"""Random traceable models for the pipeline fuzzer (tests/pipeline/test_fuzz.py, tests/pipeline/fuzz_report.py).

Every model is built from choices made through a :class:`Chooser`: a seeded ``random.Random``
(:class:`RandomChooser`, used by the report runner: a seed replays a case) or hypothesis draws
(:class:`DrawChooser`, used by the tests: failures replay and shrink to small models). The
weights come from a ``torch.Generator`` seeded with a chosen integer, never from the global RNG.

A model is ``FuzzModel``: a stack of blocks and a head. A block is one of

- conv blocks (Conv1d / Conv2d, kernel 1 or 3, padding, stride, bias on / off, plain,
  depthwise or grouped, mostly of 2 or 4 groups) with BatchNorm (affine or not) or a norm with
  per-channel statistics (InstanceNorm, GroupNorm with one channel per group), an activation, a
  pool and dropout;
- Linear blocks (on features or on tokens) with BatchNorm1d, an activation and dropout;
- residual blocks (``+``, ``torch.add``, ``x.add``, ``-``, ``*``; identity or projection
  shortcut; at times a ResNeXt-like body of one or two convs of 2 or 4 groups);
- concat blocks (``torch.cat`` of two or three branches, optionally with the block input);
- split blocks (``chunk`` / ``split`` into two halves combined again: GLU-like), the sizes
  as one attribute, a list or tuple of attributes (YOLOv8's ``h.split((self.c, self.c), 1)``)
  or a list of numbers fprune cannot update;
- layout blocks (images): a channel shuffle written with view / transpose / view
  (ShuffleNetV2), or a ghost module's ``torch.cat([h, cheap(h)], 1)[:, :self.oup]``;
- hand-written attention (q / k / v Linear, view / reshape into ``self.num_heads`` heads, or
  timm's fused qkv Linear, ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``, ``unbind(0)`` / ``qkv[i]``,
  ``F.scaled_dot_product_attention`` or ``softmax(q @ k^T) @ v``, merge (also with the width
  read from the input's shape, as timm's ViT does, or by `flatten(2)`), output projection),
  ``nn.MultiheadAttention`` (batch_first);
- RMSNorm (hand-written, HF-style or nn.RMSNorm, with or without weight: exact with one);
- LayerNorm (fprune refuses to prune through it), a module called twice, elementwise ops with
  constants and per-channel parameters;
- transitions from images to features (adaptive pool + flatten, flatten, mean) and from
  tokens to features (mean over the tokens).

Activations come in module (``nn.ReLU()``), function (``F.relu``, ``torch.tanh``) and method
(``x.relu()``) form. Models are float64, in eval mode or (a quarter of them) in train mode, where
BatchNorm uses batch statistics; dropout is then p=0 so the forward stays deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.conv import _ConvNd

from ..zoo_convnext import drop_path

__all__ = [
    "BATCH",
    "Chooser",
    "DrawChooser",
    "FuzzCase",
    "FuzzModel",
    "RandomChooser",
    "build_case",
    "fuzz_cases",
]

T = TypeVar("T")

BATCH = 3  # > 1: BatchNorm in train mode needs it
MAX_WIDTH = 24
Kind = Literal["vec", "seq", "img1", "img2"]


# --- choices -------------------------------------------------------------------------------------


class Chooser(Protocol):
    """Where every random decision comes from. Simplest option first: hypothesis shrinks there."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        ...

    def choice(self, options: Sequence[T]) -> T:
        """One of `options`."""
        ...

    def chance(self, probability: float) -> bool:
        """True with about `probability`."""
        ...


class RandomChooser:
    """Choices from a seeded ``random.Random``: the same seed builds the same case."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability


class DrawChooser:
    """Choices drawn from hypothesis (``st.data().draw`` or a composite's ``draw``)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        value: int = self.draw(st.integers(low, high))
        return value

    def choice(self, options: Sequence[T]) -> T:
        value: T = self.draw(st.sampled_from(options))
        return value

    def chance(self, probability: float) -> bool:
        # shrinks to False: a failing case loses the optional parts it does not need; hypothesis
        # draws small ranges about uniformly (0..999 leans towards 0)
        value: int = self.draw(st.integers(0, 199))
        return value >= round(200 * (1 - probability))


# --- activations, pools, elementwise ops ---------------------------------------------------------

_MODULE_ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "ReLU": lambda c: nn.ReLU(),
    "GELU": lambda c: nn.GELU(),
    "Tanh": lambda c: nn.Tanh(),
    "Sigmoid": lambda c: nn.Sigmoid(),
    "LeakyReLU": lambda c: nn.LeakyReLU(0.1),
    "SiLU": lambda c: nn.SiLU(),
    "ELU": lambda c: nn.ELU(),
    "Hardtanh": lambda c: nn.Hardtanh(),
    "ReLU6": lambda c: nn.ReLU6(),
    "Softplus": lambda c: nn.Softplus(),
    "Identity": lambda c: nn.Identity(),
    "PReLU(c)": lambda c: nn.PReLU(c),
    "PReLU": lambda c: nn.PReLU(),
    "Mish": lambda c: nn.Mish(),
    "Hardswish": lambda c: nn.Hardswish(),
    "Softsign": lambda c: nn.Softsign(),
    "Hardsigmoid": lambda c: nn.Hardsigmoid(),
    "SELU": lambda c: nn.SELU(),
}

_FUNCTION_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "F.gelu": F.gelu,
    "F.gelu(tanh)": lambda x: F.gelu(x, approximate="tanh"),
    "torch.tanh": torch.tanh,
    "F.tanh": F.tanh,
    "torch.sigmoid": torch.sigmoid,
    "F.sigmoid": F.sigmoid,
    "F.leaky_relu(0.2)": lambda x: F.leaky_relu(x, 0.2),
    "F.silu": F.silu,
    "F.elu": F.elu,
    "F.hardtanh(-0.5,0.7)": lambda x: F.hardtanh(x, -0.5, 0.7),
    "F.relu6": F.relu6,
    "F.softplus": F.softplus,
    "F.mish": F.mish,
}

_METHOD_ACTIVATIONS = ("relu", "tanh", "sigmoid")


class Activation(nn.Module):
    """One activation in module, function or method form."""

    def __init__(self, form: str, name: str, channels: int) -> None:
        super().__init__()
        self.form = form
        self.name = name
        self.fn: nn.Module | None = _MODULE_ACTIVATIONS[name](channels) if form == "module" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.fn is not None:
            out: Tensor = self.fn(x)
            return out
        if self.form == "function":
            return _FUNCTION_ACTIVATIONS[self.name](x)
        return cast(Tensor, getattr(x, self.name)())

    def extra_repr(self) -> str:
        return f"{self.form} {self.name}"


def _activation(choose: Chooser, channels: int, kind: Kind) -> Activation:
    form = choose.choice(["module", "function", "method"])
    if form == "module":  # a per-channel PReLU reads dim 1: not the channels of tokens
        names = [n for n in _MODULE_ACTIVATIONS if kind != "seq" or n != "PReLU(c)"]
        return Activation(form, choose.choice(names), channels)
    if form == "function":
        return Activation(form, choose.choice(list(_FUNCTION_ACTIVATIONS)), channels)
    return Activation(form, choose.choice(_METHOD_ACTIVATIONS), channels)


class Pool(nn.Module):
    """A max / avg / adaptive pool over 1 or 2 spatial dims, in module or function form."""

    def __init__(self, spatial: int, kind: str, functional: bool) -> None:
        super().__init__()
        self.spatial = spatial
        self.kind = kind
        self.functional = functional
        self.pool: nn.Module | None = None if functional else _POOL_MODULES[(spatial, kind)]()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            out: Tensor = self.pool(x)
            return out
        return _POOL_FUNCTIONS[(self.spatial, self.kind)](x)

    def extra_repr(self) -> str:
        return f"{'function' if self.functional else 'module'} {self.kind} {self.spatial}d"


_POOL_MODULES: dict[tuple[int, str], Callable[[], nn.Module]] = {
    (1, "max2"): lambda: nn.MaxPool1d(2),
    (1, "avg2"): lambda: nn.AvgPool1d(2),
    (1, "max3s1p1"): lambda: nn.MaxPool1d(3, 1, 1),
    (1, "avg3s1p1"): lambda: nn.AvgPool1d(3, 1, 1),
    (1, "avg3s1p1-nopad"): lambda: nn.AvgPool1d(3, 1, 1, count_include_pad=False),
    (2, "max2"): lambda: nn.MaxPool2d(2),
    (2, "avg2"): lambda: nn.AvgPool2d(2),
    (2, "max3s1p1"): lambda: nn.MaxPool2d(3, 1, 1),
    (2, "avg3s1p1"): lambda: nn.AvgPool2d(3, 1, 1),
    (2, "avg3s1p1-nopad"): lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    (2, "adaptive-avg2"): lambda: nn.AdaptiveAvgPool2d(2),
    (2, "adaptive-max2"): lambda: nn.AdaptiveMaxPool2d(2),
    (1, "adaptive-avg2"): lambda: nn.AdaptiveAvgPool1d(2),
    (1, "adaptive-max2"): lambda: nn.AdaptiveMaxPool1d(2),
}

_POOL_FUNCTIONS: dict[tuple[int, str], Callable[[Tensor], Tensor]] = {
    (1, "max2"): lambda x: F.max_pool1d(x, 2),
    (1, "avg2"): lambda x: F.avg_pool1d(x, 2),
    (1, "max3s1p1"): lambda x: F.max_pool1d(x, 3, 1, 1),
    (1, "avg3s1p1"): lambda x: F.avg_pool1d(x, 3, 1, 1),
    (1, "avg3s1p1-nopad"): lambda x: F.avg_pool1d(x, 3, 1, 1, count_include_pad=False),
    (2, "max2"): lambda x: F.max_pool2d(x, 2),
    (2, "avg2"): lambda x: F.avg_pool2d(x, 2),
    (2, "max3s1p1"): lambda x: F.max_pool2d(x, 3, 1, 1),
    (2, "avg3s1p1"): lambda x: F.avg_pool2d(x, 3, 1, 1),
    (2, "avg3s1p1-nopad"): lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    (2, "adaptive-avg2"): lambda x: F.adaptive_avg_pool2d(x, 2),
    (2, "adaptive-max2"): lambda x: F.adaptive_max_pool2d(x, 2),
    (1, "adaptive-avg2"): lambda x: F.adaptive_avg_pool1d(x, 2),
    (1, "adaptive-max2"): lambda x: F.adaptive_max_pool1d(x, 2),
}


def _pool(choose: Chooser, spatial: int, size: int) -> Pool | None:
    kinds = [k for (s, k) in _POOL_MODULES if s == spatial and (size >= 2 or "3s1p1" in k)]
    if not kinds:
        return None
    return Pool(spatial, choose.choice(kinds), choose.chance(0.4))


def _dropout(choose: Chooser, spatial: int, train: bool) -> nn.Module:
    p = 0.0 if train else choose.choice([0.5, 0.1])
    if spatial == 2 and choose.chance(0.5):
        return nn.Dropout2d(p)
    if spatial == 1 and choose.chance(0.5):
        return nn.Dropout1d(p)
    return nn.Dropout(p)


# --- blocks ---------------------------------------------------------------------------------------


def _channel_dim(kind: Kind) -> int:
    return -1 if kind in ("vec", "seq") else 1


class Sequential(nn.Module):
    """Optional parts applied in order (None entries are skipped when built)."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x


def _layer(choose: Chooser, kind: Kind, c_in: int, c_out: int, size: int, *, same_size: bool = False) -> nn.Module:
    """The producing layer of a block: a Linear (features, tokens) or a conv (images)."""
    bias = choose.chance(0.7)
    if kind in ("vec", "seq"):
        return nn.Linear(c_in, c_out, bias=bias)
    conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if kind == "img1" else nn.Conv2d
    kernel = choose.choice([3, 1])
    padding = 1 if kernel == 3 and (same_size or size < 3) else 0 if kernel == 1 else choose.choice([1, 0])
    stride = 1 if same_size or size < 4 else choose.choice([1, 1, 2])
    dilation = 1
    if kernel == 3 and padding == 1 and size >= 3 and choose.chance(0.15):
        dilation = padding = 2  # same size
    mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"
    if padding and size > padding and choose.chance(0.25):
        mode = choose.choice(("reflect", "replicate", "circular"))
    return conv(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, padding_mode=mode)


class _FunctionalBatchNorm:
    """A BatchNorm subclass whose forward calls ``F.batch_norm`` itself (timm's BatchNormAct
    style): torch.fx traces into it, so the graph holds the function with the module's tensors."""

    def forward(self, x: Tensor) -> Tensor:
        bn = cast(nn.modules.batchnorm._BatchNorm, self)
        use_batch = bn.training or bn.running_mean is None
        return F.batch_norm(
            x,
            bn.running_mean if not bn.training or bn.track_running_stats else None,
            bn.running_var if not bn.training or bn.track_running_stats else None,
            bn.weight,
            bn.bias,
            use_batch,
            bn.momentum if bn.momentum is not None else 0.1,
            bn.eps,
        )


class FunctionalBatchNorm1d(_FunctionalBatchNorm, nn.BatchNorm1d):
    pass


class FunctionalBatchNorm2d(_FunctionalBatchNorm, nn.BatchNorm2d):
    pass


def _norm_and_act(choose: Chooser, kind: Kind, channels: int, size: int, train: bool, *, pool: bool = True) -> list[nn.Module]:
    parts: list[nn.Module] = []
    if kind in ("img1", "img2") and size > 1 and choose.chance(0.08):  # per-channel statistics: exact carriers
        if choose.chance(0.5):
            instance = nn.InstanceNorm1d if kind == "img1" else nn.InstanceNorm2d
            parts.append(instance(channels, affine=not choose.chance(0.2), track_running_stats=choose.chance(0.3)))
        else:
            parts.append(nn.GroupNorm(channels, channels, affine=not choose.chance(0.2)))
    elif kind != "seq" and choose.chance(0.4):
        bn_type: type[nn.modules.batchnorm._BatchNorm] = {"vec": nn.BatchNorm1d, "img1": nn.BatchNorm1d, "img2": nn.BatchNorm2d}[kind]
        if choose.chance(0.3):
            bn_type = FunctionalBatchNorm1d if bn_type is nn.BatchNorm1d else FunctionalBatchNorm2d
        parts.append(bn_type(channels, affine=not choose.chance(0.1), track_running_stats=not choose.chance(0.1)))
    act = _activation(choose, channels, kind) if choose.chance(0.8) else None
    pooling = _pool(choose, 1 if kind == "img1" else 2, size) if pool and kind in ("img1", "img2") and choose.chance(0.3) else None
    if pooling is not None and choose.chance(0.5):
        parts.append(pooling)
        pooling = None
    if act is not None:
        parts.append(act)
    if pooling is not None:
        parts.append(pooling)
    if choose.chance(0.2):
        parts.append(_dropout(choose, 0 if kind in ("vec", "seq") else 1 if kind == "img1" else 2, train))
    return parts


def _plain(choose: Chooser, state: _State) -> nn.Module:
    c_out = _width(choose)
    kind = state.kind
    if kind in ("img1", "img2") and choose.chance(0.3):  # depthwise or grouped
        conv_type: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if kind == "img1" else nn.Conv2d
        c = state.channels
        divisors = [g for g in range(2, c + 1) if c % g == 0]
        if choose.chance(0.5) or not divisors:
            layer: nn.Module = conv_type(c, c, 3, padding=1, groups=c, bias=choose.chance(0.5))
            c_out = c
        else:  # mostly ResNeXt / RegNet-like: 2 or 4 groups of several channels each
            small = [g for g in (2, 4) if c % g == 0 and c > g]
            groups = choose.choice(small) if small and choose.chance(0.7) else choose.choice(divisors)
            c_out = groups * choose.integer(1, max(1, MAX_WIDTH // groups))
            layer = conv_type(c, c_out, 3, padding=1, groups=groups, bias=choose.chance(0.5))
    else:
        layer = _layer(choose, kind, state.channels, c_out, state.size)
    size = min(_shape_after(layer, state.shape)[2:]) if kind in ("img1", "img2") else state.size
    return Sequential([layer, *_norm_and_act(choose, kind, c_out, size, state.train)])


class Residual(nn.Module):
    """``combine(shortcut(x), body(x))`` and an optional activation after it."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, combine: str, post: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.combine = combine
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        s: Tensor = x if self.shortcut is None else self.shortcut(x)
        h: Tensor = self.body(x)
        if self.combine == "+":
            out = s + h
        elif self.combine == "torch.add":
            out = torch.add(s, h)
        elif self.combine == "x.add":
            out = s.add(h)
        elif self.combine == "-":
            out = s - h
        else:
            out = s * h
        if self.post is not None:
            post: Tensor = self.post(out)
            return post
        return out

    def extra_repr(self) -> str:
        return f"combine={self.combine}"


def _grouped_layer(choose: Chooser, kind: Kind, c_in: int, c_out: int) -> nn.Module | None:
    """A 3x3 conv of 2 or 4 groups keeping the size (ResNeXt / RegNet), or None where no such
    group count divides both widths."""
    options = [g for g in (2, 4) if c_in % g == 0 and c_out % g == 0]
    if not options:
        return None
    conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if kind == "img1" else nn.Conv2d
    return conv(c_in, c_out, 3, padding=1, groups=choose.choice(options), bias=choose.chance(0.5))


def _residual(choose: Chooser, state: _State) -> nn.Module:
    kind, c = state.kind, state.channels
    project = choose.chance(0.3)
    c_out = _width(choose) if project else c
    shortcut = _layer(choose, kind, c, c_out, state.size, same_size=True) if project else None
    grouped = kind in ("img1", "img2") and choose.chance(0.5)  # a ResNeXt / RegNet-like body
    first = _grouped_layer(choose, kind, c, c_out) if grouped else None
    parts: list[nn.Module] = [first or _layer(choose, kind, c, c_out, state.size, same_size=True)]
    parts += _norm_and_act(choose, kind, c_out, state.size, state.train, pool=False)
    if choose.chance(0.5):
        second = _grouped_layer(choose, kind, c_out, c_out) if grouped and choose.chance(0.5) else None
        parts.append(second or _layer(choose, kind, c_out, c_out, state.size, same_size=True))
    combine = choose.choice(["+", "torch.add", "x.add", "-", "*"])
    post = _activation(choose, c_out, kind) if choose.chance(0.4) else None
    return Residual(Sequential(parts), shortcut, combine, post)


class Concat(nn.Module):
    """``torch.cat`` of branches (and maybe the block input) along the channel dim."""

    def __init__(self, branches: Sequence[nn.Module], with_input: bool, dim: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.with_input = with_input
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        parts = [branch(x) for branch in self.branches]
        if self.with_input:
            parts = [x, *parts]
        return torch.cat(parts, dim=self.dim)

    def extra_repr(self) -> str:
        return f"with_input={self.with_input}, dim={self.dim}"


def _concat(choose: Chooser, state: _State) -> nn.Module:
    kind = state.kind
    branches: list[nn.Module] = []
    for _ in range(choose.integer(1, 3)):
        width = choose.integer(1, MAX_WIDTH // 2)
        parts = [_layer(choose, kind, state.channels, width, state.size, same_size=True)]
        parts += _norm_and_act(choose, kind, width, state.size, state.train, pool=False)
        branches.append(Sequential(parts))
    with_input = choose.chance(0.3) or len(branches) == 1
    ndim = len(state.shape)
    channel = _channel_dim(kind) % ndim
    dim = choose.choice([channel, channel - ndim])
    return Concat(branches, with_input, dim)


class Split(nn.Module):
    """A layer to 2c channels, split in halves (``chunk`` / ``split``), combined again."""

    def __init__(self, layer: nn.Module, half: int, form: str, combine: str, act: nn.Module, dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.half_size = half
        self.form = form
        self.combine = combine
        self.act = act
        self.dim = dim
        self._literal_half = half

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.layer(x)
        if self.form == "chunk":
            a, b = h.chunk(2, dim=self.dim)
        elif self.form == "torch.chunk":
            a, b = torch.chunk(h, 2, self.dim)
        elif self.form == "torch.split":
            a, b = torch.split(h, self.half_size, dim=self.dim)
        elif self.form == "torch.split-list":  # every size of the list must follow pruning
            a, b = torch.split(h, [self.half_size, self.half_size], dim=self.dim)
        elif self.form == "split-tuple":  # YOLOv8's C2f
            a, b = getattr(h, "split")((self.half_size, self.half_size), self.dim)
        elif self.form == "split-literal":  # sizes fprune cannot update on a module (underscore: not configuration)
            a, b = torch.split(h, [self._literal_half, self._literal_half], dim=self.dim)
        else:  # the method (untyped in torch's stubs)
            a, b = getattr(h, "split")(self.half_size, dim=self.dim)
        gate: Tensor = self.act(b)
        return a * gate if self.combine == "*" else a + gate

    def extra_repr(self) -> str:
        return f"half={self.half_size}, form={self.form}, combine={self.combine}, dim={self.dim}"


def _split(choose: Chooser, state: _State) -> nn.Module:
    half = choose.integer(1, MAX_WIDTH // 2)
    layer = _layer(choose, state.kind, state.channels, 2 * half, state.size, same_size=True)
    ndim = len(state.shape)
    channel = _channel_dim(state.kind) % ndim
    return Split(
        layer,
        half,
        choose.choice(["chunk", "torch.chunk", "split", "torch.split", "torch.split-list", "split-tuple", "split-literal"]),
        choose.choice(["*", "+"]),
        _activation(choose, half, state.kind),
        choose.choice([channel, channel - ndim]),
    )


class ChannelLayout(nn.Module):
    """A layer, then its channels rearranged: a channel shuffle written as torchvision writes it
    (``view(b, g, C // g, h, w)``, ``transpose(1, 2)``, view back; images only), or a ghost
    module's concat of the layer and a cheap op of it, cut to ``self.oup`` channels."""

    def __init__(self, layer: nn.Module, form: str, groups: int, cheap: nn.Module | None, oup: int) -> None:
        super().__init__()
        self.layer = layer
        self.form = form
        self.groups = groups
        self.cheap = cheap
        self.oup = oup

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.layer(x)
        if self.cheap is not None:  # GhostNet's GhostModule
            out = torch.cat([h, self.cheap(h)], 1)
            return out[:, : self.oup]
        batchsize, num_channels, height, width = h.size()
        channels_per_group = num_channels // self.groups
        h = h.view(batchsize, self.groups, channels_per_group, height, width)
        h = torch.transpose(h, 1, 2).contiguous()
        if self.form == "shuffle-flat":
            return h.view(batchsize, -1, height, width)
        return h.view(batchsize, num_channels, height, width)

    def extra_repr(self) -> str:
        return f"form={self.form}, groups={self.groups}, oup={self.oup}"


def _channel_layout(choose: Chooser, state: _State) -> nn.Module:
    kind, c = state.kind, state.channels
    if kind == "img2" and choose.chance(0.5):
        groups = choose.choice([2, 2, 3, 4])
        width = groups * choose.integer(1, MAX_WIDTH // groups)
        layer = _layer(choose, kind, c, width, state.size, same_size=True)
        return ChannelLayout(layer, choose.choice(["shuffle", "shuffle-flat"]), groups, None, width)
    init = choose.integer(1, MAX_WIDTH // 2)
    layer = _layer(choose, kind, c, init, state.size, same_size=True)
    conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if kind == "img1" else nn.Conv2d
    cheap_kind = choose.choice(["depthwise", "depthwise", "activation", "layer"])
    cheap: nn.Module
    if cheap_kind == "depthwise":
        cheap = conv(init, init, 3, padding=1, groups=init, bias=choose.chance(0.5))
    elif cheap_kind == "activation":
        cheap = _activation(choose, init, kind)
    else:  # other channels: a slice past the layer's counts two groups, which blocks
        cheap = _layer(choose, kind, init, init, state.size, same_size=True)
    return ChannelLayout(layer, f"ghost-{cheap_kind}", 1, cheap, choose.integer(1, 2 * init))


class SelfAttention(nn.Module):
    """Hand-written multi-head self-attention with the head count in ``self.num_heads``;
    grouped-query attention when ``self.kv_heads < self.num_heads`` (keys and values
    ``repeat_interleave``'d, or ``scaled_dot_product_attention(enable_gqa=True)``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_heads: int,
        head_dim: int,
        out_dim: int,
        *,
        bias: bool,
        split: str,
        layout: str,
        core: str,
        merge: str,
        residual: bool,
        literal_heads: bool,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        inner = num_heads * head_dim
        if split.startswith("fused"):  # timm's ViT: one qkv Linear, reshape(B, N, 3, H, D)
            self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, inner, bias=bias)
            self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=bias)
            self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(inner, out_dim, bias=bias)
        self.split = split
        self.layout = layout
        self.core = core
        self.merge = merge
        self.residual = residual
        # a head count fprune cannot update (underscore attributes are not model configuration)
        self._literal_heads = num_heads if literal_heads else 0

    def _heads(self, h: Tensor, b: int, t: int, heads: int) -> Tensor:
        if self.split == "view":
            h = h.view(b, t, heads, self.head_dim)
        elif self.split == "reshape":
            h = h.reshape(b, t, heads, self.head_dim)
        else:
            h = h.view(b, t, -1, self.head_dim)
        return h.transpose(1, 2) if self.layout == "transpose" else h.permute(0, 2, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.size(1)
        if self.split.startswith("fused"):
            qkv = self.qkv(x).reshape(b, t, 3, self._literal_heads or self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0) if self.split == "fused-unbind" else (qkv[0], qkv[1], qkv[2])
        else:
            q = self._heads(self.q_proj(x), b, t, self._literal_heads or self.num_heads)
            k = self._heads(self.k_proj(x), b, t, self.kv_heads)
            v = self._heads(self.v_proj(x), b, t, self.kv_heads)
        if self.kv_heads != self.num_heads and self.core != "sdpa-gqa":
            k = k.repeat_interleave(self.num_heads // self.kv_heads, dim=1)
            v = torch.repeat_interleave(v, self.num_heads // self.kv_heads, dim=1)
        if self.core == "sdpa":
            context = F.scaled_dot_product_attention(q, k, v)
        elif self.core == "sdpa-gqa":
            context = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        elif self.core == "sdpa-causal":
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.core == "softmax-div":
            context = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1) @ v
        else:
            context = (torch.matmul(q, k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        heads = self._literal_heads or self.num_heads
        if self.merge == "read-width":  # timm's ViT: the width read from the input, `B, N, C = x.shape`
            merged = context.transpose(1, 2).reshape(b, t, x.shape[-1])
        elif self.merge == "reshape":
            merged = context.transpose(1, 2).reshape(b, t, heads * self.head_dim)
        elif self.merge == "view-1":
            merged = context.permute(0, 2, 1, 3).contiguous().view(b, t, -1)
        elif self.merge == "flatten":
            merged = context.transpose(1, 2).flatten(2)
        else:
            merged = context.transpose(1, 2).contiguous().view(b, t, self.num_heads * self.head_dim)
        out: Tensor = self.out_proj(merged)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, split={self.split}, layout={self.layout}, "
            f"core={self.core}, merge={self.merge}, residual={self.residual}, literal={bool(self._literal_heads)}"
        )


def _attention(choose: Chooser, state: _State) -> nn.Module:
    num_heads = choose.integer(1, 4)
    kv_heads = choose.choice([k for k in range(1, num_heads) if num_heads % k == 0]) if num_heads > 1 and choose.chance(0.3) else num_heads
    head_dim = choose.integer(1, 6)
    merge = choose.choice(["reshape", "view-1", "view-attr", "read-width", "flatten"])
    if merge == "read-width":  # the merged width must equal the input's
        if state.channels % num_heads:
            merge = "reshape"
        else:
            head_dim = state.channels // num_heads
    core = choose.choice(["sdpa", "softmax-div", "softmax-scale", "sdpa-causal"] + (["sdpa-gqa"] if kv_heads != num_heads else []))
    residual = choose.chance(0.4)
    out_dim = state.channels if residual else _width(choose)
    return SelfAttention(
        state.channels,
        num_heads,
        kv_heads,
        head_dim,
        out_dim,
        bias=choose.chance(0.7),
        split=choose.choice(["view", "reshape", "view-1"] + (["fused-unbind", "fused-index"] if kv_heads == num_heads else [])),
        layout=choose.choice(["transpose", "permute"]),
        core=core,
        merge=merge,
        residual=residual,
        literal_heads=choose.chance(0.08),
    )


class MHA(nn.Module):
    """``nn.MultiheadAttention(batch_first=True)`` as self-attention, maybe with a residual."""

    def __init__(self, dim: int, heads: int, bias: bool, residual: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.attn(x, x, x, need_weights=False)[0]
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


def _mha(choose: Chooser, state: _State) -> nn.Module:
    c = state.channels
    heads = choose.choice([h for h in (1, 2, 3, 4) if c % h == 0])
    return MHA(c, heads, choose.chance(0.7), choose.chance(0.4))


class FuzzRMSNorm(nn.Module):
    """RMSNorm written out, as Llama's (``x * rsqrt(mean(x^2) + eps) * weight``) or HF's
    ``LlamaRMSNorm`` (casts, ``self.variance_epsilon``, weight first); ``weight=False`` leaves
    out the weight (fprune then blocks it: nothing could carry the rescale)."""

    def __init__(self, channels: int, form: str, weight: bool) -> None:
        super().__init__()
        self.form = form
        self.variance_epsilon = 1e-5
        self.weight = nn.Parameter(torch.ones(channels)) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        if self.form == "hf":
            dtype = x.dtype
            h = x.to(torch.float64)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight * h.to(dtype) if self.weight is not None else h.to(dtype)
        h = x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.variance_epsilon)
        return h * self.weight if self.weight is not None else h

    def extra_repr(self) -> str:
        return f"form={self.form}, weight={self.weight is not None}"


def _rmsnorm(choose: Chooser, state: _State) -> nn.Module:
    """Linear -> RMSNorm (hand-written or nn.RMSNorm; exact through its rescaled weight and eps)."""
    c_out = _width(choose)
    form = choose.choice(["plain", "hf", "module"])
    weight = choose.chance(0.85)
    norm = nn.RMSNorm(c_out, eps=choose.choice([1e-5, None]), elementwise_affine=weight) if form == "module" else FuzzRMSNorm(c_out, form, weight)
    parts: list[nn.Module] = [nn.Linear(state.channels, c_out), norm]
    if choose.chance(0.5):
        parts.append(_activation(choose, c_out, state.kind))
    return Sequential(parts)


def _layernorm(choose: Chooser, state: _State) -> nn.Module:
    c_out = _width(choose)
    parts: list[nn.Module] = [nn.Linear(state.channels, c_out), nn.LayerNorm(c_out, elementwise_affine=choose.chance(0.8))]
    if choose.chance(0.5):
        parts.append(_activation(choose, c_out, state.kind))
    return Sequential(parts)


class Twice(nn.Module):
    """One Linear called twice: ``layer(act(layer(x)))``."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.layer = nn.Linear(channels, channels)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(self.act(self.layer(x)))
        return out


def _twice(choose: Chooser, state: _State) -> nn.Module:
    c_in = state.channels
    return Sequential([nn.Linear(c_in, c_in), Twice(c_in, _activation(choose, c_in, state.kind))])


class Elementwise(nn.Module):
    """An op with a constant or a model parameter: scale, shift, abs, clamp, ..."""

    def __init__(self, op: str, channels: int, ndim: int, channel_dim: int) -> None:
        super().__init__()
        self.op = op
        shape = [1] * (ndim - 1)
        shape[(channel_dim % ndim) - 1] = channels
        self.param = nn.Parameter(torch.ones(shape if op.endswith("(c)") else [1]))
        self.buf: Tensor
        self.register_buffer("buf", torch.ones(shape))
        view = [1] * ndim
        view[channel_dim % ndim] = -1
        self.view = tuple(view)  # ConvNeXt's layer scale: a (C,) parameter, on the last dim or viewed
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, channels)) if op in ("x.mul(g)", "g.view * x") else None

    def forward(self, x: Tensor) -> Tensor:
        op = self.op
        if op == "x * 0.5":
            return x * 0.5
        if op == "x / 2":
            return x / 2.0
        if op == "x + 1":
            return x + 1.0
        if op == "x - 0":
            return x - 0
        if op == "x.abs()":
            return x.abs()
        if op == "torch.clamp":
            return torch.clamp(x, min=0.0)
        if op.startswith("x * p"):
            return x * self.param
        if op == "x.clone()":
            return x.clone()
        if op == "x.to(x.dtype)":
            return x.to(x.dtype)
        if op == "interpolate":
            return F.interpolate(x, scale_factor=1.0)
        if op == "channel_shuffle":
            return F.channel_shuffle(x, 2)
        if op == "x * x.amax":
            return x * x.amax(dim=-1, keepdim=True)
        if op == "x + b(c)":
            return x + self.buf
        if op == "x.mul(g)" and self.gamma is not None:
            return x.mul(self.gamma)
        if op == "g.view * x" and self.gamma is not None:
            return self.gamma.view(self.view) * x
        if op == "drop_path":  # timm's stochastic depth: a random (B, 1, ...) keep mask in train mode
            return drop_path(x, 0.5, self.training)
        if op == "x * b(c)":
            return x * self.buf
        return x + self.param

    def extra_repr(self) -> str:
        return self.op


_ELEMENTWISE = (
    "x * 0.5", "x / 2", "x + 1", "x - 0", "x.abs()", "torch.clamp",
    "x * p(c)", "x + p(c)", "x * p(1)", "x + p(1)", "x + b(c)", "x * b(c)",
)  # fmt: skip


def _elementwise(choose: Chooser, state: _State) -> nn.Module:
    layer = _layer(choose, state.kind, state.channels, state.channels, state.size, same_size=True)
    ops: tuple[str, ...] = _ELEMENTWISE + ("x.clone()", "x.to(x.dtype)", "x * x.amax")  # amax: over the last dim (channels for vec / seq)
    ops += ("g.view * x", "drop_path") + (("x.mul(g)",) if state.kind in ("vec", "seq") else ())
    if state.kind in ("img1", "img2"):
        ops += ("interpolate",) + (("channel_shuffle",) if state.channels % 2 == 0 else ())
    op = choose.choice(ops)
    return Sequential([layer, Elementwise(op, state.channels, len(state.shape), _channel_dim(state.kind))])


class Gate(nn.Module):
    """Squeeze-and-excitation: ``x * gate(expand(act(reduce(context(x)))))`` with an ``f(0) != 0``
    gate (sigmoid, hard-sigmoid) in module, function or method form, or written out as
    ``relu6(s + 3) / 6``; the combine is a product
    (exact: removed channels are zero in `x`) or a sum (removed channels then hold the gate's
    constant: exact where it folds into the next layer's bias, else refused)."""

    def __init__(self, kind: Kind, channels: int, reduced: int, act: nn.Module, gate: str, combine: str, views: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.views = views  # SENet's form: Linear layers on pool(x).view(b, c), back by .view(b, c, 1, 1).expand_as(x)
        if kind in ("img1", "img2") and not views:
            conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if kind == "img1" else nn.Conv2d
            self.reduce: nn.Module = conv(channels, reduced, 1)
            self.expand: nn.Module = conv(reduced, channels, 1)
        else:
            self.reduce, self.expand = nn.Linear(channels, reduced), nn.Linear(reduced, channels)
        self.act = act
        self.gate = gate
        self.gate_module: nn.Module | None = nn.Sigmoid() if gate == "nn.Sigmoid" else nn.Hardsigmoid() if gate == "nn.Hardsigmoid" else None
        self.combine = combine

    def forward(self, x: Tensor) -> Tensor:
        if self.views:
            b, c = x.shape[0], x.shape[1]
            pooled = x.mean((2, 3) if self.kind == "img2" else 2)
            gate = torch.sigmoid(self.expand(self.act(self.reduce(pooled.view(b, c)))))
            shaped = gate.view(b, c, 1, 1) if self.kind == "img2" else gate.view(b, -1, 1)
            return x * shaped.expand_as(x)
        if self.kind == "img2":
            s = x.mean((2, 3), keepdim=True)
        elif self.kind == "img1":
            s = x.mean(2, keepdim=True)
        elif self.kind == "seq":
            s = x.mean(1, keepdim=True)
        else:
            s = x
        s = self.expand(self.act(self.reduce(s)))
        if self.gate_module is not None:
            g: Tensor = self.gate_module(s)
        elif self.gate == "torch.sigmoid":
            g = torch.sigmoid(s)
        elif self.gate == "F.hardsigmoid":
            g = F.hardsigmoid(s)
        elif self.gate == "relu6(s + 3) / 6":  # GhostNet's hard sigmoid, written out
            g = F.relu6(s + 3.0) / 6.0
        else:
            g = s.sigmoid()
        if self.combine == "x * g":
            return x * g
        if self.combine == "g * x":
            return g * x
        if self.combine == "x * g + x":
            return x * g + x
        return x + g

    def extra_repr(self) -> str:
        return f"gate={self.gate}, combine={self.combine!r}"


def _gate(choose: Chooser, state: _State) -> nn.Module:
    c = state.channels
    layer = _layer(choose, state.kind, state.channels, c, state.size, same_size=True)
    reduced = choose.integer(1, max(1, c // 2))
    gate = choose.choice(["nn.Sigmoid", "nn.Hardsigmoid", "torch.sigmoid", "F.hardsigmoid", "x.sigmoid()", "relu6(s + 3) / 6"])
    combine = choose.choice(["x * g", "g * x", "x * g", "x * g + x", "x + g"])
    views = state.kind in ("img1", "img2") and choose.chance(0.3)
    act = _activation(choose, reduced, "vec" if views else state.kind)
    return Sequential([layer, Gate(state.kind, c, reduced, act, gate, combine, views)])


class ToFeatures(nn.Module):
    """Images or tokens to features: adaptive pool + flatten, flatten, or a mean."""

    def __init__(self, form: str, pool: nn.Module | None, spatial: int) -> None:
        super().__init__()
        self.form = form
        self.pool = pool
        self.spatial = spatial
        self.flatten: nn.Module | None = nn.Flatten() if form == "nn.Flatten" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.flatten is not None:
            out: Tensor = self.flatten(x)
            return out
        if self.form == "x.flatten(1)":
            return x.flatten(1)
        if self.form == "torch.flatten":
            return torch.flatten(x, 1)
        if self.form == "x.view(b, -1)":
            return x.view(x.shape[0], -1)
        if self.form == "mean-tokens":
            return x.mean(dim=1)
        dims = (2, 3) if self.spatial == 2 else (-1,)
        if self.form == "torch.mean":
            return torch.mean(x, dim=dims)
        return x.mean(dims)

    def extra_repr(self) -> str:
        return self.form


def _to_features(choose: Chooser, state: _State) -> nn.Module:
    if state.kind == "seq":
        return ToFeatures("mean-tokens", None, 0)
    spatial = 1 if state.kind == "img1" else 2
    form = choose.choice(["nn.Flatten", "x.flatten(1)", "torch.flatten", "x.mean", "torch.mean", "x.view(b, -1)"])
    pool: nn.Module | None = None
    if form in ("nn.Flatten", "x.flatten(1)", "torch.flatten", "x.view(b, -1)") and (state.spatial_numel > 16 or choose.chance(0.5)):
        kind = choose.choice(["adaptive-avg", "adaptive-max"])
        size = 1 if state.spatial_numel > 16 else choose.choice([1, 2])
        if choose.chance(0.4):
            pool = Pool(spatial, f"{kind}2", True) if size == 2 else _AdaptiveOne(spatial, kind)
        else:
            module_type = {
                (1, "adaptive-avg"): nn.AdaptiveAvgPool1d, (1, "adaptive-max"): nn.AdaptiveMaxPool1d,
                (2, "adaptive-avg"): nn.AdaptiveAvgPool2d, (2, "adaptive-max"): nn.AdaptiveMaxPool2d,
            }[(spatial, kind)]  # fmt: skip
            pool = module_type(size)
    return ToFeatures(form, pool, spatial)


class _AdaptiveOne(nn.Module):
    """``F.adaptive_*_pool(x, 1)``."""

    def __init__(self, spatial: int, kind: str) -> None:
        super().__init__()
        self.spatial = spatial
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial == 1:
            return F.adaptive_avg_pool1d(x, 1) if self.kind == "adaptive-avg" else F.adaptive_max_pool1d(x, 1)
        return F.adaptive_avg_pool2d(x, 1) if self.kind == "adaptive-avg" else F.adaptive_max_pool2d(x, 1)

    def extra_repr(self) -> str:
        return f"function {self.kind}1"


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    kind: Kind
    shape: tuple[int, ...]
    train: bool

    @property
    def channels(self) -> int:
        return self.shape[_channel_dim(self.kind)]

    @property
    def size(self) -> int:
        """The smallest spatial size (images), else a large number."""
        return min(self.shape[2:]) if self.kind in ("img1", "img2") else 1 << 20

    @property
    def spatial_numel(self) -> int:
        return math.prod(self.shape[2:]) if self.kind in ("img1", "img2") else 1


BlockBuilder = Callable[[Chooser, _State], nn.Module]

_BLOCKS: dict[Kind, list[tuple[str, BlockBuilder]]] = {
    "vec": [("plain", _plain), ("residual", _residual), ("concat", _concat), ("split", _split), ("elementwise", _elementwise), ("layernorm", _layernorm), ("twice", _twice), ("gate", _gate)],
    "seq": [("plain", _plain), ("attention", _attention), ("mha", _mha), ("attention", _attention), ("mha", _mha), ("residual", _residual), ("concat", _concat), ("split", _split), ("layernorm", _layernorm), ("elementwise", _elementwise), ("to-features", _to_features), ("gate", _gate)],
    "img1": [("plain", _plain), ("residual", _residual), ("concat", _concat), ("split", _split), ("elementwise", _elementwise), ("to-features", _to_features), ("gate", _gate)],
    "img2": [("plain", _plain), ("residual", _residual), ("concat", _concat), ("split", _split), ("elementwise", _elementwise), ("to-features", _to_features), ("gate", _gate)],
}  # fmt: skip

_BLOCKS["img1"].append(("layout", _channel_layout))  # GhostNet's slice
_BLOCKS["img2"].append(("layout", _channel_layout))  # ShuffleNetV2's shuffle, GhostNet's slice
_BLOCKS["vec"].append(("rmsnorm", _rmsnorm))  # exact through the rescaled weight and eps
_BLOCKS["seq"].append(("rmsnorm", _rmsnorm))


def _width(choose: Chooser) -> int:
    return choose.integer(1, MAX_WIDTH)


class FuzzModel(nn.Module):
    """A stack of blocks and a head (a Linear or 1x1 conv whose rows are the output channels)."""

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.head(x)
        return out


@dataclass(frozen=True)
class FuzzCase:
    """A generated model with its example input.

    Attributes:
        model: float64, in eval or train mode (dropout then has p=0).
        x: the example input.
        head: FQN of the weight whose rows are the output channels.
        out_dim: the output's channel dim.
        seed: the torch.Generator seed of the weights and the input.
        layout: one word per block, for the report.
    """

    model: FuzzModel
    x: Tensor
    head: str
    out_dim: int
    seed: int
    layout: tuple[str, ...]

    def __repr__(self) -> str:
        mode = "train" if self.model.training else "eval"
        return f"FuzzCase(seed={self.seed}, {mode}, input={tuple(self.x.shape)}, blocks={list(self.layout)})\n{self.model}"


def _shape_after(block: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    block.eval()
    with torch.no_grad():
        out = block(torch.zeros(shape))
    return tuple(out.shape)


def build_case(choose: Chooser) -> FuzzCase:
    """One random model, its input and its weights, all from `choose`."""
    seed = choose.integer(0, 2**31 - 1)
    kind: Kind = choose.choice(["vec", "img2", "seq", "img1"])
    train = choose.chance(0.25)
    c0 = _width(choose)
    shape: tuple[int, ...]
    if kind == "vec":
        shape = (BATCH, c0)
    elif kind == "seq":
        shape = (BATCH, choose.integer(1, 5), c0)
    elif kind == "img1":
        shape = (BATCH, c0, choose.integer(1, 12))
    else:
        side = choose.integer(1, 8)
        shape = (BATCH, c0, side, side + choose.integer(0, 2))
    state = _State(kind, shape, train)
    blocks: list[nn.Module] = []
    layout: list[str] = []
    for _ in range(choose.integer(1, 5)):
        name, builder = choose.choice(_BLOCKS[state.kind])
        block = builder(choose, state)
        out_shape = _shape_after(block, state.shape)
        new_kind: Kind = "vec" if name == "to-features" else state.kind
        blocks.append(block)
        layout.append(name)
        state = _State(new_kind, out_shape, train)
    n_out = choose.integer(1, 8)
    head: nn.Module
    if state.kind in ("vec", "seq"):
        head = nn.Linear(state.channels, n_out, bias=choose.chance(0.7))
    elif state.kind == "img1":
        head = nn.Conv1d(state.channels, n_out, 1, bias=choose.chance(0.7))
    else:
        head = nn.Conv2d(state.channels, n_out, 1, bias=choose.chance(0.7))
    model = FuzzModel(blocks, head).double()
    ties = choose.choice(["none", "none", "rounded", "equal-rows"])
    generator = torch.Generator().manual_seed(seed)
    _initialize(model, generator, ties)
    model.train(train)
    if train:
        # BatchNorm in train mode uses batch statistics; some stay in eval (mixed modes)
        for module in model.modules():
            if isinstance(module, _BatchNorm) and choose.chance(0.2):
                module.eval()
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return FuzzCase(model, x, "head.weight", _channel_dim(state.kind), seed, tuple(layout) + (f"ties={ties}",))


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * (high - low) + low


def _initialize(model: nn.Module, generator: torch.Generator, ties: str) -> None:
    """Fresh weights from `generator`; `ties` makes row norms tie ("rounded": few values,
    "equal-rows": every row of a weight the same)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                if module.affine:
                    module.weight.copy_(_uniform(module.weight.shape, 0.5, 1.5, generator))
                    module.bias.copy_(_uniform(module.bias.shape, -0.5, 0.5, generator))
                if module.running_mean is not None and module.running_var is not None:
                    module.running_mean.copy_(_uniform(module.running_mean.shape, -0.5, 0.5, generator))
                    module.running_var.copy_(_uniform(module.running_var.shape, 0.5, 2.0, generator))
                continue
            if isinstance(module, nn.PReLU):
                module.weight.copy_(_uniform(module.weight.shape, 0.05, 0.5, generator))
                continue
            if isinstance(module, (nn.GroupNorm, _InstanceNorm)):
                if module.weight is not None and module.bias is not None:
                    module.weight.copy_(_uniform(module.weight.shape, 0.5, 1.5, generator))
                    module.bias.copy_(_uniform(module.bias.shape, -0.5, 0.5, generator))
                mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
                if isinstance(mean, Tensor) and isinstance(var, Tensor):
                    mean.copy_(_uniform(mean.shape, -0.5, 0.5, generator))
                    var.copy_(_uniform(var.shape, 0.5, 2.0, generator))
                continue
            if isinstance(module, nn.LayerNorm):
                if module.weight is not None:
                    module.weight.copy_(_uniform(module.weight.shape, 0.5, 1.5, generator))
                if module.bias is not None:
                    module.bias.copy_(_uniform(module.bias.shape, -0.5, 0.5, generator))
                continue
            if isinstance(module, Elementwise):
                module.param.copy_(_uniform(module.param.shape, 0.5, 1.5, generator))
                module.buf.copy_(_uniform(module.buf.shape, 0.5, 1.5, generator))
                continue
            for name, param in module.named_parameters(recurse=False):
                if param.dim() >= 2:
                    fan_in = param[0].numel() if not (isinstance(module, _ConvNd) and module.transposed) else param.shape[0]
                    value = torch.randn(param.shape, generator=generator, dtype=torch.float64) * (1.2 / math.sqrt(max(1, fan_in)))
                    if ties == "rounded":
                        value = torch.round(value * math.sqrt(max(1, fan_in))) / math.sqrt(max(1, fan_in))
                    elif ties == "equal-rows":
                        value = value[:1].expand_as(value).clone()
                    param.copy_(value)
                else:
                    param.copy_(_uniform(param.shape, -0.5, 0.5, generator) if name != "weight" else _uniform(param.shape, 0.5, 1.5, generator))


@st.composite
def fuzz_cases(draw: st.DrawFn) -> FuzzCase:
    """Hypothesis strategy: a random model and its input."""
    return build_case(DrawChooser(draw))
