"""The records ``channel_groups`` returns: ``ChannelGroup``, its ``ChannelSlice`` members,
``Blocker`` reasons and ``SizeLiteral`` counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._util.running import ExampleShapes

Role = Literal["producer", "consumer", "carrier"]


@dataclass(frozen=True)
class ChannelSlice:
    """The part of one tensor that belongs to a group.

    Attributes:
        fqn: the tensor's FQN, e.g. ``"layer1.0.conv1.weight"``.
        dim: the tensor dim the channels index.
        role: ``"producer"`` (its rows are the channels: removed rows are zeroed in the masked
            model), ``"consumer"`` (its input columns read the channels) or ``"carrier"`` (a
            per-channel tensor that goes with them: biases, BatchNorm affine and statistics,
            depthwise conv filters, per-channel parameters added to the channels).
        positions: indices along `dim`, each belonging to the group channel at the same place
            in `channels`: a ``range`` when they step evenly (the common case, kept compact),
            else a tuple.
        channels: the group channel of each position (a ``range`` or a tuple, likewise).
    """

    fqn: str
    dim: int
    role: Role
    positions: Sequence[int]
    channels: Sequence[int]


@dataclass(frozen=True)
class Blocker:
    """Why a group cannot be pruned: an op its channels reach that fprune does not follow.

    Attributes:
        node: the fx node name.
        reason: what the op does to the channels, and what to do about it.
    """

    node: str
    reason: str


@dataclass(frozen=True)
class SizeLiteral:
    """A number written in the traced graph that counts a group's heads (e.g. the ``4`` of
    ``q.view(b, t, 4, 16)``); pruning heads changes it, so the module attribute it came from
    (``self.num_heads``) must change too.

    Attributes:
        node: the fx node name (a ``view`` / ``reshape``).
        index: the position of the number among the node's size arguments.
        value: the number in the original graph.
        heads: the group channel of one channel of each head it counts.
        factor: the number per head (1 for a head count, ``head_dim`` for a width).
        module: the FQN of the module whose forward wrote the number ("" for the model).
    """

    node: str
    index: int
    value: int
    heads: tuple[int, ...]
    factor: int
    module: str = ""


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels that must be pruned together, with every tensor slice they touch.

    Attributes:
        size: the number of channels.
        producers: weight FQNs whose rows are these channels; a keep-mask for the group is
            keyed by any of them, over that weight's dim-0 order.
        members: every tensor slice of the group.
        blockers: why the group cannot be pruned (empty if it can).
        reaches_output: the channels are part of a tensor forward returns (pruning shrinks it).
        units: sets of channels kept or removed only together (an attention head with its
            query, key and value dims; with grouped-query attention, a key/value head with all
            its query heads); empty when each channel stands alone.
        literals: head counts written in the graph that pruning the group changes.
        example_shapes: the shapes and dtypes of the ``example_inputs`` that
            :func:`channel_groups` was given (None without them). :func:`fprune.apply_prune`
            runs the pruned copy once on meta tensors of these shapes before returning it.
            Not compared: groups found with and without example inputs are equal.
    """

    size: int
    producers: tuple[str, ...]
    members: tuple[ChannelSlice, ...]
    blockers: tuple[Blocker, ...]
    reaches_output: bool
    units: tuple[tuple[int, ...], ...] = ()
    literals: tuple[SizeLiteral, ...] = ()
    example_shapes: ExampleShapes | None = field(default=None, compare=False, repr=False)

    @property
    def prunable(self) -> bool:
        """True if nothing blocks the group and it has a producer to key its mask."""
        return not self.blockers and bool(self.producers)

    def __str__(self) -> str:
        head = f"group of {self.size} channels, produced by {', '.join(self.producers) or 'no prunable weight'}"
        status = "prunable" if self.prunable else "NOT prunable"
        lines = [f"{head}: {status}" + (" (returned by forward)" if self.reaches_output else "")]
        if self.units:
            lines.append(f"  pruned in {len(self.units)} whole units (attention heads) of {len(self.units[0])} channels")
        for blocker in self.blockers:
            lines.append(f"  blocked at `{blocker.node}`: {blocker.reason}")
        if not self.producers:
            lines.append("  no producer weight: these are input channels of the model")
        for member in self.members:
            lines.append(f"  {member.role:<8} {member.fqn} dim {member.dim} ({len(member.positions)} entries)")
        return "\n".join(lines)
