"""The records ``channel_groups`` returns: ``ChannelGroup``, its ``ChannelSlice`` members,
``Blocker`` reasons and ``SizeLiteral`` counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor, fx

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
        index: the position of the number among the node's size arguments (a slice's end);
            ``~i`` (negative) for the start of the slice at position i (an exported graph's
            ``x[..., s:k]``, whose s counts the channels before it).
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


NormMode = Literal["block", "renormalize"]
"""What :func:`channel_groups` does with a norm whose statistics run over the channels (LayerNorm,
GroupNorm, an RMSNorm without weight): ``"block"`` (the default) keeps its channels whole, since
removing some changes every other channel's output; ``"renormalize"`` prunes them anyway, as
Torch-Pruning does (the pruned norm computes its statistics over the kept channels), and the
group says it is not output-exact (``ChannelGroup.inexact``). An RMSNorm with a weight is exact
either way (``ChannelGroup.rescales``)."""


@dataclass(frozen=True)
class NormRescale:
    """An RMSNorm over channels that stays exact after pruning: ``mean(x^2)`` over all ``size``
    channels, where the removed ones are zero, is ``kept / size`` times the mean over the kept
    ones, so the pruned copy's weight is multiplied by ``sqrt(size / kept)`` and its eps by
    ``size / kept``. The masked model is unchanged (zeros in the removed channels).

    Attributes:
        node: the fx node of the norm (the ``mean`` of a hand-written RMSNorm, or the
            ``nn.RMSNorm`` call).
        weight: the FQN of the norm's per-channel weight (sliced, then rescaled).
        size: the number of channels the norm's statistics run over in the original model.
        eps: the eps in the original model; None for an ``nn.RMSNorm`` with ``eps=None``
            (``torch.finfo(x.dtype).eps`` at run time: the pruned copy gets the eps of its
            weight's dtype, times ``size / kept``, written out).
        module: the FQN of the module holding the eps ("" for the model itself).
        attribute: the eps attribute of that module (``"eps"``, ``"variance_epsilon"``); for a
            hand-written norm, found by value in the pruned copy (exactly one float attribute
            of the module must hold it).
        eps_node: the node that adds the eps as a number written in the graph ("" for an
            ``nn.RMSNorm`` call); in a GraphModule, the number there is rewritten.
        eps_index: the position of that number among the node's arguments.
        offset: the norm multiplies by ``offset + weight`` (Gemma's ``x * (1 + w)``: 1.0); the
            pruned copy's ``offset + weight`` is multiplied by ``sqrt(size / kept)``, so its
            weight becomes ``(offset + w) * sqrt(size / kept) - offset``.
        kept_dim: the dim of `weight` whose pruned size is the kept count: 0 for the norm's
            own weight; 1 for the projection in front of an RMSNorm over the dims of each head
            (Qwen3's ``q_proj`` before ``q_norm``): the whole projection is multiplied by
            ``sqrt(size / kept)``, which makes the norm's eps ``eps * size / kept`` give what it
            gave, so it can share one config eps with the hidden-size norms.
    """

    node: str
    weight: str
    size: int
    eps: float | None
    module: str
    attribute: str
    eps_node: str = ""
    eps_index: int = -1
    offset: float = 0.0
    kept_dim: int = 0

    def __str__(self) -> str:
        if self.attribute:
            where = f"`{self.module}.{self.attribute}`" if self.module else f"`{self.attribute}`"
        else:  # found by value when pruning
            where = f"(the attribute of `{self.module or 'the model'}` that holds {self.eps!r})"
        return (
            f"RMSNorm at `{self.node}` stays exact: the pruned copy's "
            f"{f'{self.offset!r} + `{self.weight}`' if self.offset else f'`{self.weight}`'} is multiplied by "
            f"sqrt({self.size} / kept) and its eps {where} by {self.size} / kept"
        )


@dataclass(frozen=True)
class Inexact:
    """Where a group pruned with ``norms="renormalize"`` stops being output-exact: a norm whose
    statistics run over the channels, which in the pruned copy cover the kept channels only.

    Attributes:
        node: the fx node of the norm.
        reason: what the pruned copy computes there instead of what the masked model does.
    """

    node: str
    reason: str


@dataclass(frozen=True)
class BiasFold:
    """Removed channels that hold a known non-zero constant where a layer reads them (after an
    op with ``f(0) != 0``: ``sigmoid``, ``softplus``, ``x + 3``), folded into that layer's bias:
    ``apply_prune`` adds ``value`` times the sum of the weight's removed columns (over the
    kernel too) to the bias, then slices as usual, so the pruned copy computes what the masked
    model computes. Exact because the value is the same at every position the layer reads (a
    Linear, or a conv without zero padding).

    Attributes:
        node: the fx node of the layer.
        weight: the FQN of the layer's weight, a consumer of the channels.
        dim: the weight dim that reads the channels (1; 0 for none so far).
        bias: the FQN of the layer's bias, which receives the removed channels' contribution.
        value: the constant the removed channels hold.
        source: what made them hold it ("`sigmoid`: sigmoid maps 0 to 0.5").
    """

    node: str
    weight: str
    dim: int
    bias: str
    value: float
    source: str = ""

    def __str__(self) -> str:
        return (
            f"removed channels hold {self.value:.6g} at `{self.node}` (after {self.source}): folded into "
            f"`{self.bias}` (exact)"
        )


GraphKind = Literal["fx", "export"]
"""The graph front-end :func:`channel_groups` read: a ``torch.fx`` trace or a ``torch.export`` graph."""


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
            its query heads; one in-group position of a grouped conv in all its groups);
            empty when each channel stands alone.
        literals: head counts written in the graph that pruning the group changes.
        rescales: RMSNorms over the channels that pruning keeps exact by rescaling their weight
            and eps in the pruned copy (see :class:`NormRescale`).
        inexact: norms where the pruned copy is NOT output-exact: with ``norms="renormalize"``
            they compute their statistics over the kept channels only (see :class:`Inexact`);
            empty for an exact group.
        folds: layers whose bias takes the constant the removed channels hold there (after
            an op with ``f(0) != 0``), so the pruned copy stays exact (see :class:`BiasFold`).
        example_shapes: the shapes and dtypes of the ``example_inputs`` that
            :func:`channel_groups` was given (None without them). :func:`fprune.apply_prune`
            runs the pruned copy once on meta tensors of these shapes before returning it.
            Not compared: groups found with and without example inputs are equal.
        graph: the front-end that found the group: ``"fx"`` (a ``torch.fx`` trace) or
            ``"export"`` (a ``torch.export`` graph, whose sizes are numbers whatever computed
            them: :func:`fprune.apply_prune` exports the pruned copy again, on the example
            shapes, to check every size it changes).
        exported: for ``graph == "export"``, the torch-level graph the groups were found in
            (what apply compares the pruned copy's graph with; None: apply exports the model
            again). Not compared.
    """

    size: int
    producers: tuple[str, ...]
    members: tuple[ChannelSlice, ...]
    blockers: tuple[Blocker, ...]
    reaches_output: bool
    units: tuple[tuple[int, ...], ...] = ()
    literals: tuple[SizeLiteral, ...] = ()
    rescales: tuple[NormRescale, ...] = ()
    inexact: tuple[Inexact, ...] = ()
    folds: tuple[BiasFold, ...] = ()
    example_shapes: ExampleShapes | None = field(default=None, compare=False, repr=False)
    graph: GraphKind = "fx"
    exported: fx.Graph | None = field(default=None, compare=False, repr=False)

    @property
    def exact(self) -> bool:
        """True if the pruned copy computes exactly what the masked model computes (no
        ``norms="renormalize"`` norm renormalizes these channels)."""
        return not self.inexact

    @property
    def prunable(self) -> bool:
        """True if nothing blocks the group and it has a producer to key its mask."""
        return not self.blockers and bool(self.producers)

    def __str__(self) -> str:
        head = f"group of {self.size} channels, produced by {', '.join(self.producers) or 'no prunable weight'}"
        status = "prunable" if self.prunable else "NOT prunable"
        if self.inexact:
            status += ', NOT output-exact (norms="renormalize")'
        lines = [f"{head}: {status}" + (" (returned by forward)" if self.reaches_output else "")]
        if self.units:
            lines.append(f"  pruned in {len(self.units)} whole units (attention heads, grouped-conv positions) of {len(self.units[0])} channels")
        for blocker in self.blockers:
            lines.append(f"  blocked at `{blocker.node}`: {blocker.reason}")
        for inexact in self.inexact:
            lines.append(f"  NOT output-exact at `{inexact.node}`: {inexact.reason}")
        for rescale in self.rescales:
            lines.append(f"  {rescale}")
        for fold in self.folds:
            lines.append(f"  {fold}")
        if not self.producers:
            lines.append("  no producer weight: these are input channels of the model")
        for member in self.members:
            lines.append(f"  {member.role:<8} {member.fqn} dim {member.dim} ({len(member.positions)} entries)")
        return "\n".join(lines)


@dataclass(frozen=True)
class GroupCriterion:
    """A criterion that scores a whole group at once, from the model's tensors and whatever
    the record holds (calibration statistics: :mod:`fprune.calibrate`); what
    :func:`~fprune.group_masks` and :func:`~fprune.group_scores` take besides a row criterion."""

    name: ClassVar[str] = "criterion"

    def scores(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
        """float32 scores of `group`'s channels, shape ``[group.size]``, higher = more important;
        `tensors` are the model's parameters and buffers by FQN."""
        raise NotImplementedError

    def read(self, tensors: Mapping[str, Tensor], group: ChannelGroup) -> Tensor | None:
        """Which of `group`'s channels the scores measure (bool, ``[group.size]``); the others
        hold a stand-in (their unit's mean) that a global ranking leaves out of its
        standardization. None: every channel is measured."""
        return None
