"""The exactness check of the channel-group tests: prune a float64 copy by ``group_masks`` and
compare it with the masked model (``masked_parameters``) on the example input."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.groups import ChannelGroup


def groups_with_shapes(model: nn.Module, x: Tensor) -> tuple[ChannelGroup, ...]:
    """``channel_groups`` of the traced `model`, with `x` as the example input."""
    return fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))


def prune_exactly(
    model: nn.Module,
    x: Tensor,
    level: float = 0.5,
    *,
    find: Callable[[nn.Module, Tensor], tuple[ChannelGroup, ...]] = groups_with_shapes,
) -> tuple[nn.Module, tuple[ChannelGroup, ...]]:
    """The float64 copy of `model` pruned at `level` (some group must lose channels) and its
    groups (found by `find`: through the fx trace by default), after checking that it computes
    what the masked model computes; `model` is left as it was."""
    model, x = copy.deepcopy(model).double(), x.double() if x.is_floating_point() else x  # token ids stay integers
    groups = find(model, x)
    masks = fprune.group_masks(model, groups, level)
    assert masks, fprune.explain(groups)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
        torch.testing.assert_close(pruned(x), expected, rtol=1e-9, atol=1e-10)
    return pruned, groups
