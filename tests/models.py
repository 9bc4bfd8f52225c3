"""Small reference models for the tests (no downloads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fprune._demo import ReferenceMLP

__all__ = ["REFERENCE_PRUNED_SHAPES", "Branching", "ConvBNNet", "LSTMNet", "ReferenceMLP", "TwiceCalled", "HardCodedView"]

REFERENCE_PRUNED_SHAPES = {
    "seq.0.weight": (250, 700),
    "seq.0.bias": (250,),
    "seq.2.weight": (400, 250),
    "seq.4.weight": (300, 400),
    "seq.4.bias": (300,),
    "linear.weight": (2, 300),
}
"""The reference MLP's parameter shapes after pruning every weight at level 0.5 (396150 parameters)."""


class ConvBNNet(nn.Module):
    """conv -> bn -> relu -> maxpool -> conv -> bn -> leaky_relu(0.2) -> adaptive pool -> flatten -> linear."""

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=padding)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=padding)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        x = F.adaptive_avg_pool2d(x, 2)
        return self.head(torch.flatten(x, 1))  # type: ignore[no-any-return]


class Branching(nn.Module):
    """A residual add after `fc1` and a concat after `fc2`: chains must not follow either."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 4)
        self.fc4 = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.fc1(x)
        y = self.fc3(F.relu(h) + h)
        z = self.fc2(x)
        w = self.fc4(torch.cat([z, z], dim=1))
        return y, w


class TwiceCalled(nn.Module):
    """`fc` is called twice in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fc(self.fc(x)))  # type: ignore[no-any-return]


class HardCodedView(nn.Module):
    """A forward that reshapes with a hard-coded width after `fc1`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).view(-1, 8))  # type: ignore[no-any-return]


class LSTMNet(nn.Module):
    """LSTM (batch_first) -> output[0] -> optional LayerNorm -> Linear."""

    def __init__(self, layers: int = 2, norm: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 8, layers, batch_first=True)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.linear = nn.Linear(8, 3)
        self.with_norm = norm

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        if self.with_norm:
            out = self.norm(out)
        return self.linear(out)  # type: ignore[no-any-return]


class TiedEmbeddingLM(nn.Module):
    """An embedding tied to the output layer (language-model style), with an MLP between them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.out(self.fc2(torch.relu(self.fc1(self.embed(ids)))))
        return out


class TiedLinear(nn.Module):
    """fc3 reuses fc2's weight; a mask on fc1 cuts fc2's columns, which fc3 cannot lose."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.fc3.weight = self.fc2.weight

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc4(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))
        return out


class Untraceable(nn.Module):
    """Data-dependent control flow in forward: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x) if bool(x.sum() > 0) else x
        return out
