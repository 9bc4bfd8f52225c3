"""Build a small model whose whole forward is one pattern chain, for any pattern key."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fprune.patterns import Pattern, PatternElement, ZeroOrMore

CHANNELS = 6
IN_FEATURES = 5
IMAGE = 8

# Non-default arguments, so that bias folding must use each call's real arguments.
_CALL_ARGS: dict[object, tuple[tuple[object, ...], dict[str, object]]] = {
    F.leaky_relu: ((0.3,), {}),
    F.hardtanh: ((-0.5, 0.7), {}),
    F.elu: ((), {"alpha": 0.7}),
    F.celu: ((), {"alpha": 1.5}),
    F.softplus: ((), {"beta": 2.0}),
    F.gelu: ((), {"approximate": "tanh"}),
    F.hardshrink: ((0.3,), {}),
    F.avg_pool2d: ((2,), {}),
    F.max_pool2d: ((2,), {}),
    F.adaptive_avg_pool2d: ((2,), {}),
    F.adaptive_max_pool2d: ((2,), {}),
    torch.flatten: ((1,), {}),
}
_METHOD_ARGS: dict[str, tuple[object, ...]] = {"flatten": (1,)}


def random_batchnorm(kind: type[nn.Module], c: int) -> nn.Module:
    """A BatchNorm of `c` channels with random statistics and affine entries (not the identity)."""
    bn = kind(c)
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _module(element: type[nn.Module], conv: bool, flat_features: int) -> nn.Module:
    c = CHANNELS
    if element is nn.BatchNorm1d or element is nn.BatchNorm2d:
        return random_batchnorm(element, c)
    if element is nn.PReLU:
        prelu = nn.PReLU(c)
        with torch.no_grad():
            prelu.weight.uniform_(0.05, 0.5)
        return prelu
    if element in (nn.AvgPool2d, nn.MaxPool2d):
        return element(2)
    if element in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        return element(2)
    if element is nn.LeakyReLU:
        return nn.LeakyReLU(0.2)
    if element is nn.Dropout or element is nn.Dropout2d:
        return element(0.5)
    if element is nn.Linear:
        return nn.Linear(flat_features, 3)
    if element is nn.Conv2d:
        return nn.Conv2d(c, 4, 3)
    return element()


def _tensor(value: object) -> Tensor:
    """`value` typed as a Tensor (during fx tracing it is a Proxy standing in for one)."""
    return cast(Tensor, value)


class ChainModel(nn.Module):
    """``producer -> middle ops -> consumer | output``, built from a pattern key."""

    def __init__(self, pattern: Pattern) -> None:
        super().__init__()
        producer = pattern[0]
        self.conv = producer is nn.Conv2d
        self.producer: nn.Module = nn.Conv2d(3, CHANNELS, 3) if self.conv else nn.Linear(IN_FEATURES, CHANNELS)
        self.prelu_weight = nn.Parameter(torch.tensor([0.25]))
        spatial = IMAGE - 2
        steps: list[Callable[[Tensor], Tensor]] = []
        self.ops = nn.ModuleList()
        for element in pattern[1:]:
            if element == "output":
                break
            if isinstance(element, ZeroOrMore):
                raise ValueError("ChainModel builds tuple patterns; a ZeroOrMore run has no one model")
            if isinstance(element, type):
                if element in (nn.AvgPool2d, nn.MaxPool2d):
                    spatial //= 2
                if element in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
                    spatial = 2
                module = _module(element, self.conv, CHANNELS * spatial * spatial if self.conv else CHANNELS)
                self.ops.append(module)
                steps.append(module)
            else:
                if element in (F.avg_pool2d, F.max_pool2d):
                    spatial //= 2
                if element in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
                    spatial = 2
                steps.append(self._call(element))
        self.steps = steps

    def _call(self, element: PatternElement) -> Callable[[Tensor], Tensor]:
        if isinstance(element, str):
            args = _METHOD_ARGS.get(element, ())
            return lambda x: _tensor(getattr(x, element)(*args))
        if element is F.prelu:
            return lambda x: F.prelu(x, self.prelu_weight)
        if element is operator.getitem:
            raise ValueError("LSTM patterns are built separately")
        args, kwargs = _CALL_ARGS.get(element, ((), {}))
        function = element
        return lambda x: _tensor(function(x, *args, **kwargs))

    def forward(self, x: Tensor) -> Tensor:
        x = self.producer(x)
        for step in self.steps:
            x = step(x)
        return x

    def example_input(self) -> Tensor:
        shape = (4, 3, IMAGE, IMAGE) if self.conv else (4, IN_FEATURES)
        weight = self.producer.weight
        assert isinstance(weight, Tensor)
        return torch.randn(shape, dtype=weight.dtype)


def randomize_biases(model: nn.Module) -> None:
    """Give every Linear/Conv a non-zero bias, so folding is exercised (in place, test setup)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.uniform_(-1, 1)
