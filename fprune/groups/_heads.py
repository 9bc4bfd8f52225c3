"""After slicing: the head counts and sizes a graph writes as literals (``view(B, N, 8, 64)``)
rewritten to the kept heads, and the rewritten graph checked against a fresh trace."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

from torch import fx, nn

from .._errors import PruneError
from ._mha import HeadPrunedMultiheadAttention
from ._records import SizeLiteral
from ._sizes import with_sizes


def update_head_counts(
    model: nn.Module,
    pruned: nn.Module,
    new: Mapping[tuple[str, int], int],
    literals: Sequence[SizeLiteral],
    caller: str,
    verify: Callable[[], str | None] | None = None,
) -> None:
    """Make the pruned copy's forward compute the new head counts, and check that it does
    (a PruneError from `caller`, the public function, if it cannot).

    A GraphModule gets the numbers in its graph replaced. Any other model gets the integer
    attributes of the modules that wrote them (``self.num_heads``) set to the new counts; then
    both models are traced and their graphs must be the same but for exactly those numbers.
    `verify` replaces that check (None if the copy computes the new counts, else the problem):
    for a torch.export graph, whose numbers may also come from shapes, the copy is first
    checked as it is.
    """
    if isinstance(pruned, fx.GraphModule):
        nodes = {n.name: n for n in pruned.graph.nodes}
        for (name, index), value in new.items():
            _set_size(nodes[name], index, value)
        pruned.recompile()
        return
    candidates: dict[tuple[str, str], int] = {}  # (module, attribute) -> its new value (-1: ambiguous)
    for literal in literals:
        owner = pruned.get_submodule(literal.module) if literal.module else pruned
        for attr, value in vars(owner).items():
            if attr.startswith("_") or isinstance(value, bool) or not isinstance(value, int) or value != literal.value:
                continue
            target = new[(literal.node, literal.index)]
            if candidates.setdefault((literal.module, attr), target) != target:
                candidates[(literal.module, attr)] = -1  # two different new values
    usable = {key: value for key, value in candidates.items() if value >= 0}
    about_heads = {k: v for k, v in usable.items() if "head" in k[1].lower() and "dim" not in k[1].lower() and "size" not in k[1].lower()}
    # every matching attribute; those named for heads; then each alone (an equal `dim` must stay)
    attempts = [usable, about_heads] + [{key: value} for key, value in usable.items()]
    if verify is not None:  # the numbers may follow the shapes already; else the fewest attributes that work
        by_name: dict[str, dict[tuple[str, str], int]] = {}  # one attribute name, in every module that has it
        for key, value in usable.items():
            by_name.setdefault(key[1], {})[key] = value
        attempts = [{}, about_heads, *by_name.values(), usable]
    check = verify if verify is not None else lambda: verify_graph(model, pruned, new)
    problem: str | None = "no integer attribute of the module holds the number"
    for index, changes in enumerate(attempts):
        if not changes and (index or verify is None):
            continue
        originals: dict[tuple[str, str], object] = {}
        for (module_fqn, attr), value in changes.items():
            owner = pruned.get_submodule(module_fqn) if module_fqn else pruned
            originals[(module_fqn, attr)] = getattr(owner, attr)
            setattr(owner, attr, value)
        problem = check()
        if problem is None:
            return
        for (module_fqn, attr), old_value in originals.items():
            setattr(pruned.get_submodule(module_fqn) if module_fqn else pruned, attr, old_value)
    if not new:  # nothing to rewrite: the export check of the copy itself failed
        raise PruneError(
            f"{caller}: the pruned copy, exported again on the example inputs, is not the model less the removed "
            f"channels ({problem}); `ignore` the groups whose layers it names"
        )
    raise PruneError(
        f"{caller}: pruning changes counts that forward writes into a view / reshape / split ({problem}); "
        "fprune could not find the module attributes they come from. Compute them from an attribute such as "
        "`self.num_heads` or `self.c` (fprune updates it), use -1 in a view, or `ignore` the group"
    )


def _set_size(node: fx.Node, index: int, value: int) -> None:
    node.args, node.kwargs = with_sizes(node, {index: value})


class _LeafTracer(fx.Tracer):
    """fx's tracer, with HeadPrunedMultiheadAttention a leaf like the nn.MultiheadAttention it
    stands in for (fx only keeps classes of torch.nn as leaves)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, HeadPrunedMultiheadAttention) or super().is_leaf_module(m, module_qualified_name)


def verify_graph(
    model: nn.Module, pruned: nn.Module, new: Mapping[tuple[str, int], int]
) -> str | None:
    """None if the pruned copy traces to the original graph but for the `new` numbers."""
    try:
        # a shallow copy: tracing stores the tensors forward makes (`_tensor_constant0`) on the root
        before, after = _LeafTracer().trace(copy.copy(model)), _LeafTracer().trace(pruned)
    except Exception as error:  # noqa: BLE001 - reported as the problem
        return f"the models could not be traced again to check ({type(error).__name__})"
    old_nodes = list(before.nodes)
    new_nodes = list(after.nodes)
    if len(old_nodes) != len(new_nodes) or not all(_same_node(a, b) for a, b in zip(old_nodes, new_nodes)):
        return "the pruned model's forward has a different structure"
    renamed = {b.name: a.name for a, b in zip(old_nodes, new_nodes)}  # tensor constants get fresh names
    for old, fresh in zip(old_nodes, new_nodes):
        sizes = {index: value for (name, index), value in new.items() if name == old.name}
        expected, expected_kwargs = with_sizes(old, sizes) if sizes else (old.args, dict(old.kwargs))
        if _names(fresh.args, renamed) != _names(expected) or _names(fresh.kwargs, renamed) != _names(expected_kwargs):
            if sizes:
                return (
                    f"`{old.name}` has arguments {_names(fresh.args)} {_names(fresh.kwargs)}, "
                    f"expected {_names(expected)} {_names(expected_kwargs)}"
                )
            return f"`{old.name}` changed its arguments"
    return None


def _same_node(old: fx.Node, fresh: fx.Node) -> bool:
    """The same node in two traces: name, op and target, where a tensor constant fx made while
    tracing (a tensor computed in forward from a buffer, ``_tensor_constant3``) may be numbered
    differently (fx numbers them by the attributes the traced model already has)."""
    if (old.name, old.op, old.target) == (fresh.name, fresh.op, fresh.target):
        return True
    return old.op == fresh.op == "get_attr" and all(str(n.target).startswith("_tensor_constant") for n in (old, fresh))


def _names(value: object, renamed: Mapping[str, str] | None = None) -> object:
    """Arguments with nodes replaced by their names (mapped through `renamed`), for comparison."""
    if isinstance(value, fx.Node):
        return renamed.get(value.name, value.name) if renamed else value.name
    if isinstance(value, (list, tuple)):
        return [_names(v, renamed) for v in value]
    if isinstance(value, dict):
        return {k: _names(v, renamed) for k, v in value.items()}
    return value

