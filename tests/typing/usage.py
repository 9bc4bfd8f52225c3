"""How a strictly typed user calls fprune; `mypy --strict` checks this file (tests/test_typing.py runs it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import assert_type

import torch
from torch import Tensor, nn

import fprune
from fprune import Match
from fprune.patterns import Op, Pattern, PruneFunction


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


def prune_with_a_log(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """A user's prune function: delegates to the shipped engine."""
    return fprune.patterns.prune_chain(ops, keep, prune_bias=prune_bias)


def run() -> Net:
    model = Net()
    patterns: dict[Pattern, PruneFunction] = fprune.default_patterns()
    patterns[(nn.Linear, torch.relu, nn.Linear)] = prune_with_a_log
    matches: tuple[Match, ...] = fprune.match_patterns(torch.fx.symbolic_trace(model), patterns)
    masks: dict[str, Tensor] = {"fc1.weight": fprune.saliency_mask(model.fc1.weight, 0.5)}
    pruned = fprune.apply_prune(model, masks, matches)
    assert_type(pruned, Net)
    params = fprune.masked_parameters(model, masks, matches)
    assert_type(params, dict[str, Tensor])
    first = matches[0]
    assert_type(first.weight_fqn, str)
    assert_type(first.ops, tuple[fprune.patterns.MatchedOp, ...])
    try:
        fprune.select_kept(torch.tensor([1.0, float("nan")]), 0.5)
    except fprune.PruneError as error:
        assert_type(error, fprune.PruneError)
    return pruned
