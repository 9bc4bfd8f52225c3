"""CNN families whose channels pass through layout ops: ShuffleNetV2 (chunk, cat and a channel
shuffle written with view / transpose / view), GhostNet (a cat sliced back with ``out[:, :oup]``)
and YOLOv8's C2f (chunk / split, a growing list of pieces concatenated). Written from scratch
(torchvision, timm and ultralytics cannot be imported here), small, with the forwards written as
those libraries write them.

One deviation: ultralytics writes ``y = list(self.cv1(x).chunk(2, 1))``; torch.fx cannot iterate a
traced tensor inside ``list(...)`` (it can only unpack one), so :class:`C2f` unpacks the pieces
into the list instead; the graph is the same.

Each builder seeds torch with 0 and returns ``(model in eval mode, x)``, x = randn(2, 3, 32, 32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vision_zoo import zoo_builder

# --- ShuffleNetV2 (torchvision.models.shufflenetv2) ---------------------------------------------


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision's channel shuffle, verbatim."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups

    # reshape
    x = x.view(batchsize, groups, channels_per_group, height, width)

    x = torch.transpose(x, 1, 2).contiguous()

    # flatten
    x = x.view(batchsize, num_channels, height, width)

    return x


def channel_shuffle_flat(x: Tensor, groups: int) -> Tensor:
    """The same shuffle, flattened back with ``-1`` (as several ports write it)."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class InvertedResidual(nn.Module):
    """torchvision's ShuffleNetV2 unit: stride 1 splits the channels in halves and convolves one;
    stride 2 convolves the input twice; either concatenates and shuffles the two halves."""

    def __init__(self, inp: int, oup: int, stride: int, shuffle: Callable[[Tensor, int], Tensor] = channel_shuffle) -> None:
        super().__init__()
        self.stride = stride
        self.shuffle = shuffle
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, self.stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, self.stride, 1, groups=branch_features, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)

        out = self.shuffle(out, 2)

        return out


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNetV2 layout (0.5x widths, fewer repeats): stem conv-BN-ReLU and max
    pool, three stages (a stride-2 unit, then stride-1 units), conv5, global mean, fc. The last
    stage shuffles with the ``view(b, -1, h, w)`` form."""

    def __init__(self, repeats: tuple[int, ...] = (2, 3, 2), channels: tuple[int, ...] = (24, 48, 96, 192, 256), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Module] = []
        inp = channels[0]
        for index, (repeat, oup) in enumerate(zip(repeats, channels[1:])):
            shuffle = channel_shuffle_flat if index == len(repeats) - 1 else channel_shuffle
            units = [InvertedResidual(inp, oup, 2, shuffle)] + [InvertedResidual(oup, oup, 1, shuffle) for _ in range(repeat - 1)]
            stages.append(nn.Sequential(*units))
            inp = oup
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(nn.Conv2d(inp, channels[-1], 1, 1, 0, bias=False), nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        logits: Tensor = self.fc(x)
        return logits


# --- GhostNet (the paper's code; timm's layout) -------------------------------------------------


class GhostModule(nn.Module):
    """A primary 1x1 conv makes ``ceil(oup / 2)`` channels, a cheap depthwise conv makes as many
    again from them; the concat is cut back to `oup` (one channel of the cheap half goes when
    `oup` is odd)."""

    def __init__(self, inp: int, oup: int, relu: bool = True) -> None:
        super().__init__()
        self.oup = oup
        init_channels = -(-oup // 2)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, init_channels, 3, 1, 1, groups=init_channels, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.oup, :, :]


class GhostSqueezeExcite(nn.Module):
    """GhostNet's SE: pool, reduce conv, ReLU, expand conv, ``x * hard_sigmoid(gate)`` with the
    original paper code's hard sigmoid written out, ``F.relu6(x + 3.0) / 6.0``."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x_se = self.avg_pool(x)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        out: Tensor = x * (F.relu6(x_se + 3.0) / 6.0)
        return out


class GhostBottleneck(nn.Module):
    """Ghost module (ReLU), a depthwise conv-BN when strided, SE, ghost module (no ReLU), plus the
    shortcut (identity, or depthwise conv-BN and 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, relu=True)
        if self.stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = GhostSqueezeExcite(mid_chs, max(4, mid_chs // 4)) if se else None
        self.ghost2 = GhostModule(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and self.stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, 3, stride, 1, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.conv_dw(x)
            x = self.bn_dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        x += self.shortcut(residual)
        return x


class GhostNet(nn.Module):
    """GhostNet's layout, short: stem conv-BN-ReLU, ghost bottlenecks (odd widths, so that the
    ghost modules' slices drop a channel, as ``oup`` does at other width multipliers), a 1x1
    conv-BN-ReLU, global pool, conv_head-ReLU, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(
            GhostBottleneck(16, 16, 16),
            GhostBottleneck(16, 47, 23, stride=2),
            GhostBottleneck(23, 71, 23),
            GhostBottleneck(23, 71, 39, stride=2, se=True),
            GhostBottleneck(39, 119, 39, se=True),
            nn.Sequential(nn.Conv2d(39, 120, 1, bias=False), nn.BatchNorm2d(120), nn.ReLU(inplace=True)),
        )
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(120, 160, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(160, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.global_pool(x)
        x = self.act2(self.conv_head(x))
        x = x.view(x.size(0), -1)
        logits: Tensor = self.classifier(x)
        return logits


# --- YOLOv8 C2f (ultralytics.nn.modules) --------------------------------------------------------


class Conv(nn.Module):
    """ultralytics' Conv: conv-BN-SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class Bottleneck(nn.Module):
    """ultralytics' Bottleneck: two 3x3 Convs, plus the input when `shortcut`."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))
        return out


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 makes ``2 * c`` channels, split in halves; each bottleneck adds a piece
    from the last; cv2 mixes the concat of all pieces. `split` selects ultralytics'
    ``forward_split`` (``split((self.c, self.c), 1)``) instead of ``chunk(2, 1)``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5, split: bool = False) -> None:
        super().__init__()
        self.c = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))
        self.split = split

    def forward(self, x: Tensor) -> Tensor:
        if self.split:
            y0, y1 = self.cv1(x).split((self.c, self.c), 1)
        else:
            y0, y1 = self.cv1(x).chunk(2, 1)
        y = [y0, y1]
        y.extend(m(y[-1]) for m in self.m)
        out: Tensor = self.cv2(torch.cat(y, 1))
        return out


class C2fNet(nn.Module):
    """A small YOLOv8-style backbone: strided Convs with C2f stages (chunk and split forms, with
    and without shortcuts), then a classifier head (ultralytics' Classify: Conv, pool, Linear)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(
            Conv(3, 16, 3, 2),
            Conv(16, 32, 3, 2),
            C2f(32, 32, 1, True),
            Conv(32, 64, 3, 2),
            C2f(64, 64, 2, True, split=True),
            Conv(64, 128, 3, 2),
            C2f(128, 128, 1, False),
        )
        self.head = Conv(128, 160, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(160, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.head(self.model(x)))
        logits: Tensor = self.linear(x.flatten(1))
        return logits


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "shufflenetv2": zoo_builder(ShuffleNetV2),
    # torchvision's x1.0 widths and depths: deep stages tie their streams into one unit (README)
    "shufflenetv2_x1_0": zoo_builder(lambda: ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024))),
    "ghostnet": zoo_builder(GhostNet),
    "c2f": zoo_builder(C2fNet),
}
"""Name -> builder of ``(model in eval mode, example input)``: what ``python -m benchmarks.reach
--zoo tests.zoo_cnn_layout`` measures."""
