"""Vision families with squeeze-and-excitation gates and friends, written from scratch (torchvision
and timm cannot be imported here): what issue 13 measures fprune's reach on.

Each builder seeds torch with 0 and returns ``(model in eval mode, example input)``. The layouts
follow the real ones (block structure, gates, activations), at a small width and depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """timm / torchvision squeeze-and-excitation: ``x * gate(expand(act(reduce(mean(x)))))``."""

    def __init__(self, channels: int, reduced: int, act: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        gate: Tensor = self.gate(s)
        return x * gate


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNorm with a fused activation: ``act(F.batch_norm(x, ...))``. Not a torch.nn
    module, so torch.fx traces into it: the graph holds ``F.batch_norm`` with the module's own
    tensors, not a BatchNorm2d call."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        out: Tensor = self.act(x)
        return out


class MBConv(nn.Module):
    """EfficientNet inverted residual: expand conv1x1-BNAct(SiLU), depthwise conv-BNAct, SE (SiLU,
    sigmoid gate, reduced to a quarter of the block's input), project conv1x1-BN, and the residual
    add when the shape allows."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4), nn.SiLU(), nn.Sigmoid())
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv_pw(x))
        out = self.bn2(self.conv_dw(out))
        out = self.bn3(self.conv_pwl(self.se(out)))
        result: Tensor = out + x if self.residual else out
        return result


class EfficientNetStyle(nn.Module):
    """EfficientNet-B0 layout, short: stem conv-BN-SiLU, MBConv stages, head conv1x1-BN-SiLU,
    global pool, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16, 1, 1), MBConv(16, 24, 6, 2), MBConv(24, 24, 6, 1), MBConv(24, 40, 6, 2))
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.SiLU())
        self.classifier = nn.Linear(96, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        logits: Tensor = self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return logits


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bneck: expand conv1x1-BN-act, depthwise conv-BN-act, optional SE (ReLU,
    hard-sigmoid gate, reduced to a quarter), project conv1x1-BN, residual when the shape allows."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, se: bool, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), act())
        self.se = SqueezeExcite(mid, mid // 4, nn.ReLU(), nn.Hardsigmoid()) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        result: Tensor = out + x if self.residual else out
        return result


class MobileNetV3Style(nn.Module):
    """MobileNetV3-Small layout, short: stem conv-BN-hardswish, bnecks with and without SE,
    head conv1x1-BN-hardswish, pool, Linear-hardswish-Linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            MobileNetV3Block(16, 16, 16, 2, True, nn.ReLU),
            MobileNetV3Block(16, 72, 24, 2, False, nn.ReLU),
            MobileNetV3Block(24, 88, 24, 1, False, nn.ReLU),
            MobileNetV3Block(24, 96, 40, 2, True, nn.Hardswish),
            MobileNetV3Block(40, 120, 40, 1, True, nn.Hardswish),
        )
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        logits: Tensor = self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return logits


def randomize_batchnorms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that exactness checks bite."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                mean, var = module.running_mean, module.running_var
                assert mean is not None and var is not None
                mean.uniform_(-0.5, 0.5)
                var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


def zoo_builder(factory: Callable[[], nn.Module]) -> Callable[[], tuple[nn.Module, Tensor]]:
    def build() -> tuple[nn.Module, Tensor]:
        torch.manual_seed(0)
        model = factory()
        randomize_batchnorms(model)
        return model.eval(), torch.randn(2, 3, 32, 32)

    return build


VISION_ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "efficientnet": zoo_builder(EfficientNetStyle),
    "mobilenetv3": zoo_builder(MobileNetV3Style),
}
"""Name -> builder of ``(model in eval mode, example input)``."""

ZOO = VISION_ZOO
"""What ``python -m benchmarks.reach`` measures by default."""
