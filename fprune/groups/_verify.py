"""The safety net: a pruned copy runs once, on shapes alone, before anyone gets it.

Whenever example inputs are at hand (``prune_channels(..., example_inputs=...)``, or groups from
``channel_groups(gm, example_inputs=...)`` given to ``apply_prune``), the pruned copy and the
original run once on meta tensors of the example inputs' shapes and dtypes (see
``fprune/_util/shape_mode.py``: no arithmetic, so the cost does not depend on the input size). The copy must
run, and return what the original returns: the same structure, dtypes and shapes, except that
a tensor the pruned groups reach may lose channels. Otherwise the copy is dropped and a
PruneError names the node that failed (found by running the copy's graph through an fx
Interpreter, only once something went wrong) and the groups whose channels reach it.

A model that cannot run on meta tensors at all (its forward reads values: ``.item()``, data-
dependent shapes) runs on real tensors instead: the example inputs themselves where the caller
has them, else zeros of their shapes. A model whose original cannot run either way is not
checked. The models' own forward hooks do not fire during these runs (the check is not a
forward of the user's); hooks registered globally for all modules do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from .._errors import PruneError
from .._util.checks import describe_node
from .._util.running import ExampleShapes, device_of, hooks_off, on_meta, run_quietly
from .._util.shape_mode import ShapeOnly
from ._mha import HeadPrunedMultiheadAttention
from ._records import ChannelGroup


def check_pruned(
    caller: str,
    model: nn.Module,
    pruned: nn.Module,
    groups: Sequence[ChannelGroup],
    cut: Sequence[int],
    shapes: ExampleShapes,
    real_inputs: Sequence[object] | None = None,
) -> None:
    """PruneError unless `pruned` runs on the example shapes and returns what `model` returns
    (tensors reached by the `cut` groups, which lose channels, may be smaller).

    Args:
        caller: the public function, for the message.
        model: the original; left unchanged (it runs on meta tensors: nothing is written).
        pruned: its pruned copy.
        groups: the groups the masks were given for.
        cut: indices into `groups` of those that lose channels.
        shapes: the example inputs' shapes and dtypes.
        real_inputs: the example inputs themselves, if the caller has them (used only for a
            model that cannot run on meta tensors).
    """
    meta = True
    inputs: Sequence[object] = shapes.meta_inputs()
    kwargs = shapes.meta_kwargs()
    got = run_quietly(pruned, inputs, meta=True, kwargs=kwargs)
    want = run_quietly(model, inputs, meta=True, kwargs=kwargs)
    if (want.error is not None or got.error is not None) and not on_meta(model):
        # the model reads values (both fail on meta), or the copy failed: run both for real,
        # so that only a failure of the copy itself is reported
        real = real_inputs if real_inputs is not None else shapes.zero_inputs(device_of(model))
        real_kwargs = shapes.zero_kwargs(device_of(model))
        again = run_quietly(pruned, real, meta=False, kwargs=real_kwargs)
        if want.error is not None or again.error is None:
            want = run_quietly(model, real, meta=False, kwargs=real_kwargs)
            if want.error is not None:
                return  # the original cannot run on these inputs either: nothing to compare with
            meta, inputs, got = False, real, again
    elif want.error is not None:
        return  # a meta model that cannot run on meta tensors: nothing to compare with
    shrinks = any(groups[i].reaches_output for i in cut)
    if got.error is not None:
        node, located = _failing_node(pruned, inputs, meta)
        error = located or got.error
        first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else "(no message)"
        where = f"at node `{node.name}` ({describe_node(node, dict(pruned.named_modules()))})" if node is not None else "(fprune could not find the node: the copy's traced graph does not fail the same way)"
        found = _groups_near(pruned, node, groups, cut) if node is not None else []
        raise PruneError(
            f"{caller}: the pruned copy fails on its first forward {where}: {type(error).__name__}: {first}. "
            f"{_blame(groups, found or list(cut))} {_advice(caller, groups, found or list(cut), node)}"
        )
    problem = _compare(got.output, want.output, shrinks)
    if problem is not None:
        path, what = problem
        node = _output_node(pruned, path)
        found = _groups_near(pruned, node, groups, cut) if node is not None else []
        at = f" (node `{node.name}`)" if node is not None else ""
        raise PruneError(
            f"{caller}: the pruned copy runs, but its output{path}{at} {what}, so it does not compute what the masked "
            f"model computes. {_blame(groups, found or list(cut))} {_advice(caller, groups, found or list(cut), node)}"
        )


# --- comparing outputs --------------------------------------------------------------------------


def _compare(got: object, want: object, shrinks: bool) -> tuple[str, str] | None:
    """(key path, what differs) for the first difference, or None if `got` is as expected."""
    got_leaves, got_structure = pytree.tree_flatten_with_path(got)
    want_leaves, want_structure = pytree.tree_flatten_with_path(want)
    if got_structure != want_structure:
        return "", f"has the structure {_structure(got_structure)} instead of {_structure(want_structure)}"
    for (path, g), (_, w) in zip(got_leaves, want_leaves):
        key = pytree.keystr(path)
        if isinstance(w, Tensor) != isinstance(g, Tensor) or (not isinstance(w, Tensor) and type(w) is not type(g)):
            return key, f"is a {type(g).__name__} instead of a {type(w).__name__}"
        if not isinstance(g, Tensor) or not isinstance(w, Tensor):
            continue
        if g.dtype != w.dtype:
            return key, f"has dtype {g.dtype} instead of {w.dtype}"
        if g.shape == w.shape:
            continue
        smaller = g.dim() == w.dim() and all(0 < a <= b for a, b in zip(g.shape, w.shape))
        if not (shrinks and smaller):
            expected = f"{tuple(w.shape)}" + (" or smaller in the dims of the pruned output channels" if shrinks else "")
            return key, f"has shape {tuple(g.shape)}, expected {expected}"
    return None


def _structure(spec: pytree.TreeSpec) -> str:
    text = str(spec).replace("\n", " ")
    return " ".join(text.split())


# --- naming the failing node and the groups -----------------------------------------------------


class _Tracer(fx.Tracer):
    """fx's tracer, with fprune's HeadPrunedMultiheadAttention a leaf like nn.MultiheadAttention."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:

        return isinstance(m, HeadPrunedMultiheadAttention) or super().is_leaf_module(m, module_qualified_name)


def _graph_module(pruned: nn.Module) -> fx.GraphModule | None:
    if isinstance(pruned, fx.GraphModule):
        return pruned
    try:
        return fx.GraphModule(pruned, _Tracer().trace(pruned))
    except Exception:  # noqa: BLE001 - the message then names no node
        return None


class _NodeFailed(Exception):
    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node = node
        self.error = error


class _Locator(fx.Interpreter):
    def run_node(self, n: fx.Node) -> object:
        try:
            return super().run_node(n)
        except _NodeFailed:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised with the node
            raise _NodeFailed(n, error) from None


def _failing_node(pruned: nn.Module, inputs: Sequence[object], meta: bool) -> tuple[fx.Node | None, Exception | None]:
    """The node of the pruned copy's graph whose op fails on `inputs`, and its error."""
    gm = _graph_module(pruned)
    if gm is None:
        return None, None
    with warnings.catch_warnings(), torch.no_grad(), hooks_off(gm):
        warnings.simplefilter("ignore")
        try:
            if meta:
                with ShapeOnly():
                    _Locator(gm).run(*inputs)
            else:
                _Locator(gm).run(*inputs)
        except _NodeFailed as failed:
            return failed.node, failed.error
        except Exception:  # noqa: BLE001 - e.g. the graph takes other arguments: no node to name
            return None, None
    return None, None


def _output_node(pruned: nn.Module, path: str) -> fx.Node | None:
    """The node that computes the output leaf at key path `path`."""
    gm = _graph_module(pruned)
    if gm is None:
        return None
    output = next((n for n in gm.graph.nodes if n.op == "output"), None)
    if output is None:
        return None
    for key, value in pytree.tree_flatten_with_path(output.args[0])[0]:
        if pytree.keystr(key) == path and isinstance(value, fx.Node):
            return value
    return None


def _groups_near(pruned: nn.Module, node: fx.Node, groups: Sequence[ChannelGroup], cut: Sequence[int]) -> list[int]:
    """The cut groups whose tensors the modules nearest to `node` hold: `node`'s own module,
    else those of the closest nodes it reads from (breadth first)."""
    owners: list[tuple[int, str, str]] = []  # (group, tensor FQN, module FQN)
    for index in cut:
        for member in groups[index].members:
            owners.append((index, member.fqn, member.fqn.rpartition(".")[0]))
    seen: set[str] = set()
    frontier = [node]
    while frontier:
        found: set[int] = set()
        for n in frontier:
            seen.add(n.name)
            target = str(n.target)
            if n.op == "call_module":
                found.update(g for g, _, module in owners if module == target or module.startswith(f"{target}."))
            elif n.op == "get_attr":
                found.update(g for g, fqn, _ in owners if fqn == target)
        if found:
            return sorted(found)
        following: list[fx.Node] = []
        for n in frontier:
            for arg in n.all_input_nodes:
                if arg.name not in seen and arg not in following:
                    following.append(arg)
        frontier = following
    return []


def _name(group: ChannelGroup) -> str:
    return f"the group of {group.size} channels produced by {', '.join(f'`{p}`' for p in group.producers)}"


def _blame(groups: Sequence[ChannelGroup], found: Sequence[int]) -> str:
    named = [_name(groups[i]) for i in found[:3]]
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"The channels removed from {'; '.join(named)}{more} reach it."


def _advice(caller: str, groups: Sequence[ChannelGroup], found: Sequence[int], node: fx.Node | None) -> str:
    producers = [groups[i].producers[0] for i in found if groups[i].producers]
    at = f"at `{node.name}` or before it" if node is not None else "on their way"
    report = (
        f"fprune does not return a broken model. A flow rule let these channels through an op that fixes their number "
        f"({at}): if it is one of your own (`rules=`), fix it; if it is fprune's, please report the model."
    )
    if caller == "prune_channels":
        keep = ", ".join(repr(p) for p in producers)
        return f"{report} To prune the rest, pass ignore={{{keep}}}."
    keep = ", ".join(f"`{p}`" for p in producers)
    return f"{report} To prune the rest, leave out the masks of {'that group' if len(producers) == 1 else 'those groups'} ({keep})."
