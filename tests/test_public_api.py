"""The public surface: the pipeline at the top level, the rest in three namespaces; each name
re-exported once, documented; the names that moved still work for one release, with a
DeprecationWarning."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import fprune
import fprune.calibrate
import fprune.cli  # the command line: a subpackage `import fprune` leaves out (no rich in the library)
import fprune.groups
import fprune.hf
import fprune.patterns
import fprune.plan
import fprune.sparsifier

TOP = {
    # masks and criteria
    "saliency_mask", "fpgm_mask", "lstm_saliency_mask", "select_kept", "row_norms", "fpgm_scores",
    "lstm_unit_scores", "Criterion", "l1_norm", "l2_norm",
    # the two engines' entry points, apply, and what comes after
    "match_patterns", "default_patterns", "channel_groups", "group_masks", "group_scores", "explain",
    "apply_prune", "masked_parameters", "Unfoldable", "prune_channels", "prune_optimizer_state",
    # errors and the main records
    "PruneError", "Match", "ChannelGroup",
    # namespaces
    "patterns", "groups", "sparsifier", "hf", "calibrate",
    # calibration (issue 15)
    "Statistics", "collect_statistics",
    # the command line (issue 16), once imported
    "cli",
    # plans (issue 16)
    "plan", "Plan", "make_plan", "apply_plan", "load_pruned", "prune_checkpoint",
}  # fmt: skip
PATTERNS = {
    "ACTIVATION_FUNCTIONS", "ACTIVATION_METHODS", "ACTIVATION_MODULES", "Attr", "Call", "Match", "MatchedOp",
    "ModuleOp", "OUTPUT", "Op", "Output", "PASS_THROUGH_1D", "PASS_THROUGH_2D", "PASS_THROUGH_3D",
    "PASS_THROUGH_FLAT", "PASS_THROUGH_LINEAR", "Pattern", "PatternDict", "PatternElement", "PruneFunction",
    "UnfoldableConstant", "ZeroOrMore", "default_patterns", "match_patterns", "prune_chain", "prune_conv2d",
    "prune_conv2d_activation_conv2d", "prune_conv2d_activation_pool_conv2d", "prune_conv2d_conv2d",
    "prune_conv2d_pool_activation_conv2d", "prune_conv2d_pool_flatten_linear", "prune_linear",
    "prune_linear_activation_linear", "prune_linear_linear", "prune_lstm_output_layernorm_linear",
    "prune_lstm_output_linear", "rebuild_module",
}  # fmt: skip
GROUPS = {
    "Axis", "BiasFold", "Blocker", "ChannelGroup", "ChannelSlice", "ExampleShapes", "Flow", "FlowContext", "FlowRule",
    "GraphKind", "GroupCriterion", "HeadAxis", "HeadPrunedMultiheadAttention", "Inexact", "NormMode", "NormRescale", "RuleKey", "SizeLiteral", "TensorSpec", "channel_groups",
    "default_flow_rules", "explain", "flatten_axis", "group_masks", "group_scores", "handles_nonzero",
}  # fmt: skip
HF = {"save_pretrained"}
PLAN = {
    "Plan", "make_plan", "plan_channels", "apply_plan", "load_pruned", "prune_checkpoint", "checkpoint_weights",
    "CheckpointReport", "CheckpointWeights", "Weights", "SCHEMA", "NodeArgs", "NodeRef", "SliceValue", "EllipsisValue",
    "Value", "TensorOp", "Take", "Fold", "Compensate", "MeanTerm", "Scale", "Full", "Zeros",
}  # fmt: skip
CALIBRATE = {
    "Batch", "CRITERIA", "GroupCriterion", "Loss", "Moments", "Statistics", "activation", "collect_statistics", "flap",
    "taylor", "wanda_sp",
}  # fmt: skip
SPARSIFIER = {
    "BaseStructuredSparsifier", "FPGMPruner", "FakeStructuredSparsity", "LSTMSaliencyPruner", "SaliencyPruner",
    "masked_weight_and_mask", "sparsity_level",
}  # fmt: skip


def public(module: ModuleType) -> set[str]:
    return {name for name in vars(module) if not name.startswith("_")}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (fprune, TOP), (fprune.patterns, PATTERNS), (fprune.groups, GROUPS), (fprune.sparsifier, SPARSIFIER), (fprune.hf, HF),
        (fprune.calibrate, CALIBRATE), (fprune.plan, PLAN),
    ],
    ids=["fprune", "patterns", "groups", "sparsifier", "hf", "calibrate", "plan"],
)
def test_each_namespace_exports_exactly_its_names(module: ModuleType, expected: set[str]) -> None:
    assert public(module) == expected


@pytest.mark.parametrize(
    "module", [fprune, fprune.patterns, fprune.groups, fprune.sparsifier, fprune.hf, fprune.calibrate, fprune.plan], ids=lambda m: m.__name__
)
def test_public_functions_and_classes_have_docstrings(module: ModuleType) -> None:
    assert inspect.getdoc(module)
    for name in public(module):
        value = getattr(module, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), f"{module.__name__}.{name}"


def test_a_name_in_two_namespaces_is_the_same_object() -> None:
    for name in public(fprune) & (public(fprune.patterns) | public(fprune.groups) | public(fprune.calibrate) | public(fprune.plan)):
        namespace = next(n for n in (fprune.patterns, fprune.groups, fprune.calibrate, fprune.plan) if name in public(n))
        assert getattr(fprune, name) is getattr(namespace, name), name
    assert fprune.calibrate.GroupCriterion is fprune.groups.GroupCriterion


@pytest.mark.parametrize("name", sorted(fprune._MOVED))
def test_a_moved_name_still_works_with_a_deprecation_warning(name: str) -> None:
    namespace = fprune.patterns if fprune._MOVED[name] == "fprune.patterns" else fprune.groups
    with pytest.warns(DeprecationWarning, match=rf"fprune\.{name} moved to {fprune._MOVED[name]}\.{name}"):
        value = getattr(fprune, name)
    assert value is getattr(namespace, name)


def test_from_import_of_a_moved_name_warns_and_unknown_names_raise() -> None:
    with pytest.warns(DeprecationWarning, match="fprune.prune_linear moved to fprune.patterns.prune_linear"):
        from fprune import prune_linear  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'prune_everything'"):
        fprune.prune_everything  # type: ignore[attr-defined]  # noqa: B018


def test_every_moved_name_lives_in_its_namespace() -> None:
    for name, namespace in fprune._MOVED.items():
        assert name in public(fprune.patterns if namespace == "fprune.patterns" else fprune.groups), name
    assert not set(fprune._MOVED) & TOP


def _floor(module: str) -> int:
    """0: shared helpers; 1: the engines; 2: apply, calibration, plans and what builds on them; 3: the facade, the demo, the command line."""
    if module.startswith(("fprune.sparsifier", "fprune.cli")) or module in ("fprune", "fprune.__main__", "fprune._demo"):
        return 3
    if module in ("fprune._apply", "fprune._prune_channels", "fprune._optim") or module.startswith(("fprune.calibrate", "fprune.plan")):
        return 2
    return 1 if module.startswith(("fprune.patterns", "fprune.groups")) else 0


def _import_graph() -> dict[str, set[str]]:
    """Each fprune module -> the fprune modules it imports when it is imported (top-level
    relative imports; imports under ``if TYPE_CHECKING`` and inside functions do not run then)."""
    root = Path(fprune.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[:-1]
        name = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        graph[name] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                graph[name].add(".".join(base + ([node.module] if node.module else [])))
    return graph


def _engine(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("patterns", "groups") else None


def test_no_import_circles_no_import_upwards_and_the_engines_apart() -> None:
    graph = _import_graph()
    assert "fprune.groups._walk" in graph and "fprune.patterns._match" in graph
    for module, imported in graph.items():
        for target in imported - {module}:
            assert target in graph, f"{module} imports {target}, which is not a module of fprune"
            assert _floor(target) <= _floor(module), f"{module} imports {target} from a higher floor"
            engines = {_engine(module), _engine(target)}
            assert engines != {"patterns", "groups"}, f"{module} imports {target}: the two engines import each other"
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        assert module not in visiting, f"import circle: {' -> '.join(path + [module])}"
        visiting.add(module)
        for target in sorted(graph[module] - {module}):
            visit(target, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_prune_error_is_a_value_error() -> None:
    assert issubclass(fprune.PruneError, ValueError)


def test_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("fprune").joinpath("py.typed").is_file()
