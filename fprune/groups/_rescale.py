"""What apply does for the norms of a group: the exact RMSNorm rescaling (weight times
``sqrt(size / kept)``, eps times ``size / kept``; see ``_rules/_norms.py`` for why it is exact),
and, in a GraphModule, the ``normalized_shape`` of ``F.layer_norm`` calls whose weight was sliced."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .._errors import PruneError
from .._util.tensor_ops import Scale, scaled
from ._heads import _LeafTracer, _names
from ._records import ChannelGroup, NormRescale


def float_attributes(owner: nn.Module, value: float) -> list[str]:
    """The public int / float attributes of `owner` equal to `value` (where an eps may live)."""
    return [
        k for k, v in vars(owner).items()
        if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) == value
    ]  # fmt: skip


def rescaled_weights(
    groups: Sequence[ChannelGroup], new_tensors: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[NormRescale, int], dict[str, Scale]]:
    """`new_tensors` with the weight of every exact RMSNorm that lost channels multiplied by
    ``sqrt(size / kept)`` (for a norm that multiplies by ``offset + weight``, that sum), the
    kept count of every RMSNorm of the groups (lost or not), and the scaling of each weight
    scaled, as data."""
    records: dict[NormRescale, int] = {}
    for group in groups:
        for record in group.rescales:
            records[record] = new_tensors[record.weight].shape[record.kept_dim] if record.weight in new_tensors else record.size
    factors: dict[str, tuple[float, float]] = {}  # weight -> (factor, offset)
    for record, kept in records.items():
        factor = math.sqrt(record.size / kept)
        if factors.setdefault(record.weight, (factor, record.offset)) != (factor, record.offset):
            raise PruneError(f"`{record.weight}` is the weight of two RMSNorms that lose different numbers of channels")
    tensors = dict(new_tensors)
    scales: dict[str, Scale] = {}
    with torch.no_grad():
        for fqn, (factor, offset) in factors.items():
            if factor != 1.0:  # (offset + w) * factor = offset + w': Gemma's x * (1 + w)
                scales[fqn] = Scale(factor, offset if offset else None)
                tensors[fqn] = scaled(new_tensors[fqn], factor, scales[fqn].offset)
    return tensors, records, scales


def update_norms(
    pruned: nn.Module, records: Mapping[NormRescale, int], new_tensors: Mapping[str, Tensor], caller: str, *, check: bool = True
) -> dict[tuple[str, int], float]:
    """The pruned copy's RMSNorm eps multiplied by ``size / kept`` (a module attribute; in a
    GraphModule, the number in the graph), checked by tracing the copy again (unless not
    `check`: the caller checks the returned numbers); and, in a GraphModule, the
    ``normalized_shape`` of each ``F.layer_norm`` whose weight was sliced (in a module,
    forward passes its own, which apply resizes).

    Returns:
        The new eps by (node, argument index) of the graph where forward adds it."""
    graph_module = isinstance(pruned, fx.GraphModule)
    literals: dict[tuple[str, int], float] = {}
    values: dict[tuple[str, str], float] = {}
    for record, kept in records.items():
        if record.eps is None and kept == record.size:
            continue  # eps=None: torch.finfo(x.dtype).eps at run time, as before
        eps = record.eps if record.eps is not None else torch.finfo(_dtype(pruned, record.weight, new_tensors.get(record.weight))).eps
        new = eps * (record.size / kept)
        if record.eps_node:
            literals[(record.eps_node, record.eps_index)] = new
            if graph_module:
                continue
        owner = pruned.get_submodule(record.module) if record.module else pruned
        attribute = record.attribute
        if not attribute:
            names = float_attributes(owner, eps)
            if len(names) != 1 and kept == record.size:
                continue  # this norm keeps every channel: its eps stays as it is, wherever it comes from
            if len(names) != 1:
                found = f"{len(names)} attributes hold it ({', '.join(names)})" if names else "no attribute holds it"
                raise PruneError(
                    f"{caller}: the RMSNorm at `{record.node}` adds eps={eps!r}, which the pruned copy needs as "
                    f"{new!r}, but {found} in `{record.module or type(pruned).__name__}`: it cannot be traced to exactly one; "
                    "keep the eps in one module attribute, or `ignore` the group"
                )
            attribute = names[0]
        if values.setdefault((record.module, attribute), new) != new:
            raise PruneError(
                f"{caller}: `{record.module}.{attribute}` is the eps of RMSNorms that lose different numbers of channels; "
                "give each norm its own module"
            )
    changes = {key: value for key, value in values.items() if getattr(pruned.get_submodule(key[0]) if key[0] else pruned, key[1]) != value}
    before = _LeafTracer().trace(pruned) if check and changes and literals and not graph_module else None
    for (module, attribute), value in changes.items():
        setattr(pruned.get_submodule(module) if module else pruned, attribute, value)
    if isinstance(pruned, fx.GraphModule):
        nodes = {n.name: n for n in pruned.graph.nodes}
        for (name, index), value in literals.items():
            args = list(nodes[name].args)
            args[index] = value
            nodes[name].args = tuple(args)
        if _resize_layer_norm_calls(pruned, new_tensors) or literals:
            pruned.recompile()
    if before is not None:
        problem = _check_eps(before, _LeafTracer().trace(pruned), literals)
        if problem is not None:
            raise PruneError(
                f"{caller}: the pruned copy's RMSNorm eps could not be rescaled: {problem}; keep each norm's eps in "
                "one module attribute that forward adds as it is, or `ignore` the group"
            )
    return literals


def _dtype(pruned: nn.Module, fqn: str, weight: Tensor | None) -> torch.dtype:
    if weight is not None:
        return weight.dtype
    owner, _, name = fqn.rpartition(".")
    tensor = getattr(pruned.get_submodule(owner) if owner else pruned, name)
    assert isinstance(tensor, Tensor)
    return tensor.dtype


def _check_eps(before: fx.Graph, after: fx.Graph, literals: Mapping[tuple[str, int], float]) -> str | None:
    """None if `after` is `before` but for the eps numbers `literals` (node, index) -> value."""
    old_nodes, new_nodes = list(before.nodes), list(after.nodes)
    if [(n.name, n.op, n.target) for n in old_nodes] != [(n.name, n.op, n.target) for n in new_nodes]:
        return "the pruned model's forward traces to a different structure"
    for old, new in zip(old_nodes, new_nodes):
        expected = list(old.args)
        for (name, index), value in literals.items():
            if name == old.name:
                expected[index] = value
        if _names(new.args) != _names(tuple(expected)) or _names(new.kwargs) != _names(old.kwargs):
            return f"`{old.name}` has arguments {_names(new.args)}, expected {_names(tuple(expected))}"
    return None


def _resize_layer_norm_calls(pruned: fx.GraphModule, new_tensors: Mapping[str, Tensor]) -> bool:
    """Set each ``F.layer_norm``'s normalized_shape to its sliced weight's size, and each
    ``F.group_norm``'s num_groups to it where it was one group per channel; True if any.

    A per-channel group norm's num_groups now exceeds the sliced weight's size, which a GroupNorm
    of several channels per group never does (it keeps at least one position of each group)."""
    changed = False
    for node in pruned.graph.nodes:
        if node.op != "call_function" or node.target not in (F.layer_norm, F.group_norm):
            continue
        weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")  # both take it third
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr" and str(weight.target) in new_tensors):
            continue
        size = new_tensors[str(weight.target)].shape[0]
        name = "normalized_shape" if node.target is F.layer_norm else "num_groups"
        old = node.kwargs[name] if name in node.kwargs else node.args[1]
        new: object = (size,) if name == "normalized_shape" else size
        if name == "num_groups" and not (isinstance(old, int) and old > size):
            continue
        if name in node.kwargs:
            node.kwargs = {**node.kwargs, name: new}
        else:
            node.args = (node.args[0], new, *node.args[2:])
        changed = True
    return changed
