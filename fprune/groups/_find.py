"""``channel_groups``: trace -> walk with the flow rules -> collect the groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch import fx, nn
from torch.export import ExportedProgram

from .._errors import PruneError, prefixed
from .._util.running import ExampleShapes, example_shapes
from ._collect import collect
from ._export import torch_level_graph
from ._flow import FlowRule, RuleKey
from ._records import ChannelGroup, NormMode
from ._rules._default import default_flow_rules
from ._shapes import Shapes
from ._walk import Analysis


def channel_groups(
    gm: fx.GraphModule | ExportedProgram,
    *,
    example_inputs: Sequence[object] | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
    norms: NormMode = "block",
) -> tuple[ChannelGroup, ...]:
    """Every channel group of `gm`, in the graph order of their first producer.

    Args:
        gm: a traced model (``torch.fx.symbolic_trace(model)``), or a ``torch.export``
            program of it (``torch.export.export(model, args, kwargs, strict=False)``: for
            models fx cannot trace, such as Hugging Face ``transformers`` models); left
            unchanged. An exported program carries its shapes and example inputs: the groups
            then hold them, and :func:`fprune.apply_prune` exports the pruned copy again to
            check the sizes it changed (``ChannelGroup.graph == "export"``).
        example_inputs: inputs to run `gm` once with, so that ops whose channel layout
            depends on shapes (flatten, reshape) can be followed; without them those ops block
            their channels unless the shapes follow from the layers (a conv output is 4-D).
            Not used with an exported program (its own example inputs are).
        rules: flow rules by module class, function or method name; default
            :func:`default_flow_rules`. Extend that dict to teach fprune your own modules.
        norms: what to do with norms whose statistics run over the channels (nn.LayerNorm,
            nn.GroupNorm, ``F.layer_norm`` / ``F.group_norm`` in subclasses of those, an
            nn.RMSNorm without weight): ``"block"`` (default) keeps their channels whole;
            ``"renormalize"`` prunes them as Torch-Pruning does, the pruned norm computing
            its statistics over the kept channels: NOT output-exact, and the groups say so
            (``ChannelGroup.inexact``). RMSNorms with a weight (``nn.RMSNorm``, or written
            out as ``x * rsqrt(mean(x^2) + eps) * weight``) are exact in both modes: the
            pruned copy rescales their weight and eps (``ChannelGroup.rescales``).

    Returns:
        Frozen :class:`ChannelGroup` records: prunable ones and, with their blockers, those
        that reach an op fprune does not understand (they are never pruned). With
        `example_inputs`, each record carries their shapes (``example_shapes``), and
        :func:`fprune.apply_prune` checks the pruned copy on them. An empty tuple means no
        layer fprune knows produces channels here; :func:`explain` says what to do.
    """
    if isinstance(gm, ExportedProgram):
        return exported_groups(gm, rules=rules, norms=norms, caller="channel_groups")
    groups = find_groups(gm, example_inputs=example_inputs, rules=rules, norms=norms)
    if example_inputs is None or not groups:
        return groups
    shapes = example_shapes(example_inputs)
    return tuple(replace(group, example_shapes=shapes) for group in groups)


def exported_groups(
    ep: ExportedProgram,
    *,
    rules: Mapping[RuleKey, FlowRule] | None = None,
    norms: NormMode = "block",
    caller: str = "channel_groups",
    root: nn.Module | None = None,
) -> tuple[ChannelGroup, ...]:
    """:func:`channel_groups` of an exported program: its graph in torch-level ops, the shapes
    it recorded, and its example inputs in every record."""
    gm = torch_level_graph(ep, caller)
    groups = find_groups(gm, rules=rules, caller=caller, norms=norms, root=root, exported=True)
    inputs = ep.example_inputs
    shapes = example_shapes(*inputs) if inputs is not None else None
    return with_export(groups, gm, shapes)


def with_export(groups: tuple[ChannelGroup, ...], gm: fx.GraphModule, shapes: ExampleShapes | None) -> tuple[ChannelGroup, ...]:
    """`groups` found in the exported graph `gm`, holding a copy of it (apply compares the pruned
    copy's graph with it) and the example shapes it was exported with."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return tuple(replace(group, exported=graph, example_shapes=shapes or group.example_shapes) for group in groups)


def find_groups(
    gm: fx.GraphModule,
    *,
    example_inputs: Sequence[object] | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
    caller: str = "channel_groups",
    norms: NormMode = "block",
    root: nn.Module | None = None,
    exported: bool = False,
) -> tuple[ChannelGroup, ...]:
    """:func:`channel_groups` without the example shapes in the records (for prune_channels,
    which checks the pruned copy itself, on the example inputs it holds); `caller` names the
    public function in error messages; `root`, the model `gm` was traced from, if known (some
    rules check module attributes that the graph does not keep); `exported`: `gm` is a
    torch.export graph made torch-level (:func:`torch_level_graph`)."""
    if not isinstance(gm, fx.GraphModule):
        raise PruneError(f"{caller}: expects a torch.fx.GraphModule, got {type(gm).__name__}")
    if norms not in ("block", "renormalize"):
        raise PruneError(f"{caller}: `norms` must be 'block' or 'renormalize', got {norms!r}")
    if rules is None:

        rules = default_flow_rules()
    try:
        analysis = Analysis(gm, rules, Shapes(gm, example_inputs), norms=norms, root=root, exported=exported)
        analysis.run()
        return collect(analysis)
    except PruneError as error:  # e.g. example inputs the model cannot run
        raise prefixed(caller, error) from None
