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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, Union

import torch
from torch import Tensor, fx, nn

from ._errors import PruneError

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
            in `channels`.
        channels: the group channel of each position.
    """

    fqn: str
    dim: int
    role: Role
    positions: tuple[int, ...]
    channels: tuple[int, ...]


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
    """

    size: int
    producers: tuple[str, ...]
    members: tuple[ChannelSlice, ...]
    blockers: tuple[Blocker, ...]
    reaches_output: bool
    units: tuple[tuple[int, ...], ...] = ()
    literals: tuple[SizeLiteral, ...] = ()

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
    """A readable report: per group its size, members and why it is or is not prunable."""
    prunable = sum(g.prunable for g in groups)
    parts = [f"{len(groups)} channel groups, {prunable} prunable"]
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


@dataclass
class _Member:
    fqn: str
    dim: int
    role: Role
    axis: Axis


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> tuple[int, ...]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return tuple(range(start, start + n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


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

    def shape(self, value: object = None) -> tuple[int, ...] | None:
        """The shape of the node's output (or of another node), if shapes are known."""
        node = self.node if value is None else value
        if isinstance(node, fx.Node):
            return self._analysis.shapes.get(node.name)
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
        ids = self._analysis.uf.new(count)
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
    shapes: dict[str, tuple[int, ...]]
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

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        self.tensors = dict(self.gm.named_parameters())
        self.tensors.update(dict(self.gm.named_buffers()))

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
        uses: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" or node.op == "get_attr":
                self.flows[node.name] = None
                continue
            ctx = FlowContext(self, node)
            if node.op == "output":
                for axis in _axes(ctx.flow(node.args[0])):
                    self.returned.update(axis.ids)
                continue
            rule = self.rule_for(node)
            inputs = ctx.flow(list(node.args) + list(node.kwargs.values()))
            if node.op == "call_module" and uses[str(node.target)] > 1 and ctx.module is not None and _has_state(ctx.module):
                if inputs is not None:
                    ctx.block(inputs, f"module `{node.target}` is called {uses[str(node.target)]} times in forward")
                self.flows[node.name] = None
                continue
            if rule is None:
                if inputs is not None:
                    ctx.block(inputs, f"{_describe(node, self.modules)} is not understood (no flow rule); register one to prune through it")
                self.flows[node.name] = None
                continue
            try:
                self.flows[node.name] = rule(ctx)
            except PruneError as error:
                ctx.block(inputs, str(error))
                self.flows[node.name] = None


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module `{node.target}` ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}()"
    name = getattr(node.target, "__name__", str(node.target))
    return f"function {name}"


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


def _shapes(gm: fx.GraphModule, example_inputs: Sequence[object] | None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        if shape is not None:
            shapes[node.name] = tuple(int(s) for s in shape)
    if example_inputs is not None:
        recorder = _ShapeRecorder(gm)
        with torch.no_grad():
            recorder.run(*example_inputs)
        shapes.update(recorder.shapes)
    return shapes


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
        that reach an op fprune does not understand (they are never pruned).
    """
    if not isinstance(gm, fx.GraphModule):
        raise PruneError(f"channel_groups expects a torch.fx.GraphModule, got {type(gm).__name__}")
    if rules is None:
        from ._flow_rules import default_flow_rules

        rules = default_flow_rules()
    analysis = _Analysis(gm, rules, _shapes(gm, example_inputs))
    analysis.run()
    return _collect(analysis)


def _collect(analysis: _Analysis) -> tuple[ChannelGroup, ...]:
    uf = analysis.uf
    # channels: classes of united ids; groups: classes that share a producer
    groups = _UnionFind()
    groups.new(len(uf.parent))
    for _, ids in analysis.producers:
        roots = [uf.find(i) for i in ids]
        for root in roots[1:]:
            groups.union(roots[0], root)
    for i in analysis.units:  # a unit (an attention head) lies in one group
        groups.union(uf.find(i), uf.find(_unit_root(analysis.units, i)))
    order: dict[int, list[int]] = {}  # group root -> its channel classes, in first-seen order
    seen: set[int] = set()
    sources = [ids for _, ids in analysis.producers] + [m.axis.ids for m in analysis.members]
    for ids in sources:
        for i in ids:
            cls = uf.find(i)
            if cls not in seen:
                seen.add(cls)
                order.setdefault(groups.find(cls), []).append(cls)
    index_of: dict[int, tuple[int, int]] = {}
    for root, classes in order.items():
        for j, cls in enumerate(classes):
            index_of[cls] = (root, j)
    by_group: dict[int, list[ChannelSlice]] = {root: [] for root in order}
    for member in analysis.members:
        per_group: dict[int, tuple[list[int], list[int]]] = {}
        for position, k in member.axis.positions():
            root, j = index_of[uf.find(member.axis.ids[k])]
            positions, channels = per_group.setdefault(root, ([], []))
            positions.append(position)
            channels.append(j)
        for root, (positions, channels) in per_group.items():
            by_group[root].append(ChannelSlice(member.fqn, member.dim, member.role, tuple(positions), tuple(channels)))
    blockers: dict[int, list[Blocker]] = {root: [] for root in order}
    for channel, blocker in analysis.blocked.items():
        root = index_of[uf.find(channel)][0]
        if blocker not in blockers[root]:
            blockers[root].append(blocker)
    returned = {index_of[uf.find(c)][0] for c in analysis.returned}
    producers: dict[int, list[str]] = {root: [] for root in order}
    for fqn, ids in analysis.producers:
        root = index_of[uf.find(ids[0])][0]
        if fqn not in producers[root]:
            producers[root].append(fqn)
    units: dict[int, dict[int, set[int]]] = {root: {} for root in order}
    for i in analysis.units:
        if uf.find(i) not in index_of:
            continue
        root, j = index_of[uf.find(i)]
        units[root].setdefault(_unit_root(analysis.units, i), set()).add(j)
    literals: dict[int, list[SizeLiteral]] = {root: [] for root in order}
    for node, index, value, heads, factor, module in analysis.literals:
        root = index_of[uf.find(heads[0])][0]
        literals[root].append(SizeLiteral(node, index, value, tuple(index_of[uf.find(h)][1] for h in heads), factor, module))
    return tuple(
        ChannelGroup(
            size=len(order[root]),
            producers=tuple(producers[root]),
            members=tuple(by_group[root]),
            blockers=tuple(blockers[root]),
            reaches_output=root in returned,
            units=tuple(sorted(tuple(sorted(u)) for u in units[root].values())),
            literals=tuple(literals[root]),
        )
        for root in order
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
