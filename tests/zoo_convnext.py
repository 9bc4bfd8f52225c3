"""ConvNeXt, written from scratch in the timm and torchvision styles (neither can be imported
here): channels-last permutes around LayerNorm and the MLP, layer scale, stochastic depth.

Each builder seeds torch with 0 and returns ``(model in eval mode, example input)``; call
``.train()`` on the model for the train-mode graph (fx traces the branch of the module's
current mode: in train mode, stochastic depth multiplies by a random ``(B, 1, 1, 1)`` tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vision_zoo import zoo_builder

ScaleForm = Literal["mul", "rmul", "view", "index", "param"]
"""How a block applies layer scale: ``x.mul(gamma)`` / ``gamma * x`` on channels-last (gamma of
shape (C,)), ``gamma.view(1, -1, 1, 1) * x`` / ``gamma[:, None, None] * x`` on channels-first, or
torchvision's ``layer_scale * x`` with a (C, 1, 1) parameter on channels-first."""

DropForm = Literal["timm", "torchvision"]

NormForm = Literal["layer", "batch"]
"""ConvNeXt's LayerNorms (which block the residual stream), or BatchNorms in their place (the
stream is then prunable too: what exercises layer scale and stochastic depth on pruned channels)."""


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm over the channels of an NCHW tensor. Not a torch.nn module, so torch.fx
    traces into it: permute, ``F.layer_norm``, permute."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """timm's stochastic depth: zero whole samples of the batch, scale the others up."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm's ``DropPath``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision's ``stochastic_depth`` (without its ``torch.fx.wrap``: traced through)."""
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth``."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


class Mlp(nn.Module):
    """timm's ``Mlp``: Linear C -> 4C, GELU, Linear 4C -> C (on channels-last)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 conv, permute to channels-last, LayerNorm, MLP, layer scale, permute back,
    stochastic depth, residual add."""

    def __init__(self, dim: int, drop_prob: float, scale: ScaleForm, drop: DropForm, norm: NormForm = "layer") -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm: nn.Module = nn.LayerNorm(dim) if norm == "layer" else nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.scale = scale
        self.gamma = nn.Parameter(torch.empty(dim, 1, 1) if scale == "param" else torch.empty(dim).uniform_(0.5, 1.5))
        if scale == "param":
            nn.init.uniform_(self.gamma, 0.5, 1.5)
        self.drop_path: nn.Module = DropPath(drop_prob) if drop == "timm" else StochasticDepth(drop_prob, "row")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if isinstance(self.norm, nn.BatchNorm2d):  # channels-first
            x = self.norm(x)
        x = x.permute(0, 2, 3, 1)
        if isinstance(self.norm, nn.LayerNorm):  # channels-last
            x = self.norm(x)
        x = self.mlp(x)
        if self.scale == "mul":
            x = x.mul(self.gamma)
        elif self.scale == "rmul":
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        if self.scale == "view":
            x = self.gamma.view(1, -1, 1, 1) * x
        elif self.scale == "index":
            x = x * self.gamma[:, None, None]
        elif self.scale == "param":
            x = self.gamma * x
        out: Tensor = self.drop_path(x) + shortcut
        return out


class ConvNeXt(nn.Module):
    """ConvNeXt layout, small: stem conv 4x4 / 4 + LayerNorm2d, stages of blocks with a
    LayerNorm2d + conv 2x2 / 2 downsample between them, head: global average pool, LayerNorm,
    Linear."""

    def __init__(
        self,
        dims: tuple[int, ...] = (16, 32),
        depths: tuple[int, ...] = (2, 2),
        scales: tuple[ScaleForm, ...] = ("mul", "rmul"),
        drop: DropForm = "timm",
        drop_rate: float = 0.5,
        num_classes: int = 10,
        norm: NormForm = "layer",
    ) -> None:
        super().__init__()

        def norm2d(dim: int) -> nn.Module:
            return LayerNorm2d(dim) if norm == "layer" else nn.BatchNorm2d(dim)

        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), norm2d(dims[0]))
        stages: list[nn.Module] = []
        blocks = sum(depths)
        index = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.Sequential(norm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2)))
            for _ in range(depth):
                rate = drop_rate * index / max(1, blocks - 1)  # the linear decay rule: the first block never drops
                layers.append(ConvNeXtBlock(dim, rate, scales[index % len(scales)], drop, norm))
                index += 1
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm: nn.Module = nn.LayerNorm(dims[-1]) if norm == "layer" else nn.BatchNorm1d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        logits: Tensor = self.head(self.norm(x.mean((2, 3))))
        return logits


def randomize_norms(model: nn.Module) -> None:
    """Non-trivial LayerNorm and BatchNorm1d parameters (``zoo_builder`` does BatchNorm2d), so
    that exactness checks bite."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            if isinstance(module, nn.BatchNorm1d):
                mean, var = module.running_mean, module.running_var
                assert mean is not None and var is not None
                mean.uniform_(-0.5, 0.5)
                var.uniform_(0.5, 1.5)


def _convnext(scales: tuple[ScaleForm, ...], drop: DropForm, norm: NormForm = "layer") -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        model = ConvNeXt(scales=scales, drop=drop, norm=norm)
        randomize_norms(model)
        return model

    return factory


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "convnext": zoo_builder(_convnext(scales=("mul", "rmul"), drop="timm")),
    "convnext_tv": zoo_builder(_convnext(scales=("param",), drop="torchvision")),
    "convnext_cf": zoo_builder(_convnext(scales=("view", "index"), drop="timm")),
    "convnext_bn": zoo_builder(_convnext(scales=("mul", "view", "param", "rmul"), drop="timm", norm="batch")),
    "convnext_bn_tv": zoo_builder(_convnext(scales=("index", "param"), drop="torchvision", norm="batch")),
}
"""Name -> builder of ``(model in eval mode, example input)``: timm's ConvNeXt (``x.mul(gamma)`` and
``gamma * x``, ``DropPath``), torchvision's (a (C, 1, 1) ``layer_scale``, ``StochasticDepth``), and
layer scale viewed channels-first (``gamma.view(1, -1, 1, 1) * x``, ``x * gamma[:, None, None]``); the
``_bn`` ones with BatchNorms in place of the LayerNorms, so that the residual stream is prunable too."""
