"""How a strictly typed user adds an open-ended pattern; `mypy --strict` checks this file."""

from __future__ import annotations

from typing import assert_type

import torch
from torch import Tensor, nn

import fprune
from fprune.patterns import Pattern, PruneFunction, ZeroOrMore


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)).abs())
        return out


def run() -> Net:
    model = Net()
    with_abs = ZeroOrMore(*fprune.patterns.PASS_THROUGH_LINEAR.elements, "abs", name="linear run with abs")
    assert_type(with_abs.elements, frozenset[fprune.patterns.PatternElement])
    pattern: Pattern = (nn.Linear, with_abs, nn.Linear)
    patterns: dict[Pattern, PruneFunction] = fprune.default_patterns()
    patterns[pattern] = fprune.patterns.prune_chain
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)
    assert matches[0].pattern == pattern
    return fprune.apply_prune(model, {"fc1.weight": fprune.saliency_mask(model.fc1.weight, 0.5)}, matches)
