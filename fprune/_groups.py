"""Channel groups: every set of tensor slices that must be pruned together, from an fx graph.

The analysis walks the graph once, in order. Each tensor's channel axis is tracked as a list of
channel ids (one per channel) on one of its dims. Producers (Linear, Conv, Embedding, ...) create
fresh ids; per-op *flow rules* say how ids pass through every other op: kept (activations, pools),
carried (BatchNorm, depthwise convs: their per-channel tensors join the group), offset (concat,
split), expanded (flatten), merged (a residual add unites the ids of its operands elementwise) or
unknown (the op blocks every id that reaches it, with the node and the reason recorded).
Ids united by merges form one channel; channels that share a producer form one group.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeAlias, Union

import torch
from torch import Tensor, fx, nn

from ._checks import describe_node, names_by_tensor
from ._errors import PruneError
from ._shape_mode import ShapeOnly
from ._verify import ExampleShapes, example_shapes, hooks_off, run_on_copies

__all__ = [
    "Axis",
    "ChannelGroup",
    "ChannelSlice",
    "FlowContext",
    "FlowRule",
    "RuleKey",
    "channel_groups",
    "explain",
]

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


def explain(groups: Sequence[ChannelGroup]) -> str:
    """A readable report: per group its size, members and why it is or is not prunable.

    When nothing can be pruned (no group at all, no prunable group, or only groups that
    forward returns), a line after the count says why and what to do.
    """
    from ._noop import why_nothing_prunable

    prunable = sum(g.prunable for g in groups)
    parts = [f"{len(groups)} channel groups, {prunable} prunable"]
    why = why_nothing_prunable(groups)
    if why is not None:
        parts.append(why)
    parts += [str(g) for g in groups]
    return "\n\n".join(parts)


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
    """

    dim: int
    ids: tuple[int, ...]
    inner: int = 1
    outer: int = 1
    ndim: int | None = None

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
class _SizeRead:
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


_ShapeRead: TypeAlias = tuple[Union[_SizeRead, None], ...]


@dataclass
class _Member:
    fqn: str
    dim: int
    role: Role
    axis: Axis


class _UnionFind:
    """Union-find over ids 0..count-1; only united ids are stored (`parent` of the others is
    themselves), so creating ids costs nothing per id."""

    def __init__(self) -> None:
        self.count = 0
        self.parent: dict[int, int] = {}

    def new(self, n: int) -> tuple[int, ...]:
        start = self.count
        self.count += n
        return tuple(range(start, start + n))

    def find(self, x: int) -> int:
        parent = self.parent
        while x in parent:
            up = parent[x]
            if up in parent:
                parent[x] = parent[up]
            x = up
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> Tensor:
        """The root (the smallest id) of every id's class, as an int64 tensor."""
        parent = torch.arange(self.count)
        if self.parent:
            parent[torch.tensor(list(self.parent.keys()))] = torch.tensor(list(self.parent.values()))
        return _roots(parent)


class FlowContext:
    """What a flow rule sees and records: the node, its module, its inputs' channel axes.

    Rules call :meth:`produce`, :meth:`consume`, :meth:`carry`, :meth:`merge` and
    :meth:`block` to describe what the op does to channels, and return the output's flow.
    """

    def __init__(self, analysis: _Analysis, node: fx.Node) -> None:
        self._analysis = analysis
        self.node = node
        self.module: nn.Module | None = (
            analysis.modules.get(str(node.target)) if node.op == "call_module" else None
        )
        self.module_fqn = str(node.target) if node.op == "call_module" else ""
        self._claimed: set[str] = set()

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
            if isinstance(read, _SizeRead) and read.plain:
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
        start = self._analysis.uf.count
        ids = self._analysis.uf.new(count)
        self._analysis.id_tensors[id(ids)] = (ids, torch.arange(start, start + count))
        axis = Axis(out_dim, ids, ndim=ndim)
        fqn = self._tensor_fqn(name)
        self._analysis.members.append(_Member(fqn, dim, "producer", Axis(dim, ids, outer=outer)))
        self._analysis.producers.append((fqn, ids))
        return axis

    def consume(self, name: str, dim: int, axis: Axis) -> None:
        """This module's tensor `name` reads the channels of `axis` along `dim`."""
        self._analysis.members.append(_Member(self._tensor_fqn(name), dim, "consumer", axis))

    def carry(self, name: str, dim: int, axis: Axis, *, fqn: str | None = None) -> None:
        """Tensor `name` of this module (or the model tensor `fqn`) goes with the channels."""
        self._analysis.members.append(_Member(fqn or self._tensor_fqn(name), dim, "carrier", axis))

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
        root = _unit_root(units, ids[0])
        for i in ids[1:]:
            other = _unit_root(units, i)
            if other != root:
                units[other] = root

    def literal(self, index: int, value: int, heads: HeadAxis | Sequence[int], factor: int) -> None:
        """Size argument `index` of this node is `value`: the kept count of `heads` (heads, or
        channels given by one id each) times `factor`."""
        counted = tuple(h[0] for h in heads.heads) if isinstance(heads, HeadAxis) else tuple(heads)
        stack = self.node.meta.get("nn_module_stack") or {}
        module = ""
        if stack:
            key, entry = list(stack.items())[-1]
            module = entry[0] if isinstance(entry, tuple) and isinstance(entry[0], str) else str(key)
        self._analysis.literals.append((self.node.name, index, value, counted, factor, module))

    def block(self, flow: Flow, reason: str) -> None:
        """Mark every channel of `flow` not prunable, because of this node."""
        for axis in _axes(flow):
            for channel in axis.ids:
                self._analysis.blocked.setdefault(channel, Blocker(self.node.name, reason))

    def _tensor_fqn(self, name: str) -> str:
        return f"{self.module_fqn}.{name}" if self.module_fqn else name


def _axes(flow: Flow) -> Iterator[Axis | HeadAxis]:
    if isinstance(flow, (Axis, HeadAxis)):
        yield flow
    elif isinstance(flow, tuple):
        for item in flow:
            yield from _axes(item)


def _unit_root(units: dict[int, int], i: int) -> int:
    while units[i] != i:
        units[i] = units[units[i]]
        i = units[i]
    return i


class FlowRule(Protocol):
    """How channels pass through one kind of op; returns the flow of the op's output.

    Called with a :class:`FlowContext` for each graph node whose module type, function or
    method name the rule is registered for. A rule that does not understand its input must
    call ``ctx.block(...)`` with the reason: a channel it lets through unnoticed could be
    pruned wrongly.
    """

    def __call__(self, ctx: FlowContext) -> Flow: ...


RuleKey: TypeAlias = Union[type[nn.Module], Callable[..., object], str]
"""A module class, a function, or a method name."""


@dataclass
class _Analysis:
    gm: fx.GraphModule
    rules: Mapping[RuleKey, FlowRule]
    shapes: _Shapes
    modules: dict[str, nn.Module] = field(init=False)
    tensors: dict[str, Tensor] = field(init=False)
    uf: _UnionFind = field(default_factory=_UnionFind)
    flows: dict[str, Flow] = field(default_factory=dict)
    members: list[_Member] = field(default_factory=list)
    producers: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    blocked: dict[int, Blocker] = field(default_factory=dict)
    returned: set[int] = field(default_factory=set)
    units: dict[int, int] = field(default_factory=dict)
    literals: list[tuple[str, int, int, tuple[int, ...], int, str]] = field(default_factory=list)
    id_tensors: dict[int, tuple[tuple[int, ...], Tensor]] = field(default_factory=dict)
    checked: set[object] = field(default_factory=set)  # what rules found true once (e.g. act(0) = 0 of a module kind)
    reads: dict[str, _SizeRead | _ShapeRead] = field(default_factory=dict)  # sizes read from shapes of channels
    uses: dict[str, int] = field(default_factory=dict)  # calls of each module

    def ids_tensor(self, ids: tuple[int, ...]) -> Tensor:
        """`ids` as an int64 tensor, converted once per tuple object."""
        cached = self.id_tensors.get(id(ids))
        if cached is None:
            cached = self.id_tensors[id(ids)] = (ids, torch.tensor(ids, dtype=torch.long))
        return cached[1]

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        self.tensors = dict(self.gm.named_parameters(remove_duplicate=False))
        self.tensors.update(dict(self.gm.named_buffers(remove_duplicate=False)))

    def rule_for(self, node: fx.Node) -> FlowRule | None:
        if node.op == "call_module":
            module_type: type = type(self.modules[str(node.target)])
            for klass in module_type.__mro__:
                if klass in self.rules:
                    return self.rules[klass]
            return None
        if node.op in ("call_function", "call_method"):
            target = node.target
            try:
                return self.rules.get(target)
            except TypeError:  # an unhashable target
                return None
        return None

    def run(self) -> None:
        uses = self.uses
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" or node.op == "get_attr":
                self.flows[node.name] = None
                continue
            ctx = FlowContext(self, node)
            if self._read_size(ctx):
                continue
            used = self._reads_in(node)
            try:
                self._flow_through(ctx)
            finally:
                for name in used - ctx._claimed:
                    self._block_read(node, self.reads[name])
        self._unite_aliases()

    def _flow_through(self, ctx: FlowContext) -> None:
        """Run the rule of one node (or block what reaches a node no rule follows)."""
        node = ctx.node
        if node.op == "output":  # every tensor returned, through tuples, lists and dicts
            returned: list[fx.Node] = []
            fx.node.map_arg(node.args, returned.append)
            for value in returned:
                for axis in _axes(ctx.flow(value)):
                    self.returned.update(axis.ids)
            return
        rule = self.rule_for(node)
        inputs = ctx.flow(list(node.args) + list(node.kwargs.values()))
        if node.op == "call_module" and self.uses[str(node.target)] > 1 and ctx.module is not None and _has_state(ctx.module):
            if inputs is not None:
                ctx.block(inputs, f"module `{node.target}` is called {self.uses[str(node.target)]} times in forward")
            self.flows[node.name] = None
            return
        if rule is None:
            if inputs is not None:
                ctx.block(inputs, f"{describe_node(node, self.modules)} is not understood (no flow rule); register one to prune through it")
            self.flows[node.name] = None
            return
        try:
            self.flows[node.name] = rule(ctx)
        except _ForwardFailed:
            raise
        except PruneError as error:
            ctx.block(inputs, str(error))
            self.flows[node.name] = None

    def _read_size(self, ctx: FlowContext) -> bool:
        """Record a size read from the shape of a tensor of channels (``x.shape``, ``x.size()``,
        ``x.size(d)``, ``len(x)``, and indexing such a shape); True if `ctx.node` is such a read."""
        node = ctx.node
        read: _SizeRead | _ShapeRead | None
        if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] == "shape":
            read = self._shape_read(ctx, node.args[0])
        elif node.op == "call_method" and node.target == "size":
            read = self._shape_read(ctx, node.args[0])
            dim = ctx.arg(1, "dim")
            if isinstance(read, tuple) and isinstance(dim, int):
                read = read[dim] if -len(read) <= dim < len(read) else None
            elif read is not None and dim is not None:  # a computed dim: it may count any of the channels
                read = _SizeRead(tuple(i for r in read if r is not None for i in r.ids), False, node.name)
        elif node.op == "call_function" and node.target is len and len(node.args) == 1:  # with torch.fx.wrap("len")
            shape = self._shape_read(ctx, node.args[0])
            read = shape[0] if shape else None
        elif node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
            whole = self.reads.get(node.args[0].name)
            index = node.args[1]
            if not isinstance(whole, tuple) or not isinstance(index, (int, slice)):
                return False
            if isinstance(index, int):
                read = whole[index] if -len(whole) <= index < len(whole) else None
            else:
                read = whole[index]
        else:
            return False
        self.flows[node.name] = None
        if read is not None and (isinstance(read, _SizeRead) or any(r is not None for r in read)):
            self.reads[node.name] = read
        return True

    def _shape_read(self, ctx: FlowContext, value: object) -> _ShapeRead | None:
        """What each dim of `value`'s shape counts, or None if no dim holds channels."""
        flow = ctx.flow(value)
        if not isinstance(flow, (Axis, HeadAxis)):
            return None
        ndim = flow.ndim
        if ndim is None:
            shape = ctx.shape(value)
            ndim = len(shape) if shape is not None else None
        name = ctx.node.name
        if ndim is None:  # the layout is unknown: every dim might count the channels
            return (_SizeRead(flow.ids, False, name),) * 8
        dims: list[_SizeRead | None] = [None] * ndim
        if isinstance(flow, Axis):
            dims[flow.dim % ndim] = _SizeRead(flow.ids, flow.inner == 1 and flow.outer == 1, name)
        else:  # the head count changes with pruning; a head's size does not (heads go whole)
            dims[flow.head_dim % ndim] = _SizeRead(flow.ids, False, name)
        return tuple(dims)

    def _reads_in(self, node: fx.Node) -> set[str]:
        """The names of the size reads among `node`'s arguments."""
        if not self.reads:
            return set()
        found: set[str] = set()
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.add(n.name) if n.name in self.reads else None)
        return found

    def _block_read(self, node: fx.Node, read: _SizeRead | _ShapeRead) -> None:
        reads = [read] if isinstance(read, _SizeRead) else [r for r in read if r is not None]
        for r in reads:
            reason = (
                f"`{r.node}` reads a size of these channels from a tensor's shape, and `{node.name}` uses it where "
                "fprune cannot keep it equal to the pruned width (arithmetic, a new tensor, another tensor's "
                "size); use -1 in a view / reshape, or read the size from the tensor being reshaped"
            )
            for channel in r.ids:
                self.blocked.setdefault(channel, Blocker(node.name, reason))

    def _unite_aliases(self) -> None:
        """Tied tensors (one tensor under several FQNs) lose the same positions under every name.

        Where every name of a tensor has a member on a dim, those members' channels are united
        position by position (so one group prunes them alike and the tie holds); where only some
        names do, pruning would untie them, so those channels are blocked.
        """
        if len({id(t) for t in self.tensors.values()}) == len(self.tensors):
            return  # no tied tensors
        names = names_by_tensor(self.tensors.items())
        on_dim: dict[tuple[int, int], list[_Member]] = {}
        for member in self.members:
            found = self.tensors.get(member.fqn)
            if found is not None and len(names[id(found)]) > 1:
                on_dim.setdefault((id(found), member.dim), []).append(member)
        for (key, dim), members in on_dim.items():
            fqns = names[key]
            missing = [f for f in fqns if f not in {m.fqn for m in members}]
            first = members[0]
            simple = all(m.axis.inner == 1 and m.axis.outer == 1 and len(m.axis.ids) == len(first.axis.ids) for m in members)
            if not missing and simple:
                for other in members[1:]:
                    for a, b in zip(first.axis.ids, other.axis.ids):
                        self.uf.union(a, b)
                continue
            tied = ", ".join(f"`{f}`" for f in fqns)
            reason = (
                f"{tied} are one tensor (tied weights), and pruning these channels would slice it along dim {dim} "
                + (f"under some of its names but not as `{missing[0]}`" if missing else "in layouts that differ")
                + ", which unties them; untie them first (give each module its own copy), or `ignore` this group"
            )
            for member in members:
                for channel in member.axis.ids:
                    self.blocked.setdefault(channel, Blocker(member.fqn, reason))


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output shape, without touching node.meta."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n.name] = tuple(result.shape)
        return result


class _ForwardFailed(PruneError):
    """The example inputs could not run through the model (raised, never a blocker)."""


class _Recording(nn.Module):
    """`gm` as a submodule, run through a _ShapeRecorder (for functional_call)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.shapes: dict[str, tuple[int, ...]] = {}

    def forward(self, *args: object) -> object:
        recorder = _ShapeRecorder(self.gm)
        result = recorder.run(*args)
        self.shapes = recorder.shapes
        return result


def _record_shapes(gm: fx.GraphModule, example_inputs: Sequence[object]) -> dict[str, tuple[int, ...]]:
    """Every node's output shape for one forward of `example_inputs`.

    The forward runs on shapes alone (``ShapeOnly``: meta tensors, no arithmetic, the model's
    tensors untouched: a ViT-B/16 in a few ms); ops that cannot run on meta (data-dependent
    shapes, ``.item()``) make it run again on the real tensors. The modules' own hooks do not
    fire: this is not a forward of the user's.
    """
    recording = _Recording(gm)
    with torch.no_grad(), hooks_off(gm):
        try:
            with ShapeOnly():
                recording(*example_inputs)
            return recording.shapes
        except Exception:  # noqa: BLE001 - not runnable on meta: run it for real below
            pass
        try:
            run_on_copies(recording, example_inputs)  # train-mode BatchNorm statistics are not updated
        except Exception as error:  # noqa: BLE001 - reported as a PruneError
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise _ForwardFailed(
                f"channel_groups: running example_inputs through the model failed ({type(error).__name__}: "
                f"{first_line}); pass the arguments forward takes, as a tuple"
            ) from None
    return recording.shapes


class _Shapes:
    """Node output shapes, by node name: those tracing recorded, else from one forward of the
    example inputs, run on the first request for a shape it does not know (many graphs, e.g.
    plain CNNs, never need it)."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[object] | None) -> None:
        self._gm = gm
        self._inputs = example_inputs
        self._known: dict[str, tuple[int, ...]] = {}
        for node in gm.graph.nodes:
            shape = getattr(node.meta.get("tensor_meta"), "shape", None)
            if shape is not None:
                self._known[node.name] = tuple(int(s) for s in shape)

    def get(self, name: str, *, run: bool = True) -> tuple[int, ...] | None:
        shape = self._known.get(name)
        if shape is None and run and self._inputs is not None:
            inputs, self._inputs = self._inputs, None
            self._known.update(_record_shapes(self._gm, inputs))
            shape = self._known.get(name)
        return shape


def channel_groups(
    gm: fx.GraphModule,
    *,
    example_inputs: Sequence[object] | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
) -> tuple[ChannelGroup, ...]:
    """Every channel group of `gm`, in the graph order of their first producer.

    Args:
        gm: a traced model (``torch.fx.symbolic_trace(model)``); left unchanged.
        example_inputs: inputs to run `gm` once with, so that ops whose channel layout
            depends on shapes (flatten, reshape) can be followed; without them those ops block
            their channels unless the shapes follow from the layers (a conv output is 4-D).
        rules: flow rules by module class, function or method name; default
            :func:`default_flow_rules`. Extend that dict to teach fprune your own modules.

    Returns:
        Frozen :class:`ChannelGroup` records: prunable ones and, with their blockers, those
        that reach an op fprune does not understand (they are never pruned). With
        `example_inputs`, each record carries their shapes (``example_shapes``), and
        :func:`fprune.apply_prune` checks the pruned copy on them. An empty tuple means no
        layer fprune knows produces channels here; :func:`explain` says what to do.
    """
    groups = find_groups(gm, example_inputs=example_inputs, rules=rules)
    if example_inputs is None or not groups:
        return groups
    shapes = example_shapes(example_inputs)
    return tuple(replace(group, example_shapes=shapes) for group in groups)


def find_groups(
    gm: fx.GraphModule,
    *,
    example_inputs: Sequence[object] | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
) -> tuple[ChannelGroup, ...]:
    """:func:`channel_groups` without the example shapes in the records (for prune_channels,
    which checks the pruned copy itself, on the example inputs it holds)."""
    if not isinstance(gm, fx.GraphModule):
        raise PruneError(f"channel_groups expects a torch.fx.GraphModule, got {type(gm).__name__}")
    if rules is None:
        from ._flow_rules import default_flow_rules

        rules = default_flow_rules()
    analysis = _Analysis(gm, rules, _Shapes(gm, example_inputs))
    analysis.run()
    return _collect(analysis)


def _roots(parent: Tensor) -> Tensor:
    """The root of every node of a forest given as a parent vector (pointer jumping)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def _components(n: int, a: Tensor, b: Tensor) -> Tensor:
    """The smallest node of each node's connected component, for `n` nodes and edges a[i]-b[i]."""
    label = torch.arange(n)
    while True:
        low = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, low, "amin").scatter_reduce(0, b, low, "amin")
        new = _roots(new)
        if torch.equal(new, label):
            return label
        label = new


def _compact(values: Tensor) -> Sequence[int]:
    """A range if `values` step evenly (by a nonzero step), else a tuple."""
    n = values.numel()
    if n == 1:
        first = int(values[0])
        return range(first, first + 1)
    if n > 1:
        steps = values[1:] - values[:-1]
        step = int(steps[0])
        if step != 0 and bool((steps == step).all()):
            first = int(values[0])
            return range(first, first + n * step, step)
    return tuple(values.tolist())


@dataclass(frozen=True)
class _IdsInfo:
    """Where the ids of one tuple went: their groups and channels, and the common case."""

    groups: Tensor  # group index of each id
    channels: Tensor  # channel index (within its group) of each id
    group: int  # the group of all ids, or -1 if they span several
    channel_range: range | None  # the channels, if one group and they step evenly


def _ids_infos(analysis: _Analysis, id_group: Tensor, id_channel: Tensor) -> dict[int, _IdsInfo]:
    """_IdsInfo per distinct ids tuple of the members (by id()), computed in one vectorised pass."""
    tuples: dict[int, tuple[int, ...]] = {}
    for member in analysis.members:
        tuples.setdefault(id(member.axis.ids), member.axis.ids)
    keys = list(tuples)
    if not keys:
        return {}
    parts = [analysis.ids_tensor(tuples[k]) for k in keys]
    lengths = torch.tensor([p.numel() for p in parts])
    flat = torch.cat(parts)
    segment = torch.repeat_interleave(torch.arange(len(parts)), lengths)
    groups, channels = id_group[flat], id_channel[flat]
    count = len(parts)
    gmin = torch.full((count,), flat.numel() + 1).scatter_reduce(0, segment, groups, "amin")
    gmax = torch.full((count,), -1).scatter_reduce(0, segment, groups, "amax")
    starts = torch.cumsum(lengths, 0) - lengths
    first_channel = channels[starts]
    # the step of each segment: channel[1] - channel[0] (0 for one-id segments, marked regular)
    second = torch.where(lengths > 1, starts + 1, starts)
    step = channels[second] - first_channel
    inside = segment[1:] == segment[:-1]
    uneven = inside & ((channels[1:] - channels[:-1]) != step[segment[1:]])
    irregular = torch.zeros(count, dtype=torch.bool).index_put((segment[1:][uneven],), torch.tensor(True), accumulate=False)
    irregular |= (step == 0) & (lengths > 1)
    infos: dict[int, _IdsInfo] = {}
    split_groups = torch.split(groups, lengths.tolist())
    split_channels = torch.split(channels, lengths.tolist())
    rows = zip(keys, gmin.tolist(), gmax.tolist(), first_channel.tolist(), step.tolist(), lengths.tolist(), irregular.tolist())
    for k, (key, low, high, first, st, length, odd) in enumerate(rows):
        group = low if low == high else -1
        channel_range = None
        if group >= 0 and not odd:
            step_ = st if length > 1 else 1
            channel_range = range(first, first + length * step_, step_)
        infos[key] = _IdsInfo(split_groups[k], split_channels[k], group, channel_range)
    return infos


def _member_slices(member: _Member, info: _IdsInfo) -> list[tuple[int, ChannelSlice]]:
    """The member's slices, one per group its positions fall in (in order of first position)."""
    axis = member.axis
    if axis.inner < 0:
        raise PruneError("the size of flattened channels is unknown; pass example_inputs")
    width = axis.width
    if info.group >= 0 and info.channel_range is not None and axis.inner == 1 and axis.outer == 1:
        return [(info.group, ChannelSlice(member.fqn, member.dim, member.role, range(width), info.channel_range))]
    count = len(axis.ids)
    positions = torch.arange(width)
    k = torch.div(positions, axis.inner, rounding_mode="floor") % count
    groups, channels = info.groups[k], info.channels[k]
    if info.group >= 0:
        return [(info.group, ChannelSlice(member.fqn, member.dim, member.role, range(width), _compact(channels)))]
    found, first = torch.unique(groups, return_inverse=True)
    first_position = torch.full((found.numel(),), width).scatter_reduce(0, first, positions, "amin")
    slices = []
    for g in found[torch.argsort(first_position)].tolist():
        chosen = groups == g
        slices.append((g, ChannelSlice(member.fqn, member.dim, member.role, _compact(positions[chosen]), _compact(channels[chosen]))))
    return slices


def _collect(analysis: _Analysis) -> tuple[ChannelGroup, ...]:
    n = analysis.uf.count
    if n == 0:
        return ()
    # every id was made by a producer, in order: producer k owns ids starts[k] .. + counts[k]
    counts = torch.tensor([len(ids) for _, ids in analysis.producers], dtype=torch.long)
    starts = torch.tensor([ids[0] if ids else 0 for _, ids in analysis.producers], dtype=torch.long)
    # channels: classes of united ids, each named by its smallest id (so in first-seen order)
    cls = analysis.uf.roots()
    # groups: components of channel classes linked by a shared producer or a unit (a head)
    a_parts = [cls[torch.repeat_interleave(starts, counts)]]
    b_parts = [cls]
    if analysis.units:
        keys = torch.tensor(list(analysis.units.keys()), dtype=torch.long)
        unit_parent = torch.arange(n)
        unit_parent[keys] = torch.tensor(list(analysis.units.values()), dtype=torch.long)
        unit_root = _roots(unit_parent)
        a_parts.append(cls[keys])
        b_parts.append(cls[unit_root[keys]])
    component = _components(n, torch.cat(a_parts), torch.cat(b_parts))
    # groups in the order of their first channel; channels numbered in id order within a group
    present = (cls == torch.arange(n)).nonzero().squeeze(1)
    group_labels, class_group = torch.unique(component[present], return_inverse=True)
    group_count = group_labels.numel()
    sizes = torch.bincount(class_group, minlength=group_count)
    order = torch.sort(class_group, stable=True).indices
    class_channel = torch.empty_like(class_group)
    class_channel[order] = torch.arange(present.numel()) - (torch.cumsum(sizes, 0) - sizes)[class_group[order]]
    id_group = torch.full((n,), -1)
    id_group[present] = class_group
    id_group = id_group[cls]
    id_channel = torch.full((n,), -1)
    id_channel[present] = class_channel
    id_channel = id_channel[cls]

    infos = _ids_infos(analysis, id_group, id_channel)
    by_group: list[list[ChannelSlice]] = [[] for _ in range(group_count)]
    for member in analysis.members:
        for g, piece in _member_slices(member, infos[id(member.axis.ids)]):
            by_group[g].append(piece)
    blockers: list[list[Blocker]] = [[] for _ in range(group_count)]
    if analysis.blocked:
        blocked_groups = id_group[torch.tensor(list(analysis.blocked.keys()), dtype=torch.long)].tolist()
        for g, blocker in zip(blocked_groups, analysis.blocked.values()):
            if blocker not in blockers[g]:
                blockers[g].append(blocker)
    returned = set(id_group[torch.tensor(sorted(analysis.returned), dtype=torch.long)].tolist()) if analysis.returned else set()
    producers: list[list[str]] = [[] for _ in range(group_count)]
    if analysis.producers:
        heads = id_group[torch.tensor([ids[0] for _, ids in analysis.producers], dtype=torch.long)].tolist()
        for g, (fqn, _) in zip(heads, analysis.producers):
            if fqn not in producers[g]:
                producers[g].append(fqn)
    units: list[dict[int, set[int]]] = [{} for _ in range(group_count)]
    if analysis.units:
        unit_ids = list(analysis.units.keys())
        index = torch.tensor(unit_ids, dtype=torch.long)
        rows = zip(unit_ids, id_group[index].tolist(), id_channel[index].tolist(), unit_root[index].tolist())
        for _, g, j, root in rows:
            units[g].setdefault(root, set()).add(j)
    literals: list[list[SizeLiteral]] = [[] for _ in range(group_count)]
    for node, index_, value, heads_, factor, module in analysis.literals:
        head_index = torch.tensor(heads_, dtype=torch.long)
        g = int(id_group[head_index[0]])
        literals[g].append(SizeLiteral(node, index_, value, tuple(id_channel[head_index].tolist()), factor, module))
    return tuple(
        ChannelGroup(
            size=int(sizes[g]),
            producers=tuple(producers[g]),
            members=tuple(by_group[g]),
            blockers=tuple(blockers[g]),
            reaches_output=g in returned,
            units=tuple(sorted(tuple(sorted(u)) for u in units[g].values())),
            literals=tuple(literals[g]),
        )
        for g in range(group_count)
    )


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


__all__ += ["Blocker", "HeadAxis", "SizeLiteral", "flatten_axis"]


# --- size arguments: where a view / reshape / split writes its sizes ----------------------------

_SIZE_KEYWORDS = ("shape", "size", "split_size_or_sections", "split_size")
_SPLITS: tuple[object, ...] = (torch.split, "split")


def _size_slot(node: fx.Node) -> tuple[str | int, object] | None:
    """Where `node` holds its sizes: ("kw", keyword) or (index, value) of one argument that is a
    list or a number, or None when the sizes are the positional arguments after the tensor."""
    for key in _SIZE_KEYWORDS:
        if key in node.kwargs:
            return key, node.kwargs[key]
    if node.op == "call_function" or node.target in _SPLITS or len(node.args) == 2:
        return (1, node.args[1]) if len(node.args) > 1 else None
    return None


def size_args(node: fx.Node) -> list[object]:
    """The size arguments of a view / reshape / split node (after the tensor), flattened: the
    elements of a size list or tuple, or the sizes written one by one (``x.view(b, t, 4, 16)``).
    A split's sizes are its second argument only (its dim is not a size)."""
    slot = _size_slot(node)
    if slot is None:
        return list(node.args[1:])
    value = slot[1]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def with_sizes(node: fx.Node, sizes: Mapping[int, int]) -> tuple[tuple[fx.node.Argument, ...], dict[str, fx.node.Argument]]:
    """`node`'s (args, kwargs) with the size arguments at the given indices (as counted by
    :func:`size_args`) replaced; every index is replaced, in a size list as in loose sizes."""
    args, kwargs = list(node.args), dict(node.kwargs)
    slot = _size_slot(node)
    if slot is None:
        for index, value in sizes.items():
            args[1 + index] = value
        return tuple(args), kwargs
    where, current = slot
    if isinstance(current, (tuple, list)):
        values = list(current)
        for index, value in sizes.items():
            values[index] = value
        new: fx.node.Argument = type(current)(values)
    else:
        (new,) = sizes.values()
    if isinstance(where, str):
        kwargs[where] = new
    else:
        args[where] = new
    return tuple(args), kwargs


__all__ += ["size_args", "with_sizes"]
