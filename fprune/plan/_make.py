"""``make_plan``: prune once, and record what was done as a :class:`~fprune.plan.Plan`: the ops
each tensor went through (recorded by apply as it ran them), and every module attribute,
class, config field and graph argument that differs between the model and its pruned copy.
The plan is then replayed on the model and must give the pruned copy back, bit for bit."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from typing_extensions import Unpack

import torch
from torch import Tensor, fx, nn

from .._version import __version__
from .._apply import ModelT, Unfoldable, prune_reporting_unshrunk, split_records
from .._prune_channels import ChannelOptions, prune_channels_recording
from .._errors import PruneError, prefixed
from .._util.checks import check_model, named_tensors, trace
from .._util.tensor_ops import Take, TensorOp
from ..calibrate._statistics import Statistics
from ..groups._find import channel_groups
from ..groups._records import ChannelGroup
from ..hf._config import EPS_FIELDS, SIZE_FIELDS
from ..patterns._records import Match
from ._records import EllipsisValue, NodeArgs, NodeRef, Plan, SliceValue, Value, encodable
from ._replay import CLASSES, architecture_of, replay, run_checked, tensor_shapes

_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "training"})
_TRACE_CONSTANT = re.compile(r"_tensor_constant\d+")
"""What torch.fx's tracer names the tensors it stores on the module it traces (apply traces the
copy to find head counts): not the model's state, and never read by its forward."""


def make_plan(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    matches: Sequence[Match] | Sequence[ChannelGroup],
    *,
    compensate: Statistics | None = None,
) -> Plan:
    """What ``apply_prune(model, masks, matches, compensate=compensate)`` does, as a
    :class:`Plan` that :func:`apply_plan` replays: ``apply_plan(model, plan)`` is the pruned
    copy, bit for bit (make_plan checks the plan's structure, replayed on the meta device, and
    every value it computes beyond slicing). `model` is unchanged, and may live on the meta
    device (the plan of a model too large to load: scores from
    ``group_masks(..., weights=checkpoint_weights(path))``).

    Args:
        model, masks, matches, compensate: as for :func:`fprune.apply_prune`. Pattern
            matches (with ``prune_bias=True``) are recorded through the channel groups of
            the same model, which must prune it to the same tensors (checked).

    Raises:
        PruneError: what apply_prune raises; for pattern matches, a pruning the channel
            groups of the model do not reproduce (prune with channel groups instead).
    """
    check_model(model, "make_plan")
    groups, match_list = split_records(matches, "make_plan")
    if groups is None:
        return _plan_of_matches(model, masks, match_list, compensate)
    recorded: dict[str, list[TensorOp]] = {}
    pruned, _ = prune_reporting_unshrunk(model, masks, groups, caller="make_plan", compensate=compensate, recorded=recorded)
    plan = describe(model, pruned, recorded)
    _check_replay(model, pruned, plan)
    return plan


def pruned_and_plan(model: ModelT, level: float, **options: Unpack[ChannelOptions]) -> tuple[ModelT, Plan]:
    """:func:`fprune.prune_channels`'s pruned copy and its plan (checked to replay it)."""
    recorded: dict[str, list[TensorOp]] = {}
    try:
        pruned = prune_channels_recording(model, level, recorded=recorded, **options)
    except PruneError as error:
        raise PruneError(str(error).replace("prune_channels:", "plan_channels:", 1)) from None
    plan = describe(model, pruned, recorded)
    _check_replay(model, pruned, plan)
    return pruned, plan


def plan_channels(model: nn.Module, level: float, **options: Unpack[ChannelOptions]) -> Plan:
    """The plan of :func:`fprune.prune_channels` (same arguments): trace or export, channel
    groups, masks at `level` (with calibration where asked), recorded instead of only applied.
    ``apply_plan(model, plan_channels(model, level, ...))`` is ``prune_channels(model, level,
    ...)``, bit for bit.

    Raises:
        PruneError: what prune_channels raises (the message starts with ``plan_channels:``).
    """
    check_model(model, "plan_channels")
    return pruned_and_plan(model, level, **options)[1]


def _plan_of_matches(model: nn.Module, masks: Mapping[str, Tensor], matches: Sequence[Match], compensate: Statistics | None) -> Plan:
    """The plan of a pattern-match pruning, made from the model's channel groups and checked
    to give the tensors the matches give (`compensate`: refused, as apply_prune refuses it)."""
    unfoldable: Unfoldable = "refuse"
    pruned, _ = prune_reporting_unshrunk(model, masks, matches, caller="make_plan", unfoldable=unfoldable, compensate=compensate)
    remedy = (
        "find the channel groups (fprune.channel_groups on the traced model) and pass them, with masks for their "
        "producers, instead of the pattern matches"
    )
    try:
        # the tracer stores tensor constants on the module it traces (`_tensor_constant0`): a shallow copy's own
        # attributes take them, and the model is left as it was
        graph = model if isinstance(model, fx.GraphModule) else trace(copy.copy(model), "make_plan")
        groups = channel_groups(graph)
        recorded: dict[str, list[TensorOp]] = {}
        grouped, _ = prune_reporting_unshrunk(model, masks, groups, caller="make_plan", recorded=recorded)
    except PruneError as error:
        raise PruneError(f"make_plan: a plan records channel groups, and these masks do not prune the model's groups: {error}; {remedy}") from None
    problem = _tensor_difference(pruned, grouped)
    if problem is not None:
        raise PruneError(f"make_plan: the channel groups of the model prune it differently from these pattern matches ({problem}); {remedy}")
    plan = describe(model, grouped, recorded)
    _check_replay(model, grouped, plan)
    return plan


def describe(model: nn.Module, pruned: nn.Module, recorded: Mapping[str, Sequence[TensorOp]]) -> Plan:
    """The plan that makes `pruned` of `model`: the `recorded` tensor ops, and the attributes,
    classes, config fields and graph arguments that differ."""
    shapes = tensor_shapes(model)
    after = named_tensors(pruned)
    for fqn, tensor in after.items():
        before = shapes.get(fqn)
        if fqn not in recorded and (before is None or before != tuple(tensor.shape)):
            raise PruneError(f"make_plan: `{fqn}` changed in a way fprune did not record; this is a bug in fprune, please report it")
    order = {fqn: i for i, fqn in enumerate([*shapes, *after])}
    tensors = {fqn: tuple(recorded[fqn]) for fqn in sorted(recorded, key=lambda f: order.get(f, len(order)))}
    return Plan(
        architecture=architecture_of(model),
        shapes=shapes,
        tensors=tensors,
        attributes=_attribute_changes(model, pruned),
        classes=_class_changes(model, pruned),
        config=_config_changes(model, pruned),
        graph=_graph_changes(model, pruned),
        fprune_version=__version__,
    )


def _same(old: object, new: object) -> bool:
    if type(old) is not type(new):
        return False
    if isinstance(old, float) and isinstance(new, float):
        return old == new and math.copysign(1, old) == math.copysign(1, new) or (math.isnan(old) and math.isnan(new))
    try:
        return bool(old == new)
    except Exception:  # noqa: BLE001 - values whose == does not give a bool (tensors) are compared elsewhere
        return False


def _attribute_changes(model: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Value]]:
    originals = dict(model.named_modules(remove_duplicate=False))
    changes: dict[str, dict[str, Value]] = {}
    for name, module in pruned.named_modules(remove_duplicate=False):
        original = originals.get(name)
        if original is None:
            raise PruneError(f"make_plan: the pruned copy has a module `{name}` the model lacks; this is a bug in fprune, please report it")
        before, now = vars(original), vars(module)
        graph_module = isinstance(module, fx.GraphModule)
        for key, value in now.items():
            if key in _MODULE_STATE or (graph_module and key.startswith("_")) or key == "config":
                continue
            if isinstance(value, Tensor) and _TRACE_CONSTANT.fullmatch(key):
                continue  # left by a trace of the copy (or of the model, before make_plan): no state of the model
            old = before.get(key, _MISSING)
            if _same(old, value):
                continue
            if not encodable(value):
                if old is not _MISSING and not encodable(old):
                    continue  # state a plan does not hold (hooks, caches of tensors), copied as it was
                raise PruneError(
                    f"make_plan: pruning sets `{name or type(model).__name__}.{key}` to a {type(value).__name__}, which a plan "
                    "cannot hold; this is a bug in fprune, please report it"
                )
            changes.setdefault(name, {})[key] = value  # encodable: a Value
        for key in before.keys() - now.keys():
            if key in _MODULE_STATE or (graph_module and key.startswith("_")) or _TRACE_CONSTANT.fullmatch(key):
                continue
            raise PruneError(
                f"make_plan: pruning removes the attribute `{name or type(model).__name__}.{key}`, which a plan cannot "
                "express; this is a bug in fprune, please report it"
            )
    return changes


_MISSING = object()


def _class_changes(model: nn.Module, pruned: nn.Module) -> dict[str, str]:
    originals = dict(model.named_modules(remove_duplicate=False))
    names = {cls: name for name, cls in CLASSES.items()}
    changes: dict[str, str] = {}
    for name, module in pruned.named_modules(remove_duplicate=False):
        original = originals[name]
        if type(module) is type(original) or (isinstance(module, fx.GraphModule) and isinstance(original, fx.GraphModule)):
            continue
        known = names.get(type(module))
        if known is None:
            raise PruneError(f"make_plan: pruning gives `{name}` the class {type(module).__name__}, which a plan cannot hold")
        changes[name] = known
    return changes


def _config_changes(model: nn.Module, pruned: nn.Module) -> dict[str, Value]:
    old, new = getattr(model, "config", None), getattr(pruned, "config", None)
    to_dict = getattr(new, "to_dict", None)
    if old is None or not callable(to_dict) or not callable(getattr(old, "to_dict", None)):
        return {}
    return _dict_changes(getattr(old, "to_dict")(), to_dict(), new, "")


PINNED = (*SIZE_FIELDS, "head_dim", *EPS_FIELDS)
"""Config fields written whenever a config changes, changed or not: a config file that lacks
one (``head_dim``) would derive it from the others (``hidden_size // num_attention_heads``),
which pruning the heads breaks."""


def _dict_changes(old: Mapping[str, object], new: Mapping[str, object], config: object, prefix: str) -> dict[str, Value]:
    changes = _changed_fields(old, new, config, prefix)
    if any("." not in k.removeprefix(prefix) for k in changes):
        for key in PINNED:
            value = getattr(config, key, None)
            if key in new and f"{prefix}{key}" not in changes and isinstance(value, (int, float)) and not isinstance(value, bool):
                changes[f"{prefix}{key}"] = value
    return changes


def _changed_fields(old: Mapping[str, object], new: Mapping[str, object], config: object, prefix: str) -> dict[str, Value]:
    changes: dict[str, Value] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if _same(before, value):
            continue
        held = getattr(config, key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict) and callable(getattr(held, "to_dict", None)):
            changes.update(_dict_changes(before, value, held, f"{prefix}{key}."))
            continue
        chosen = held if held is not _MISSING and encodable(held) else value
        if not encodable(chosen):
            raise PruneError(f"make_plan: pruning sets config field `{prefix}{key}` to a value a plan cannot hold ({chosen!r})")
        changes[f"{prefix}{key}"] = chosen  # type: ignore[assignment,unused-ignore]  # encodable: a Value
    return changes


def _normalized(value: object) -> object:
    """A node argument with each Node as its name, for comparing two graphs."""
    if isinstance(value, fx.Node):
        return NodeRef(value.name)
    if isinstance(value, list):  # fx holds lists as immutable_list: a list again when set back
        return [_normalized(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_normalized(v) for v in value)
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, slice):
        return SliceValue(*(_normalized(part) for part in (value.start, value.stop, value.step)))  # type: ignore[arg-type]  # checked by encodable
    if value is Ellipsis:
        return EllipsisValue()
    return value


def _graph_changes(model: nn.Module, pruned: nn.Module) -> dict[str, NodeArgs]:
    if not isinstance(pruned, fx.GraphModule) or not isinstance(model, fx.GraphModule):
        return {}
    old_nodes = {n.name: n for n in model.graph.nodes}
    changes: dict[str, NodeArgs] = {}
    for node in pruned.graph.nodes:
        old = old_nodes.get(node.name)
        if old is None or old.op != node.op or old.target != node.target:
            raise PruneError(f"make_plan: the pruned graph's node `{node.name}` is not the model's; this is a bug in fprune, please report it")
        args, kwargs = _normalized(node.args), _normalized(dict(node.kwargs))
        if _same(args, _normalized(old.args)) and _same(kwargs, _normalized(dict(old.kwargs))):
            continue
        assert isinstance(args, tuple) and isinstance(kwargs, dict)
        if not encodable(args) or not encodable(kwargs):
            raise PruneError(f"make_plan: pruning changes the arguments of graph node `{node.name}` to values a plan cannot hold")
        changes[node.name] = NodeArgs(args, kwargs)
    return changes


def _bits(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).view(torch.uint8) if t.dtype != torch.bool and t.numel() else t.detach().reshape(-1)


def _tensor_difference(want: nn.Module, got: nn.Module, *, values: bool = True) -> str | None:
    """Where two models' tensors differ (names, shapes, dtypes, Parameter-ness, requires_grad,
    and with `values` their values bit for bit), or None."""
    a, b = named_tensors(want), named_tensors(got)
    if a.keys() != b.keys():
        names = sorted(a.keys() ^ b.keys())
        return f"tensor `{names[0]}` is in one and not the other"
    for fqn, t in a.items():
        u = b[fqn]
        if t.shape != u.shape or t.dtype != u.dtype:
            return f"`{fqn}` is {t.dtype} {list(t.shape)} in one, {u.dtype} {list(u.shape)} in the other"
        if t.requires_grad != u.requires_grad or isinstance(t, nn.Parameter) != isinstance(u, nn.Parameter):
            return f"`{fqn}` is a parameter / requires grad in one and not the other"
        if values and t.device.type != "meta" and u.device.type != "meta" and not torch.equal(_bits(t).cpu(), _bits(u).cpu()):
            return f"the values of `{fqn}` differ"
    return None


def _value_difference(model: nn.Module, pruned: nn.Module, plan: Plan) -> str | None:
    """The first tensor of `pruned` whose values the plan's ops, run on `model`'s tensors, do
    not give bit for bit, among those whose values the plan computes (a fold, compensation, a
    rescale; not those it only slices, which apply slices with the very indices the plan
    records); one tensor at a time (no second copy of the model is made)."""
    tensors = named_tensors(model)
    for fqn, want in named_tensors(pruned).items():
        ops = plan.tensors.get(fqn, ())
        if want.device.type == "meta" or all(isinstance(op, Take) for op in ops):
            continue
        got = run_checked(fqn, tensors.get(fqn), ops, tensors, "make_plan")
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(_bits(got).cpu(), _bits(want).cpu()):
            return f"the values of `{fqn}` differ"
    return None


def _check_replay(model: nn.Module, pruned: nn.Module, plan: Plan) -> None:
    """PruneError (a bug) unless the plan, replayed on the model, gives `pruned` back: its
    structure (every tensor's name, shape, dtype; attributes, classes, config, graph) replayed
    on the meta device, and the values it computes, tensor by tensor."""
    replayed = replay(model, plan, "make_plan", values="none")
    problem = _tensor_difference(pruned, replayed, values=False)
    if problem is None and (_attribute_changes(pruned, replayed) or _class_changes(pruned, replayed)):
        problem = "module attributes differ"
    if problem is None and _config_changes(pruned, replayed):
        problem = "the config differs"
    if problem is None and isinstance(pruned, fx.GraphModule) and isinstance(replayed, fx.GraphModule) and pruned.code != replayed.code:
        problem = "the graph code differs"
    if problem is None:
        problem = _value_difference(model, pruned, plan)
    if problem is not None:
        raise PruneError(
            f"make_plan: the plan, replayed, does not give the pruned copy ({problem}); this is a bug in fprune, please "
            "report it (apply_prune itself is not affected)"
        )
