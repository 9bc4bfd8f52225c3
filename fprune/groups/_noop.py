"""Why a call would prune nothing: the text behind ``explain``'s summary line and behind
``prune_channels``' refusal to return an unpruned copy when ``level > 0``."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import fx, nn

from ._flow import FlowRule, RuleKey
from ._records import ChannelGroup
from ._scores import ignored, kept_at_level, round_kept, unit_count

_NO_GROUPS = (
    "nothing to prune: no producer found (no Linear, Conv, ConvTranspose, Embedding, LSTM or "
    "MultiheadAttention that fprune follows). A module unlifted from torch.export "
    "(ExportedProgram.module()) is a graph of ATen ops: pass the ExportedProgram itself, or the "
    "nn.Module. For layers of your own, register a flow rule "
    "(fprune.groups.default_flow_rules()) and pass it as rules="
)


def why_nothing_prunable(groups: Sequence[ChannelGroup]) -> str | None:
    """A line saying why no group of `groups` can be pruned by default, or None if one can."""
    if not groups:
        return _NO_GROUPS
    prunable = [g for g in groups if g.prunable]
    if not prunable:
        return f"nothing to prune: {_none_prunable(groups)}"
    if all(g.reaches_output for g in prunable):
        return (
            f"only groups that forward returns are prunable ({_group(prunable[0])}{' and more' if len(prunable) > 1 else ''}): "
            "group_masks and prune_channels skip them unless you pass `ignore` (ignore=() prunes them, "
            "shrinking the model's outputs)"
        )
    return None


def _none_prunable(groups: Sequence[ChannelGroup]) -> str:
    blocked = [g for g in groups if g.blockers]
    if not blocked:
        return "no group has a producer weight (these are the model's input channels)"
    first = blocked[0]
    return (
        f"all {len(groups)} groups are blocked or have no producer; the first blocker is "
        f"`{first.blockers[0].node}` ({_group(first)}): {first.blockers[0].reason}"
    )


def _group(group: ChannelGroup) -> str:
    return f"{group.size} channels of {', '.join(f'`{p}`' for p in group.producers) or 'no weight'}"


def nothing_removed(
    gm: fx.GraphModule,
    groups: Sequence[ChannelGroup],
    level: float,
    *,
    ignore: Collection[str] | None,
    round_to: int,
    global_ranking: bool,
    rules: Mapping[RuleKey, FlowRule],
) -> str:
    """Why ``prune_channels(model, level, ...)`` removes no channel although ``level > 0``:
    no group, no prunable group, every prunable group skipped, or a level too small."""
    if not groups:
        return f"no channel group found: {_no_producer(gm, rules)}"
    if not any(g.prunable for g in groups):
        return _none_prunable(groups)

    chosen = [g for g in groups if g.prunable and not ignored(g, ignore)]
    if not chosen:
        prunable = [g for g in groups if g.prunable]
        blocked = next((g for g in groups if g.blockers), None)
        others = (
            f"; the other groups cannot be pruned, the first blocker is `{blocked.blockers[0].node}` ({_group(blocked)}): "
            f"{blocked.blockers[0].reason}"
            if blocked is not None
            else ""
        )
        if ignore is None:
            return (
                f"every prunable group is returned by forward ({_group(prunable[0])}), and by default prune_channels "
                f"leaves the model's outputs whole (pass ignore=() to prune them too, shrinking the outputs){others}"
            )
        return f"every prunable group has a member in `ignore` ({_group(prunable[0])}); ignore fewer tensors or modules{others}"
    return _level_too_small(chosen, level, round_to, global_ranking)


def _no_producer(gm: fx.GraphModule, rules: Mapping[RuleKey, FlowRule]) -> str:
    """Why the analysis of `gm` found no producer, with the first node that explains it."""
    aten = next((n for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))), None)
    if aten is not None:
        return (
            f"no producer found. The model is a graph of ATen ops (node `{aten.name}` calls {aten.target}), as "
            "torch.export makes (ExportedProgram.module()), whose weights are no longer named by the modules "
            "that own them. Pass the ExportedProgram itself to channel_groups (its graph signature names them), "
            "or the nn.Module itself to prune_channels (with example_inputs it exports the model where fx fails)"
        )
    modules = dict(gm.named_modules())
    tensors: dict[str, torch.Tensor] = dict(gm.named_parameters())
    tensors.update(dict(gm.named_buffers()))
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = modules[str(node.target)]
            if not _has_weights(module):
                continue
            if calls[str(node.target)] > 1:
                return (
                    f"no producer found: the first layer with weights, `{node.target}` ({type(module).__name__}), is "
                    f"called {calls[str(node.target)]} times in forward, and fprune prunes only layers called once"
                )
            if not any(klass in rules for klass in type(module).__mro__):
                return (
                    f"no producer found: the first layer with weights, `{node.target}` ({type(module).__name__}), "
                    "has no flow rule. Register one: rules = fprune.groups.default_flow_rules(); "
                    f"rules[{type(module).__name__}] = your_rule, and pass rules= (README: \"Which ops are understood\")"
                )
        elif node.op in ("call_function", "call_method"):
            weights = sorted((str(a.target) for a in node.all_input_nodes if a.op == "get_attr"), key=lambda f: -tensors[f].dim() if f in tensors else 0)
            if weights and not _has_rule(node, rules):
                kind = f"method .{node.target}()" if node.op == "call_method" else f"function {getattr(node.target, '__name__', node.target)}"
                return (
                    f"no producer found: the first op that uses weights, `{node.name}` ({kind} on `{weights[0]}`), is "
                    "not a layer fprune knows and has no flow rule (a layer whose forward fx traced through, such as "
                    "GPT-2's Conv1D). Register a rule for it: rules = fprune.groups.default_flow_rules(); "
                    f"rules[{_key(node)}] = your_rule, and pass rules= (README: \"Which ops are understood\")"
                )
    if not any(True for _ in gm.parameters()):
        return "no producer found: the model has no parameters"
    return "no producer found: no op of the graph reads a weight as a layer fprune knows"


def _has_weights(module: nn.Module) -> bool:
    return any(p.dim() >= 2 for p in module.parameters())


def _has_rule(node: fx.Node, rules: Mapping[RuleKey, FlowRule]) -> bool:
    try:
        return node.target in rules
    except TypeError:
        return False


def _key(node: fx.Node) -> str:
    if node.op == "call_method":
        return repr(node.target)
    module = getattr(node.target, "__module__", None) or ""
    name = getattr(node.target, "__name__", str(node.target))
    return f"{'torch' if module.startswith('torch') else module}.{name}" if module else name


def removes(group: ChannelGroup, level: float, round_to: int) -> bool:
    """True if ``group_masks`` at `level` removes a channel of `group` (per-group ranking)."""
    kept = kept_at_level(group.size, level)
    if group.units:
        units = unit_count(group)
        return max(1, kept_at_level(units, 1 - kept / group.size)) < units
    return round_kept(kept, group.size, round_to) < group.size


def _smallest_level(group: ChannelGroup, round_to: int) -> float | None:
    """The smallest level that removes a channel of `group` (to 6 significant digits, rounded
    up so that it does), or None if none below 1 does."""
    high = math.nextafter(1.0, 0.0)
    if not removes(group, high, round_to):
        return None
    low = 0.0
    for _ in range(64):  # removes() is monotonic in the level
        middle = (low + high) / 2
        if removes(group, middle, round_to):
            high = middle
        else:
            low = middle
    step = 10.0 ** (math.floor(math.log10(high)) - 5)
    shown = math.ceil(high / step) * step
    return shown if removes(group, shown, round_to) and shown < 1 else high


def _level_too_small(chosen: Sequence[ChannelGroup], level: float, round_to: int, global_ranking: bool) -> str:
    sizes = sorted(g.size for g in chosen)
    span = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]} to {sizes[-1]}"
    head = f"level {level} removes no channel of the {len(chosen)} prunable groups ({span} channels each)"
    if global_ranking:
        total = sum(sizes)
        picked = total - kept_at_level(total, level)
        if picked == 0:
            return f"{head}: global_ranking removes none of their {total} channels at this level; use a level of at least {1 / total:.6g}"
        return (
            f"{head}: global_ranking picks {picked} channels, but rounding each "
            f"group's kept count (round_to={round_to}, whole units such as attention heads) keeps them all; raise the level or lower round_to"
        )
    candidates = [s for s in (_smallest_level(g, round_to) for g in chosen) if s is not None]
    why = "each group keeps floor((1 - level) * size) channels, all of them" if round_to <= 1 else f"with round_to={round_to}, each group's kept count rounds back to its size"
    if any(g.units for g in chosen):
        why += " (groups in units, such as attention heads or grouped-conv positions, lose whole units only)"
    if not candidates:
        return f"{head}: {why}, and no level below 1 removes any; lower round_to"
    return f"{head}: {why}; the smallest level that removes channels is {min(candidates):.6g}"


def explain(groups: Sequence[ChannelGroup]) -> str:
    """A readable report: per group its size, members and why it is or is not prunable.

    When nothing can be pruned (no group at all, no prunable group, or only groups that
    forward returns), a line after the count says why and what to do.
    """

    prunable = sum(g.prunable for g in groups)
    parts = [f"{len(groups)} channel groups, {prunable} prunable"]
    inexact = sum(g.prunable and not g.exact for g in groups)
    if inexact:  # norms="renormalize"
        parts[0] += f' ({inexact} of them NOT output-exact: norms="renormalize" renormalizes their norms)'
    why = why_nothing_prunable(groups)
    if why is not None:
        parts.append(why)
    parts += [str(g) for g in groups]
    return "\n\n".join(parts)

