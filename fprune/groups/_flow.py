"""The flow-rule API: how a rule sees and records what an op does to channels (``Axis``,
``HeadAxis``, ``Flow``, ``FlowContext``, ``FlowRule``, ``RuleKey``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar, Union

import torch
from torch import Tensor, fx, nn

from .._errors import PruneError
from .._ops import OpKey
from ._records import BiasFold, Blocker, Inexact, NormMode, NormRescale, Role

if TYPE_CHECKING:
    from ._walk import Analysis

# --- analysis state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """The channel axis of one tensor during the analysis.

    Attributes:
        dim: the tensor dim holding the channels, negative (counted from the last dim).
        ids: the channel id of each channel, in order along `dim`.
        inner: consecutive positions per channel (a flatten of trailing dims: ``H * W``).
        outer: repetitions of the whole channel block along `dim` (a flatten of leading dims).
        ndim: the tensor's number of dims, if known.
        nonzero: "" while the removed channels are exactly zero here (what pruning needs);
            else what made them carry a non-zero value (an ``f(0) != 0`` op such as an SE
            gate's sigmoid: "`sigmoid`: sigmoid maps 0 to 0.5"). At an op whose rule is not
            marked :func:`handles_nonzero`, the walk blocks such channels. A product with
            zeros makes them zero again (``x * sigmoid(gate)``: an SE gate is exact).
        constant: where `nonzero` is set, the one value the removed channels hold at every
            position of the tensor, if known (``sigmoid``: 0.5); None where it is unknown or may
            differ between positions. A consumer (a Linear, an unpadded conv) folds a known
            constant into its bias (:class:`~fprune.groups.BiasFold`). Ignored while `nonzero`
            is "" (the removed channels are 0).
    """

    dim: int
    ids: tuple[int, ...]
    inner: int = 1
    outer: int = 1
    ndim: int | None = None
    nonzero: str = ""
    constant: float | None = None

    @property
    def removed_value(self) -> float | None:
        """What the removed channels hold at every position: 0.0 while `nonzero` is "", else
        `constant` (None if unknown)."""
        return self.constant if self.nonzero else 0.0

    def positions(self) -> Iterator[tuple[int, int]]:
        """(position along dim, index into ids) for every position."""
        if self.inner < 0:
            raise PruneError("the size of flattened channels is unknown; pass example_inputs")
        block = len(self.ids) * self.inner
        for o in range(self.outer):
            for c in range(len(self.ids)):
                for i in range(self.inner):
                    yield o * block + c * self.inner + i, c

    @property
    def width(self) -> int:
        return len(self.ids) * self.inner * self.outer


@dataclass(frozen=True)
class HeadAxis:
    """Channels split into attention heads: one dim indexes heads, another the dims of a head.

    Attributes:
        head_dim: the dim indexing heads, negative.
        inner_dim: the dim indexing channels within a head, negative; None after the head
            dims were contracted away (attention scores).
        heads: the channel ids of each head, in order along `head_dim`.
        ndim: the tensor's number of dims.
    """

    head_dim: int
    inner_dim: int | None
    heads: tuple[tuple[int, ...], ...]
    ndim: int

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(i for head in self.heads for i in head)


Flow: TypeAlias = Union[Axis, HeadAxis, tuple["Flow", ...], None]


@dataclass(frozen=True)
class SizeRead:
    """A number read from a tensor's shape on a dim that holds channels (the ``C`` of
    ``B, N, C = x.shape``, or ``x.size(-1)``): pruning those channels changes it.

    Attributes:
        ids: the channels it counts.
        plain: True if it is their kept count (one position per channel); False if it counts
            them otherwise (the number of attention heads, a flattened block).
        node: the node that read it.
    """

    ids: tuple[int, ...]
    plain: bool
    node: str


ShapeRead: TypeAlias = tuple[Union[SizeRead, None], ...]


@dataclass
class Member:
    fqn: str
    dim: int
    role: Role
    axis: Axis


class FlowContext:
    """What a flow rule sees and records: the node, its module, its inputs' channel axes.

    Rules call :meth:`produce`, :meth:`consume`, :meth:`carry`, :meth:`merge` and
    :meth:`block` to describe what the op does to channels, and return the output's flow.
    """

    def __init__(self, analysis: Analysis, node: fx.Node) -> None:
        self._analysis = analysis
        self.node = node
        self.module: nn.Module | None = (
            analysis.modules.get(str(node.target)) if node.op == "call_module" else None
        )
        self.module_fqn = str(node.target) if node.op == "call_module" else ""
        self._claimed: set[str] = set()
        self.carried: list[tuple[str, bool]] = []  # (FQN, is a parameter) of each carry() of this node

    def flow(self, value: object) -> Flow:
        """The channel flow of an argument (None for constants and untracked values)."""
        if isinstance(value, fx.Node):
            return self._analysis.flows.get(value.name)
        if isinstance(value, (tuple, list)):
            flows = tuple(self.flow(v) for v in value)
            return flows if any(f is not None for f in flows) else None
        return None

    def input(self, index: int = 0) -> Flow:
        """The flow of positional argument `index`."""
        args = self.node.args
        return self.flow(args[index]) if index < len(args) else None

    def arg(self, index: int, name: str, default: object = None) -> object:
        """Positional argument `index` (after none) or keyword `name` of the node."""
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def shape(self, value: object = None, *, run: bool = True) -> tuple[int, ...] | None:
        """The shape of the node's output (or of another node), if shapes are known.

        Shapes come from ``node.meta`` if tracing recorded them, else from one run of the
        example inputs, made on the first call that needs it (``run=False`` never runs it).
        """
        node = self.node if value is None else value
        if isinstance(node, fx.Node):
            return self._analysis.shapes.get(node.name, run=run)
        return None

    def channel_count(self, value: object) -> tuple[int, ...] | None:
        """The channels a size argument counts, if it was read from a tensor's shape on a dim
        of plain channels (the ``C`` of ``B, N, C = x.shape``; ``x.size(-1)``): it is their kept
        count. The rule then answers for it (typically by :meth:`merge`-ing those channels with
        the ones the size lays out); a read that no rule answers for blocks its channels.
        None for any other value."""
        if isinstance(value, fx.Node):
            read = self._analysis.reads.get(value.name)
            if isinstance(read, SizeRead) and read.plain:
                self._claimed.add(value.name)
                return read.ids
        return None

    def module_of(self, value: object) -> nn.Module | None:
        """The module a ``call_module`` node calls (None for any other value)."""
        if isinstance(value, fx.Node) and value.op == "call_module":
            return self._analysis.modules.get(str(value.target))
        return None

    def attr(self, value: object) -> tuple[str, Tensor] | None:
        """(FQN, tensor) if `value` is a ``get_attr`` node of a model tensor."""
        if isinstance(value, fx.Node) and value.op == "get_attr":
            fqn = str(value.target)
            tensor = self._analysis.tensors.get(fqn)
            if tensor is not None:
                return fqn, tensor
        return None

    def produce(
        self, name: str, dim: int, count: int, *, ndim: int | None = None, out_dim: int = -1, outer: int = 1
    ) -> Axis:
        """New channels: rows `dim` of this module's tensor `name`; returns the output's axis.

        `outer` > 1: the tensor holds the channels `outer` times along `dim`, block after block
        (an LSTM's 4 gates: unit j is rows j, H + j, 2H + j, 3H + j).
        """
        ids = self._new_ids(count)
        axis = Axis(out_dim, ids, ndim=ndim)
        fqn = self._tensor_fqn(name)
        self._analysis.members.append(Member(fqn, dim, "producer", Axis(dim, ids, outer=outer)))
        self._analysis.producers.append((fqn, ids))
        return axis

    def consume(self, name: str, dim: int, axis: Axis) -> None:
        """This module's tensor `name` reads the channels of `axis` along `dim`."""
        self._analysis.members.append(Member(self._tensor_fqn(name), dim, "consumer", axis))

    def carry(self, name: str, dim: int, axis: Axis, *, fqn: str | None = None) -> None:
        """Tensor `name` of this module (or the model tensor `fqn`) goes with the channels."""
        fqn = fqn or self._tensor_fqn(name)
        self._analysis.members.append(Member(fqn, dim, "carrier", axis))
        self.carried.append((fqn, isinstance(self._analysis.tensors.get(fqn), nn.Parameter)))

    def merge(self, a: Axis, b: Axis) -> Axis | None:
        """Unite the channels of two aligned axes elementwise; None if they do not align."""
        if (len(a.ids), a.inner, a.outer) != (len(b.ids), b.inner, b.outer) or a.dim != b.dim:
            return None
        for x, y in zip(a.ids, b.ids):
            self._analysis.uf.union(x, y)
        return a if a.ndim is not None else b

    def tie(self, ids: Sequence[int]) -> None:
        """The channels `ids` are kept or removed only together (one unit, e.g. a head)."""
        units = self._analysis.units
        for i in ids:
            units.setdefault(i, i)
        root = unit_root(units, ids[0])
        for i in ids[1:]:
            other = unit_root(units, i)
            if other != root:
                units[other] = root

    def tie_positions(self, ids: Sequence[int], groups: int) -> None:
        """Split `ids` into `groups` equal blocks and make position j of every block one unit, so
        that every block keeps the same positions (a grouped conv's groups, a GroupNorm's, the
        groups of a channel shuffle)."""
        per = len(ids) // groups
        for j in range(per):
            self.tie([ids[g * per + j] for g in range(groups)])

    def literal(
        self, index: int, value: int, heads: HeadAxis | Sequence[int], factor: int, *, node: fx.Node | None = None
    ) -> None:
        """Size argument `index` of this node (or of `node`, a view this rule looked through)
        is `value`: the kept count of `heads` (heads, or channels given by one id each) times
        `factor`."""
        counted = tuple(h[0] for h in heads.heads) if isinstance(heads, HeadAxis) else tuple(heads)
        node = self.node if node is None else node
        stack = node.meta.get("nn_module_stack") or {}
        module = ""
        if stack:
            key, entry = list(stack.items())[-1]
            module = entry[0] if isinstance(entry, tuple) and isinstance(entry[0], str) else str(key)
        self._analysis.literals.append((node.name, index, value, counted, factor, module))

    @property
    def norms(self) -> NormMode:
        """``channel_groups(norms=...)``: ``"block"`` or ``"renormalize"`` (see :data:`NormMode`)."""
        return self._analysis.norms

    @property
    def exported(self) -> bool:
        """The graph is a ``torch.export`` graph: every size in it is a number, even one the model
        computed from a tensor's shape. A number equal to a channel count is then recorded as a
        literal (:meth:`literal`), which apply checks by exporting the pruned copy again."""
        return self._analysis.exported

    @property
    def root(self) -> nn.Module | None:
        """The model the graph was traced from, where the caller gave it (``prune_channels``
        does); None otherwise. For checks on module attributes the graph does not keep."""
        return self._analysis.root

    def rescale(self, record: NormRescale, axis: Axis) -> None:
        """The channels of `axis` pass an RMSNorm that pruning keeps exact by rescaling its
        weight and eps in the pruned copy (``apply_prune`` does it)."""
        self._analysis.rescales.append((record, axis.ids))

    def fold(self, record: BiasFold, axis: Axis) -> None:
        """The removed channels of `axis` hold the constant ``record.value`` where this layer
        reads them: the pruned copy adds their contribution to the layer's bias."""
        self._analysis.folds.append((record, axis.ids))

    def inexact(self, flow: Flow, reason: str) -> None:
        """The channels of `flow` pass a norm that the pruned copy computes over the kept
        channels only (``norms="renormalize"``): their groups are not output-exact."""
        for axis in axes(flow):
            self._analysis.inexact.append((Inexact(self.node.name, reason), axis.ids))

    def once(self, key: Hashable, check: Callable[[], None]) -> None:
        """Run `check` unless it already returned for `key` during this analysis (a check
        that raises is not remembered, so it runs, and raises, again for the next op).

        For work a rule does per kind of op rather than per node, e.g. checking that a
        stateless activation module keeps zeros: a deep MLP's 512 ReLUs are checked once.
        `key` must identify everything the check depends on.
        """
        done = self._analysis.checked
        if key not in done:
            check()
            done.add(key)

    def fixed(self, count: int, dim: int, reason: str, *, ndim: int | None = None) -> Axis:
        """An axis of `count` channels that no producer fprune follows makes (a tensor it does not
        track, placed beside tracked ones by a concat): fresh channels, blocked with `reason`,
        so they stay as they are while the others can still be pruned."""
        ids = self._new_ids(count)
        self._analysis.anonymous.append(ids)
        axis = Axis(dim, ids, ndim=ndim)
        self.block(axis, reason)
        return axis

    def block(self, flow: Flow, reason: str) -> None:
        """Mark every channel of `flow` not prunable, because of this node."""
        for axis in axes(flow):
            for channel in axis.ids:
                self._analysis.blocked.setdefault(channel, Blocker(self.node.name, reason))

    def _new_ids(self, count: int) -> tuple[int, ...]:
        """`count` fresh channel ids (their tensor made once, from the range)."""
        start = self._analysis.uf.count
        ids = self._analysis.uf.new(count)
        self._analysis.id_tensors[id(ids)] = (ids, torch.arange(start, start + count))
        return ids

    def _tensor_fqn(self, name: str) -> str:
        return f"{self.module_fqn}.{name}" if self.module_fqn else name


def axes(flow: Flow) -> Iterator[Axis | HeadAxis]:
    if isinstance(flow, (Axis, HeadAxis)):
        yield flow
    elif isinstance(flow, tuple):
        for item in flow:
            yield from axes(item)


def unit_root(units: dict[int, int], i: int) -> int:
    while units[i] != i:
        units[i] = units[units[i]]
        i = units[i]
    return i


RuleT = TypeVar("RuleT", bound=Callable[..., object])


def handles_nonzero(rule: RuleT) -> RuleT:
    """Mark `rule` as one that understands an input :class:`Axis` whose ``nonzero`` is set
    (removed channels hold a non-zero value) and sets ``nonzero`` on its output correctly
    (an op that keeps values elementwise passes the axis on; a product with zeros clears it).
    For a rule without the mark, the walk blocks such channels before it runs the rule."""
    setattr(rule, "handles_nonzero", True)  # noqa: B010 - a marker on the function object
    return rule


def tracks_constant(rule: RuleT) -> RuleT:
    """Mark a :func:`handles_nonzero` rule of fprune's own as one that sets ``Axis.constant`` of
    its output right (what a later layer folds into its bias). The walk forgets the constant
    (unknown: the layer then blocks) after any other rule, such as a user's rule that returns
    its input axis as it came."""
    setattr(rule, "tracks_constant", True)  # noqa: B010 - a marker on the function object
    return rule


def forget_constant(flow: Flow, rule: object) -> Flow:
    """`flow` with every ``Axis.constant`` unknown, unless `rule` is marked :func:`tracks_constant`."""
    if getattr(rule, "tracks_constant", False):
        return flow
    if isinstance(flow, Axis):
        return replace(flow, constant=None) if flow.constant is not None else flow
    if isinstance(flow, tuple):
        return tuple(forget_constant(f, rule) for f in flow)
    return flow


def handles_nonzero_marked(rule: object) -> bool:
    """Whether :func:`handles_nonzero` marked `rule`."""
    return bool(getattr(rule, "handles_nonzero", False))


class FlowRule(Protocol):
    """How channels pass through one kind of op; returns the flow of the op's output.

    Called with a :class:`FlowContext` for each graph node whose module type, function or
    method name the rule is registered for. A rule that does not understand its input must
    call ``ctx.block(...)`` with the reason: a channel it lets through unnoticed could be
    pruned wrongly.
    """

    def __call__(self, ctx: FlowContext) -> Flow: ...


RuleKey: TypeAlias = OpKey
"""A module class, a function, or a method name."""


def flatten_axis(axis: Axis, start: int, end: int, ndim: int, shape: tuple[int, ...] | None) -> Axis:
    """The axis after ``flatten(start, end)`` of a tensor with `ndim` dims."""
    start, end = start % ndim, end % ndim
    dim = axis.dim % ndim
    if dim < start:
        return Axis(dim - ndim + (end - start), axis.ids, axis.inner, axis.outer, ndim - (end - start))
    if dim > end:
        return Axis(axis.dim, axis.ids, axis.inner, axis.outer, ndim - (end - start))
    if shape is None:
        if dim == start and end == ndim - 1:
            raise PruneError("flatten needs shapes to find the size of the merged dims; pass example_inputs")
        raise PruneError("flatten merges the channel dim with others at an unknown position; pass example_inputs")
    inner = axis.inner * math.prod(shape[dim + 1 : end + 1])
    outer = axis.outer * math.prod(shape[start:dim])
    new_ndim = ndim - (end - start)
    return Axis(start - new_ndim, axis.ids, inner, outer, new_ndim)
