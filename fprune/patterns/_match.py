"""Find pattern chains in a ``torch.fx`` graph: ``match_patterns``.

A chain starts at a producer module and follows, node by node, the one user of each node.
It never follows a branch: a node whose output is used by more than one op (a residual add,
a concat, two consumers) ends the chain there. The only extra user allowed is the graph
output (the tensor is also returned, and shrinks with the channels); an LSTM's state may be
returned or left unused.

Patterns are indexed in a trie over their elements. A :class:`~fprune.patterns.ZeroOrMore` element is a
trie node that loops on its elements' keys, so matching is a walk of the set of trie nodes
(an NFA) the chain has reached; without runs that set is a single node, as in a plain trie.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .._errors import PruneError, prefixed
from .._util.checks import describe_node, has_state
from ._defaults import PatternDict, default_table
from ._records import (
    OUTPUT,
    Attr,
    Call,
    Match,
    MatchedOp,
    ModuleOp,
    Pattern,
    PatternElement,
    PruneFunction,
    ZeroOrMore,
)


@dataclass(eq=False, slots=True)
class _Trie:
    """One prefix of the indexed patterns.

    Attributes:
        children: the next fixed element's key -> the longer prefix.
        runs: a :class:`ZeroOrMore` element's key -> the prefix that ends with that run.
        loop: for a prefix that ends with a run: the keys of the ops the run repeats on.
        pattern, function: the pattern that ends here, if any, and its prune function.
        rank: how specific `pattern` is, for ties between patterns that match as many nodes:
            (fixed elements, -runs, position in the dict); the larger wins.
    """

    children: dict[Hashable, _Trie] = field(default_factory=dict)
    runs: dict[Hashable, _Trie] | None = None  # None until a run starts here (most nodes: saves a dict each)
    loop: frozenset[Hashable] = frozenset()
    pattern: Pattern | None = None
    function: PruneFunction | None = None
    rank: tuple[int, int, int] = (0, 0, 0)
    reach: list[_Trie] | None = None  # _closure([self]), cached on first use


def _closure(nodes: list[_Trie]) -> list[_Trie]:
    """`nodes` and every run that may start after them (a run may match zero ops)."""
    if len(nodes) == 1:
        node = nodes[0]
        if node.reach is None:
            node.reach = _expand(nodes)
        return node.reach
    for node in nodes:
        if node.runs:
            return _expand(nodes)
    return nodes  # the common case: no run starts here


def _expand(nodes: list[_Trie]) -> list[_Trie]:
    found: list[_Trie] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if any(node is f for f in found):
            continue
        found.append(node)
        if node.runs:
            stack.extend(node.runs.values())
    return found


def _element_key(element: PatternElement | ZeroOrMore, pattern: Pattern) -> tuple[str, object]:
    if isinstance(element, type):
        if not issubclass(element, nn.Module):
            raise PruneError(
                f"pattern {_show(pattern)}: element {element.__name__} is a class but not an "
                "nn.Module; use module classes, functions, method names or 'output'"
            )
        return ("module", element)
    if isinstance(element, str):
        return ("name", element)
    if isinstance(element, ZeroOrMore):
        return ("run", frozenset(_element_key(e, pattern) for e in element.elements))
    if callable(element):
        return ("function", element)
    raise PruneError(
        f"pattern {_show(pattern)}: element {element!r} is not a module class, function, string or fprune.patterns.ZeroOrMore"
    )


def _show(pattern: Pattern) -> str:
    names = [e.__name__ if isinstance(e, type) else repr(e) if isinstance(e, str) else getattr(e, "__name__", repr(e)) for e in pattern]
    return "(" + ", ".join(names) + ")"


_DEFAULT_TRIE: list[_Trie] = []
"""The index of the default table (``default_table()``), built on first use: that table never
changes, so neither does its index (a cache of a constant, it changes no result)."""

_TRIE_CACHE: list[tuple[tuple[Pattern, ...], tuple[PruneFunction, ...], _Trie]] = []
"""The last few indexes built for other mappings: (the patterns, their functions, trie)."""


def _same_objects(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """True if `a` and `b` hold the very same objects in the same order (identity, not ==)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _build_trie(patterns: Mapping[Pattern, PruneFunction]) -> _Trie:
    """The patterns as a trie over element keys, cached without ever writing to `patterns`.

    An unmodified copy of the defaults (``default_patterns()``, a :class:`PatternDict` whose
    changes through its methods are counted) shares the one index of the default table, built
    once from data that never changes. Any other mapping is looked up among the last few
    indexes built: an entry holds the pattern tuples and prune functions it was built from and
    is a hit only if `patterns` holds the very same objects (``is``, not ``==``) in the same
    order. The trie depends on nothing else: a pattern tuple never changes, nor do its
    elements (classes, strings and functions are keyed by themselves, a ZeroOrMore is frozen),
    and the match ranks come from the order. A cached trie is thus always the one
    ``_new_trie(patterns)`` would build (its nodes' ``reach`` caches are computed from the trie
    alone), so the cache cannot change what ``match_patterns`` returns, and the Match records
    hold the caller's own pattern and function objects. Equal but distinct patterns or
    functions miss and are indexed anew.
    """
    if isinstance(patterns, PatternDict) and patterns.version == 0 and patterns.origin is not None:
        table = default_table()
        if patterns.origin is table and table.version == 0 and len(patterns) == len(table):
            if not _DEFAULT_TRIE:
                _DEFAULT_TRIE.append(_new_trie(table))
            return _DEFAULT_TRIE[0]
    keys, functions = tuple(patterns), tuple(patterns.values())
    for cached_keys, cached_functions, cached in _TRIE_CACHE:
        if _same_objects(cached_keys, keys) and _same_objects(cached_functions, functions):
            return cached
    trie = _new_trie(patterns)
    _TRIE_CACHE.insert(0, (keys, functions, trie))
    del _TRIE_CACHE[4:]
    return trie


def _new_trie(patterns: Mapping[Pattern, PruneFunction]) -> _Trie:
    root = _Trie()
    keys: dict[PatternElement | ZeroOrMore, tuple[str, object]] = {}  # each element's key, checked once
    for position, (pattern, function) in enumerate(patterns.items()):
        if not isinstance(pattern, tuple) or len(pattern) < 2:
            raise PruneError(f"pattern {pattern!r}: a pattern is a tuple of at least 2 elements, producer first")
        if not (isinstance(pattern[0], type) and issubclass(pattern[0], nn.Module)):
            raise PruneError(f"pattern {_show(pattern)}: the first element must be an nn.Module class (the producer)")
        if isinstance(pattern[-1], ZeroOrMore):
            raise PruneError(
                f"pattern {_show(pattern)}: a pattern cannot end with a ZeroOrMore run; end it with the "
                "consumer or 'output', e.g. (nn.Linear, ZeroOrMore(nn.ReLU), nn.Linear)"
            )
        if not callable(function):
            raise PruneError(f"pattern {_show(pattern)}: maps to {function!r}, which is not a prune function")
        node = root
        runs = 0
        for element in pattern:
            key = keys.get(element)
            if key is None:
                key = keys[element] = _element_key(element, pattern)
            if key[0] == "run":
                runs += 1
                if node.runs is None:
                    node.runs = {}
                child = node.runs.get(key)
                if child is None:
                    assert isinstance(key[1], frozenset)
                    child = node.runs[key] = _Trie(loop=key[1])
            else:
                child = node.children.get(key)
                if child is None:
                    child = node.children[key] = _Trie()
            node = child
        node.pattern, node.function, node.rank = pattern, function, (len(pattern) - runs, -runs, position)
    return root


def _node_key(node: fx.Node, modules: Mapping[str, nn.Module]) -> Hashable | None:
    if node.op == "call_module" and isinstance(node.target, str) and node.target in modules:
        return ("module", type(modules[node.target]))
    if node.op == "call_function":
        return ("function", node.target)
    if node.op in ("call_method", "output"):
        return ("name", node.target)
    return None


def _returned_only(node: fx.Node) -> bool:
    """True if `node` is the graph output."""
    return node.op == "output"


def _state_only(node: fx.Node) -> bool:
    """True if `node` indexes an RNN's state tuple and only flows to the output, or nowhere."""
    if node.op == "output":
        return True
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        return all(_state_only(u) for u in node.users)
    return False


def _nodes_in(value: object) -> list[fx.Node]:
    found: list[fx.Node] = []
    def visit(node: fx.Node) -> fx.Node:
        found.append(node)
        return node

    fx.node.map_arg(value, visit)  # type: ignore[type-var]
    return found


def _successor(node: fx.Node) -> tuple[fx.Node | None, str]:
    """The one node a chain continues to from `node`, or None with the reason it stops."""
    users = list(node.users)
    main = [u for u in users if not _returned_only(u)]
    if len(main) == 1:
        return main[0], ""
    if not main:
        if any(u.op == "output" for u in users):
            return next(u for u in users if u.op == "output"), ""
        return None, "its output is not used"
    names = ", ".join(f"`{u.name}`" for u in main)
    kinds = {_branch_kind(u) for u in main}
    return None, f"its output `{node.name}` has {len(main)} users ({names}): it {' / '.join(sorted(kinds))}"


def _branch_kind(node: fx.Node) -> str:
    target = node.target
    if target in (operator.add, torch.add, "add", operator.iadd, "add_", operator.sub, torch.sub, "sub", operator.mul, torch.mul, "mul"):
        return "feeds a residual add (channel groups, not chains, cover those)"
    if target in (torch.cat, torch.concat, torch.stack):
        return "feeds a concat"
    return "branches"


def _module_uses(graph: fx.Graph) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(node.target, str):
            uses[node.target] = uses.get(node.target, 0) + 1
    return uses


@dataclass(frozen=True)
class _Walk:
    """A chain walked from a producer: the best match, or why there is none."""

    nodes: tuple[fx.Node, ...]
    trie: _Trie | None
    stop: str


class _Matcher:
    def __init__(self, gm: fx.GraphModule, patterns: Mapping[Pattern, PruneFunction]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.trie = _build_trie(patterns)
        self.uses = _module_uses(gm.graph)
        self.attr_targets = [str(n.target) for n in gm.graph.nodes if n.op == "get_attr"]

    def _op(self, node: fx.Node, previous: fx.Node) -> MatchedOp | str:
        """The record of `node` as a chain op fed by `previous`, or why it cannot be one."""
        if node.op == "output":
            return OUTPUT
        if not node.args or node.args[0] is not previous:
            return f"`{node.name}` does not take `{previous.name}` as its first argument"
        rest = (node.args[1:], node.kwargs)
        extra = _nodes_in(rest)
        if previous in extra:
            return f"`{node.name}` uses `{previous.name}` more than once"
        if node.op == "call_module":
            if extra:
                return f"`{node.name}` takes more than one tensor input"
            assert isinstance(node.target, str)
            module = self.modules[node.target]
            if has_state(module) and self.uses.get(node.target, 0) > 1:
                return f"module `{node.target}` is called {self.uses[node.target]} times in forward"
            return ModuleOp(node.target, type(module))
        if any(n.op != "get_attr" for n in extra):
            return f"`{node.name}` takes other computed tensors as arguments"
        args = tuple(fx.node.map_arg(node.args[1:], lambda n: Attr(str(n.target))))  # type: ignore[arg-type, return-value]
        kwargs = tuple(sorted(fx.node.map_arg(dict(node.kwargs), lambda n: Attr(str(n.target))).items()))  # type: ignore[arg-type, return-value]
        if node.target is operator.getitem:
            producer = self.modules.get(str(previous.target)) if previous.op == "call_module" else None
            if not isinstance(producer, nn.RNNBase) or args != (0,):
                return f"`{node.name}` indexes a tensor (only an LSTM's output, getitem 0, is followed)"
        target = node.target
        assert isinstance(target, str) or callable(target)
        return Call(target, args, kwargs)

    def walk(self, start: fx.Node) -> _Walk:
        """The best match from `start`, in three steps per node of the chain:

        1. every trie node reached (`states`) that ends a pattern is a candidate: the longest
           path wins, then the most specific pattern (see ``_Trie.rank``);
        2. the chain moves on to the one user of the current node (``_successor``);
        3. each state moves to its child for that node's key, or stays where it is if it is a
           run that repeats on that key; runs that may follow are added (``_closure``).
        The walk stops where no state moves, at a branch, or at a node that cannot be a chain op.
        """
        key = _node_key(start, self.modules)
        first = self.trie.children.get(key) if key is not None else None
        if first is None:
            return _Walk((), None, "no pattern starts with it")
        assert isinstance(start.target, str)
        if self.uses.get(start.target, 0) > 1:
            return _Walk((), None, f"module `{start.target}` is called {self.uses[start.target]} times in forward")
        best = _Walk((), None, "")
        states = _closure([first])
        path = [start]
        node = start
        stop = ""
        while True:
            ended: _Trie | None = None
            for state in states:
                if state.function is not None and (ended is None or state.rank > ended.rank):
                    ended = state
            if ended is not None:
                best = _Walk(tuple(path), ended, "")
            if start.op == "call_module" and isinstance(self.modules[str(start.target)], nn.RNNBase) and node is start:
                nxt, stop = self._rnn_successor(start)
            else:
                nxt, stop = _successor(node)
            if nxt is None:
                break
            nxt_key = _node_key(nxt, self.modules)
            moved: list[_Trie] = []
            if nxt_key is not None:
                for state in states:
                    child = state.children.get(nxt_key)
                    if child is not None:
                        moved.append(child)
                    if state.loop and nxt_key in state.loop:
                        moved.append(state)
            if not moved:
                kind = _branch_kind(nxt)
                if kind != "branches":
                    stop = f"`{node.name}` {kind} at `{nxt.name}`"
                else:
                    stop = f"no pattern continues with `{nxt.name}`: {describe_node(nxt, self.modules)}"
                break
            op = self._op(nxt, node)
            if isinstance(op, str):
                stop = op
                break
            states, node = _closure(moved), nxt
            path.append(nxt)
        if best.trie is None:
            return _Walk((), None, stop or "the chain ends before any pattern completes")
        return best

    def _rnn_successor(self, node: fx.Node) -> tuple[fx.Node | None, str]:
        """An RNN's chain goes on through its output (getitem 0); its state may only be returned."""
        outputs = [u for u in node.users if u.target is operator.getitem and u.args[1:] == (0,)]
        others = [u for u in node.users if u not in outputs and not _state_only(u)]
        if len(outputs) != 1 or others:
            return None, f"the outputs of `{node.name}` are used elsewhere than its output getitem and the graph output"
        return outputs[0], ""

    def match(self, start: fx.Node) -> Match | str:
        walk = self.walk(start)
        if walk.trie is None:
            return walk.stop
        ops: list[MatchedOp] = [ModuleOp(str(start.target), type(self.modules[str(start.target)]))]
        for previous, node in zip(walk.nodes, walk.nodes[1:]):
            op = self._op(node, previous)
            assert not isinstance(op, str)
            ops.append(op)
        fqns = [op.fqn for op in ops if isinstance(op, ModuleOp) and has_state(self.modules[op.fqn])]
        for target in self.attr_targets:
            for fqn in fqns:
                if target == fqn or target.startswith(fqn + "."):
                    return f"forward reads `{target}` directly, which pruning `{fqn}` would change"
        producer = self.modules[str(start.target)]
        if isinstance(producer, nn.LSTM):
            layers = range(producer.num_layers)
            mask_fqns = tuple(f"{start.target}.weight_{k}_l{i}" for i in layers for k in ("ih", "hh"))
        else:
            mask_fqns = (f"{start.target}.weight",)
        assert walk.trie.pattern is not None and walk.trie.function is not None
        return Match(
            pattern=walk.trie.pattern,
            nodes=tuple(n.name for n in walk.nodes),
            ops=tuple(ops),
            prune_fn=walk.trie.function,
            weight_fqn=mask_fqns[0],
            mask_fqns=mask_fqns,
        )

    def producers(self) -> Iterator[fx.Node]:
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                key = _node_key(node, self.modules)
                if key is not None and key in self.trie.children:
                    yield node


def match_patterns(gm: fx.GraphModule, patterns: Mapping[Pattern, PruneFunction]) -> tuple[Match, ...]:
    """Every chain of `gm` that a pattern matches, in graph order of the producers.

    At each producer node (a ``call_module`` whose exact class starts some pattern) the chain
    follows the single user of each node; among the patterns it completes, the **longest
    wins** (e.g. ``(Conv2d, BatchNorm2d, ReLU, Conv2d)`` over nothing shorter, since chains
    only extend one node at a time). A :class:`~fprune.patterns.ZeroOrMore` element matches any run of
    its elements, so several patterns may match the same nodes: then the one with more fixed
    (non-run) elements wins, then the one with fewer runs, then the one added to `patterns`
    last; a tuple pattern thus wins over a run pattern. A chain stops at a branch (see the
    module docstring), at a node that takes the chain's tensor other than as its first argument
    or takes other computed tensors, and at a stateful module called more than once. `gm` is
    left unchanged.
    Raises PruneError for a malformed pattern (e.g. one that starts or ends with a run).
    """
    if not isinstance(gm, fx.GraphModule):
        raise PruneError(
            f"match_patterns: expects a torch.fx.GraphModule (from torch.fx.symbolic_trace(model)), got {type(gm).__name__}"
        )
    try:
        matcher = _Matcher(gm, patterns)
    except PruneError as error:  # a malformed pattern
        raise prefixed("match_patterns", error) from None
    found: list[Match] = []
    for node in matcher.producers():
        result = matcher.match(node)
        if isinstance(result, Match):
            found.append(result)
    return tuple(found)


def explain_unmatched(gm: fx.GraphModule, fqn: str, patterns: Mapping[Pattern, PruneFunction]) -> str:
    """Why no chain of `patterns` in `gm` prunes the tensor `fqn` (a sentence for an error)."""
    module_fqn, _, name = fqn.rpartition(".")
    matcher = _Matcher(gm, patterns)
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == module_fqn]
    module = matcher.modules.get(module_fqn)
    if module is None:
        return f"`{fqn}` is not a tensor of a submodule"
    if not nodes:
        return f"module `{module_fqn}` is not called in the traced forward (or only inside a leaf module)"
    if isinstance(module, nn.LSTM):
        if not (name.startswith("weight_ih_l") or name.startswith("weight_hh_l")):
            return f"an LSTM is pruned through its weight_ih_l*/weight_hh_l* masks, not `{name}`"
    elif name != "weight":
        return f"masks are keyed by the producer's weight: use `{module_fqn}.weight` (its `{name}` is pruned with it)"
    result = matcher.match(nodes[0])
    if isinstance(result, Match):
        return f"a pattern matches `{module_fqn}` but it is not among the matches given"
    return f"`{module_fqn}` ({type(module).__name__}): {result}"
