"""Rules for functions that fx keeps whole (``torch.fx.wrap``), keyed by their qualified name so
that fprune needs no import of the library that defines them: torchvision's ``stochastic_depth``."""

from __future__ import annotations

from ..._errors import PruneError
from .._flow import Flow, FlowContext


def stochastic_depth_rule(ctx: FlowContext) -> Flow:
    """torchvision's ``stochastic_depth(input, p, mode, training)``: ``input`` times noise of shape
    ``[B, 1, ..., 1]`` ("row") or ``[1, ..., 1]`` ("batch"), drawn without regard to the channels:
    removed channels stay zero and the copy draws the same random numbers. Channels whose removed
    entries are not zero are blocked by the walk (the noise scales their value per sample)."""
    if any(ctx.flow(value) is not None for value in (*ctx.node.args[1:], *ctx.node.kwargs.values())):
        raise PruneError(f"`{ctx.node.name}` (stochastic_depth) reads channels in an argument other than its input")
    return ctx.input(0)
