"""Vision families built on grouped convolutions, written from scratch (torchvision and timm cannot
be imported here): a RegNetY-style and a ResNeXt-style network, small enough for fast tests.

Each builder seeds torch with 0 and returns ``(model in eval mode, example input)``; measure them
with ``python -m benchmarks.reach --zoo tests.zoo_grouped``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .vision_zoo import zoo_builder


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """RegNetY's SE: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` with 1x1 convs."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate: Tensor = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * gate


class YBlock(nn.Module):
    """RegNetY block (bottleneck ratio 1): 1x1 conv-BN-ReLU, 3x3 grouped conv (fixed group width)
    -BN-ReLU, SE (reduced to a quarter of the block input), 1x1 conv-BN, residual add (projection
    shortcut where the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(*_conv_bn(cin, cout), nn.ReLU())
        self.b = nn.Sequential(*_conv_bn(cout, cout, 3, stride, cout // group_width), nn.ReLU())
        self.se = SqueezeExcite(cout, max(1, cin // 4))
        self.c = nn.Sequential(*_conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.c(self.se(self.b(self.a(x))))
        short = x if self.shortcut is None else self.shortcut(x)
        result: Tensor = self.act(out + short)
        return result


class RegNetYStyle(nn.Module):
    """RegNetY layout, short: stem conv-BN-ReLU, three stages of Y-blocks (group width 8, then 16),
    global pool, flatten, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 2), nn.ReLU())
        self.stages = nn.Sequential(
            YBlock(16, 24, 2, 8),
            YBlock(24, 48, 2, 8),
            YBlock(48, 48, 1, 8),
            YBlock(48, 96, 2, 16),
            YBlock(96, 96, 1, 16),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        logits: Tensor = self.fc(x.flatten(1))
        return logits


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 conv-BN-ReLU, 3x3 conv of `cardinality` groups-BN-ReLU, 1x1 conv-BN,
    residual add (projection shortcut where the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        width = cardinality * group_width
        self.conv1 = nn.Sequential(*_conv_bn(cin, width), nn.ReLU())
        self.conv2 = nn.Sequential(*_conv_bn(width, width, 3, stride, cardinality), nn.ReLU())
        self.conv3 = nn.Sequential(*_conv_bn(width, cout))
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        short = x if self.shortcut is None else self.shortcut(x)
        result: Tensor = self.act(self.conv3(self.conv2(self.conv1(x))) + short)
        return result


class ResNeXtStyle(nn.Module):
    """ResNeXt-50 (32x4d) layout, short: stem conv-BN-ReLU, two stages of bottlenecks of
    cardinality 8 (4 channels per group, then 8), global pool, flatten, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 1), nn.ReLU())
        self.layer1 = nn.Sequential(ResNeXtBlock(32, 64, 1, 8, 4), ResNeXtBlock(64, 64, 1, 8, 4))
        self.layer2 = nn.Sequential(ResNeXtBlock(64, 128, 2, 8, 8), ResNeXtBlock(128, 128, 1, 8, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.layer2(self.layer1(self.stem(x))))
        logits: Tensor = self.fc(x.flatten(1))
        return logits


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "regnety": zoo_builder(RegNetYStyle),
    "resnext": zoo_builder(ResNeXtStyle),
}
"""Name -> builder of ``(model in eval mode, example input)``."""
