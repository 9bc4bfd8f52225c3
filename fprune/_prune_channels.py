"""``prune_channels``: channel groups, group masks, apply and the safety net in one call."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
import inspect
from dataclasses import replace
from typing import Literal, TypedDict

from torch import Tensor, fx

from ._apply import ModelT, prune_reporting_unshrunk
from ._errors import PruneError
from ._masks import Criterion, l2_norm
from .calibrate._criteria import CRITERIA
from .calibrate._statistics import Batch, Loss, Statistics, collect_statistics
from ._util.checks import check_model, trace
from ._util.tensor_ops import TensorOp
from ._util.running import example_shapes
from .groups._export import export_model, torch_level_graph
from .hf._config import is_hf_model
from .groups._find import find_groups, with_export
from .groups._flow import FlowRule, RuleKey
from .groups._noop import nothing_removed
from .groups._records import ChannelGroup, GroupCriterion, NormMode
from .groups._rules._default import default_flow_rules
from .groups._scores import GlobalRanking, masks_at_level
from .groups._verify import check_pruned


GraphChoice = Literal["auto", "fx", "export"]
"""The graph front-end of :func:`prune_channels`: torch.fx, torch.export, or fx falling back to export."""

class ChannelOptions(TypedDict, total=False):
    """The keyword arguments of :func:`prune_channels` (``fprune.plan.plan_channels`` takes them too)."""

    example_inputs: Sequence[object] | None
    example_kwargs: Mapping[str, object] | None
    graph: GraphChoice
    ignore: Collection[str] | None
    round_to: int
    criterion: Criterion | GroupCriterion | str
    global_ranking: GlobalRanking | None
    min_kept: float
    weights: Mapping[str, Tensor] | None
    calibration: Iterable[Batch] | Statistics | None
    loss: Loss | None
    compensate: bool | None
    rules: Mapping[RuleKey, FlowRule] | None
    norms: NormMode


_EXPORT_REMEDY = "; or pass `example_inputs` (and `example_kwargs`): fprune then exports the model with torch.export"


def prune_channels(
    model: ModelT,
    level: float,
    *,
    example_inputs: Sequence[object] | None = None,
    example_kwargs: Mapping[str, object] | None = None,
    graph: GraphChoice = "auto",
    ignore: Collection[str] | None = None,
    round_to: int = 1,
    criterion: Criterion | GroupCriterion | str = l2_norm,
    global_ranking: GlobalRanking | None = None,
    min_kept: float = 0.0,
    weights: Mapping[str, Tensor] | None = None,
    calibration: Iterable[Batch] | Statistics | None = None,
    loss: Loss | None = None,
    compensate: bool | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
    norms: NormMode = "block",
) -> ModelT:
    """Model to pruned copy in one call: trace, :func:`channel_groups`, :func:`group_masks`,
    :func:`fprune.apply_prune`. `model` is left unchanged; arguments as in those functions
    (``norms="renormalize"`` prunes through LayerNorm / GroupNorm as :func:`channel_groups`
    says: the copy is then NOT output-exact there).

    With `example_inputs` (and `example_kwargs`, keyword arguments of forward), the pruned
    copy runs once on meta tensors of their shapes before it is returned (it must run and
    return what `model` returns, less the pruned output channels); see "Pruning in one call"
    in the README.

    `graph` picks the front-end: ``"fx"`` (``torch.fx.symbolic_trace``), ``"export"``
    (``torch.export.export(model, example_inputs, example_kwargs, strict=False)``, for models
    fx cannot trace, such as every Hugging Face ``transformers`` model; it needs
    `example_inputs`), or ``"auto"`` (default): fx, and export where fx fails and example
    inputs are given, or at once when `example_kwargs` are given or `model` is a Hugging
    Face model (which fx cannot trace; ``use_cache=False`` is then passed unless
    `example_kwargs` say otherwise). See "Hugging Face models" in the README.

    Calibration-aware pruning (see "Calibration" in the README): with `calibration`, an
    iterable of batches (or :class:`~fprune.calibrate.Statistics` collected before), the
    model runs over them once (:func:`~fprune.calibrate.collect_statistics`, with `loss` for
    the Taylor terms) and `criterion` may name a calibration criterion: ``"flap"``,
    ``"wanda_sp"``, ``"activation"`` or ``"taylor"`` (which needs `loss`). `weights` (as in
    :func:`group_masks`) scores tensors from elsewhere: a model built on the meta device,
    scored from its checkpoint (``fprune.plan.checkpoint_weights(path)``), prunes to a meta
    model (and ``fprune.plan.plan_channels`` to its plan). `global_ranking`
    None (default) means ``"standardized"`` for ``"flap"`` (FLAP's per-layer widths) and
    False otherwise; `min_kept` as in :func:`group_masks`. `compensate` adds the removed
    channels' mean contribution to the next layers' biases (``apply_prune(compensate=)``);
    None (default) means True for ``"flap"`` and False otherwise.

    Raises:
        PruneError: `model` cannot be traced by ``torch.fx.symbolic_trace`` (nor exported,
            where `graph` allows it); `level` > 0
            removes no channel (the message says why: no layer fprune knows, every group
            blocked or skipped, or a level too small for the groups' sizes); or the pruned copy
            fails on, or returns other shapes for, the example inputs (the message names the
            node and the groups, and says what to pass to `ignore`).
    """

    return prune_channels_recording(
        model, level, example_inputs=example_inputs, example_kwargs=example_kwargs, graph=graph, ignore=ignore,
        round_to=round_to, criterion=criterion, global_ranking=global_ranking, min_kept=min_kept, weights=weights,
        calibration=calibration, loss=loss, compensate=compensate, rules=rules, norms=norms,
    )  # fmt: skip


def prune_channels_recording(
    model: ModelT,
    level: float,
    *,
    example_inputs: Sequence[object] | None = None,
    example_kwargs: Mapping[str, object] | None = None,
    graph: GraphChoice = "auto",
    ignore: Collection[str] | None = None,
    round_to: int = 1,
    criterion: Criterion | GroupCriterion | str = l2_norm,
    global_ranking: GlobalRanking | None = None,
    min_kept: float = 0.0,
    weights: Mapping[str, Tensor] | None = None,
    calibration: Iterable[Batch] | Statistics | None = None,
    loss: Loss | None = None,
    compensate: bool | None = None,
    rules: Mapping[RuleKey, FlowRule] | None = None,
    norms: NormMode = "block",
    recorded: dict[str, list[TensorOp]] | None = None,
) -> ModelT:
    """:func:`prune_channels`, with what is done to each tensor appended to `recorded`
    (``fprune.plan.plan_channels``)."""
    check_model(model, "prune_channels")
    if isinstance(criterion, str) and criterion not in CRITERIA:
        raise PruneError(f"prune_channels: `criterion` {criterion!r} is no calibration criterion; the names are {', '.join(CRITERIA)}")
    if isinstance(criterion, str) and calibration is None:
        raise PruneError(f"prune_channels: criterion={criterion!r} reads calibration statistics: pass `calibration=` batches (or Statistics)")
    if compensate and calibration is None:
        raise PruneError("prune_channels: `compensate` adds the removed channels' mean inputs, which come from `calibration=`: pass batches")
    if graph not in ("auto", "fx", "export"):
        raise PruneError(f"prune_channels: `graph` must be 'auto', 'fx' or 'export', got {graph!r}")
    if rules is None:
        rules = default_flow_rules()
    if graph == "fx" and example_kwargs:
        raise PruneError("prune_channels: `example_kwargs` need graph='export' (or 'auto'): fx runs the graph on positional inputs")
    if is_hf_model(model) and graph != "fx":  # transformers models: fx cannot trace them, export can
        if "use_cache" in inspect.signature(model.forward).parameters and "use_cache" not in (example_kwargs or {}):
            example_kwargs = {**(example_kwargs or {}), "use_cache": False}  # a cache is no output export can return
        use_export = example_inputs is not None
    else:
        use_export = graph == "export" or (graph == "auto" and bool(example_kwargs))
    gm: fx.GraphModule | None = None
    if not use_export:
        try:
            gm = trace(model, "prune_channels", remedy=_EXPORT_REMEDY if example_inputs is None else "")
        except PruneError:
            if graph == "fx" or example_inputs is None:
                raise
            use_export = True  # fx cannot trace it: torch.export can capture far more
    if use_export:
        if example_inputs is None:
            raise PruneError("prune_channels: graph='export' needs `example_inputs` (and `example_kwargs`) to export the model with")
        program = export_model(model, example_inputs, example_kwargs, "prune_channels")
        gm = torch_level_graph(program, "prune_channels")
        groups = find_groups(gm, rules=rules, caller="prune_channels", norms=norms, root=model, exported=True)
        groups = with_export(groups, gm, example_shapes(example_inputs, example_kwargs))  # apply exports the copy with them
    else:
        assert gm is not None
        groups = find_groups(gm, example_inputs=example_inputs, rules=rules, caller="prune_channels", norms=norms, root=model)
    statistics = _statistics(model, groups, calibration, loss)
    scorer = CRITERIA[criterion](_needs(statistics, criterion)) if isinstance(criterion, str) else criterion
    ranking: GlobalRanking = (
        global_ranking if global_ranking is not None else "standardized" if criterion == "flap" else False
    )
    compensation = statistics if (compensate if compensate is not None else criterion == "flap") else None
    masks = masks_at_level(
        model, groups, level, ignore=ignore, round_to=round_to, criterion=scorer, global_ranking=ranking,
        min_kept=min_kept, caller="prune_channels", weights=weights,
    )
    cut = [i for i, g in enumerate(groups) if any(p in masks and not bool(masks[p].all()) for p in g.producers)]
    if level > 0 and not cut:
        why = nothing_removed(gm, groups, level, ignore=ignore, round_to=round_to, global_ranking=bool(ranking), rules=rules)
        raise PruneError(f"prune_channels: nothing to prune, the copy would equal the model: {why}")
    pruned, _ = prune_reporting_unshrunk(model, masks, groups, caller="prune_channels", compensate=compensation, recorded=recorded)  # groups leave nothing unshrunk
    if example_inputs is not None and cut and not use_export:  # an exported model's copy was checked by apply
        check_pruned("prune_channels", model, pruned, groups, cut, example_shapes(example_inputs), example_inputs)
    return pruned




def _statistics(
    model: ModelT, groups: Sequence[ChannelGroup], calibration: Iterable[Batch] | Statistics | None, loss: Loss | None
) -> Statistics | None:
    """The statistics `calibration` gives: itself, or those of running `model` over it."""
    if calibration is None or isinstance(calibration, Statistics):
        return calibration
    try:
        return collect_statistics(model, calibration, groups=groups, loss=loss)
    except PruneError as error:
        raise PruneError(f"prune_channels: {error}".replace("prune_channels: collect_statistics: ", "prune_channels: ")) from None


def _needs(statistics: Statistics | None, criterion: str) -> Statistics:
    assert statistics is not None  # checked on entry: a named criterion comes with calibration
    if criterion == "taylor" and not statistics.first_order:
        raise PruneError("prune_channels: criterion='taylor' needs first-order terms: pass `loss=` with the calibration batches")
    return statistics
