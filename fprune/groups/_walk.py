"""The walk behind ``channel_groups``: every set of tensor slices that must be pruned together.

The analysis walks the graph once, in order. Each tensor's channel axis is tracked as a list of
channel ids (one per channel) on one of its dims. Producers (Linear, Conv, Embedding, ...) create
fresh ids; per-op *flow rules* say how ids pass through every other op: kept (activations, pools),
carried (BatchNorm, depthwise convs: their per-channel tensors join the group), offset (concat,
split), expanded (flatten), merged (a residual add unites the ids of its operands elementwise) or
unknown (the op blocks every id that reaches it, with the node and the reason recorded).
Ids united by merges form one channel; channels that share a producer form one group.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from .._errors import PruneError
from .._util.checks import describe_node, has_state, names_by_tensor
from ._flow import (
    Axis,
    Flow,
    FlowContext,
    FlowRule,
    HeadAxis,
    Member,
    RuleKey,
    ShapeRead,
    SizeRead,
    axes,
    forget_constant,
    handles_nonzero_marked,
)
from ._records import BiasFold, Blocker, Inexact, NormMode, NormRescale
from ._shapes import ForwardFailed, Shapes


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
        return roots(parent)


@dataclass
class Analysis:
    gm: fx.GraphModule
    rules: Mapping[RuleKey, FlowRule]
    shapes: Shapes
    modules: dict[str, nn.Module] = field(init=False)
    tensors: dict[str, Tensor] = field(init=False)
    uf: _UnionFind = field(default_factory=_UnionFind)
    flows: dict[str, Flow] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    producers: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    anonymous: list[tuple[int, ...]] = field(default_factory=list)  # ids made by no producer (FlowContext.fixed)
    blocked: dict[int, Blocker] = field(default_factory=dict)
    returned: set[int] = field(default_factory=set)
    units: dict[int, int] = field(default_factory=dict)
    literals: list[tuple[str, int, int, tuple[int, ...], int, str]] = field(default_factory=list)
    id_tensors: dict[int, tuple[tuple[int, ...], Tensor]] = field(default_factory=dict)
    checked: set[Hashable] = field(default_factory=set)  # the keys of FlowContext.once checks that passed
    reads: dict[str, SizeRead | ShapeRead] = field(default_factory=dict)  # sizes read from shapes of channels
    uses: dict[str, int] = field(default_factory=dict)  # calls of each module
    norms: NormMode = "block"  # channel_groups(norms=...): what norms over the channels do
    root: nn.Module | None = None  # the model `gm` was traced from, where known (prune_channels)
    exported: bool = False  # `gm` is a torch.export graph: its sizes are numbers, whatever computed them
    rescales: list[tuple[NormRescale, tuple[int, ...]]] = field(default_factory=list)  # exact RMSNorms, by ids
    inexact: list[tuple[Inexact, tuple[int, ...]]] = field(default_factory=list)  # renormalized norms, by ids
    folds: list[tuple[BiasFold, tuple[int, ...]]] = field(default_factory=list)  # constants folded into biases, by ids

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
                rule = self.rules.get(target)
            except TypeError:  # an unhashable target
                return None
            if rule is None and node.op == "call_function":  # by qualified name: a function fx.wrap keeps
                rule = self.rules.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
            return rule
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
                for axis in axes(ctx.flow(value)):
                    self.returned.update(axis.ids)
            return
        rule = self.rule_for(node)
        inputs = ctx.flow(list(node.args) + list(node.kwargs.values()))
        if node.op == "call_module" and self.uses[str(node.target)] > 1 and ctx.module is not None and has_state(ctx.module):
            if inputs is not None:
                ctx.block(inputs, f"module `{node.target}` is called {self.uses[str(node.target)]} times in forward")
            self.flows[node.name] = None
            return
        if rule is None:
            if inputs is not None:
                ctx.block(inputs, f"{describe_node(node, self.modules)} is not understood (no flow rule); register one to prune through it")
            self.flows[node.name] = None
            return
        if not handles_nonzero_marked(rule):  # channels that are not zero where removed stop here
            for axis in axes(inputs):
                if isinstance(axis, Axis) and axis.nonzero:
                    ctx.block(
                        axis,
                        f"after {axis.nonzero}, the removed channels carry a non-zero value, and "
                        f"{describe_node(node, self.modules)} would pass it on to the next layers; only a product "
                        "with channels that are zero there (an SE gate: x * sigmoid(...)) makes them zero again",
                    )
        try:
            self.flows[node.name] = forget_constant(rule(ctx), rule)  # kept only by rules that follow it
        except ForwardFailed:
            raise
        except PruneError as error:
            ctx.block(inputs, str(error))
            self.flows[node.name] = None

    def _read_size(self, ctx: FlowContext) -> bool:
        """Record a size read from the shape of a tensor of channels (``x.shape``, ``x.size()``,
        ``x.size(d)``, ``len(x)``, and indexing such a shape); True if `ctx.node` is such a read."""
        node = ctx.node
        read: SizeRead | ShapeRead | None
        if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] == "shape":
            read = self._shape_read(ctx, node.args[0])
        elif node.op == "call_method" and node.target == "size":
            read = self._shape_read(ctx, node.args[0])
            dim = ctx.arg(1, "dim")
            if isinstance(read, tuple) and isinstance(dim, int):
                read = read[dim] if -len(read) <= dim < len(read) else None
            elif read is not None and dim is not None:  # a computed dim: it may count any of the channels
                read = SizeRead(tuple(i for r in read if r is not None for i in r.ids), False, node.name)
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
        if read is not None and (isinstance(read, SizeRead) or any(r is not None for r in read)):
            self.reads[node.name] = read
        return True

    def _shape_read(self, ctx: FlowContext, value: object) -> ShapeRead | None:
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
            return (SizeRead(flow.ids, False, name),) * 8
        dims: list[SizeRead | None] = [None] * ndim
        if isinstance(flow, Axis):
            dims[flow.dim % ndim] = SizeRead(flow.ids, flow.inner == 1 and flow.outer == 1, name)
        else:  # the head count changes with pruning; a head's size does not (heads go whole)
            dims[flow.head_dim % ndim] = SizeRead(flow.ids, False, name)
        return tuple(dims)

    def _reads_in(self, node: fx.Node) -> set[str]:
        """The names of the size reads among `node`'s arguments."""
        if not self.reads:
            return set()
        found: set[str] = set()
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.add(n.name) if n.name in self.reads else None)
        return found

    def _block_read(self, node: fx.Node, read: SizeRead | ShapeRead) -> None:
        reads = [read] if isinstance(read, SizeRead) else [r for r in read if r is not None]
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
        on_dim: dict[tuple[int, int], list[Member]] = {}
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


def roots(parent: Tensor) -> Tensor:
    """The root of every node of a forest given as a parent vector (pointer jumping)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand
