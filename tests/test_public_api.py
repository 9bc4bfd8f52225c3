"""The public surface: every name in __all__ exists, is re-exported explicitly, and is documented."""

from __future__ import annotations

import inspect

import fprune

EXPECTED = {
    "ACTIVATION_FUNCTIONS", "ACTIVATION_METHODS", "ACTIVATION_MODULES", "OUTPUT", "Attr", "Call",
    "Match", "MatchedOp", "ModuleOp", "Op", "Output", "Pattern", "PatternElement", "PruneError",
    "PruneFunction", "apply_prune", "default_patterns", "fpgm_mask", "fpgm_scores",
    "lstm_saliency_mask", "lstm_unit_scores", "masked_parameters", "match_patterns", "prune_chain",
    "prune_conv2d", "prune_conv2d_activation_conv2d", "prune_conv2d_activation_pool_conv2d",
    "prune_conv2d_conv2d", "prune_conv2d_pool_activation_conv2d", "prune_conv2d_pool_flatten_linear",
    "prune_linear", "prune_linear_activation_linear", "prune_linear_linear",
    "prune_lstm_output_layernorm_linear", "prune_lstm_output_linear", "rebuild_module", "row_norms",
    "saliency_mask", "select_kept", "Axis", "Blocker", "ChannelGroup", "ChannelSlice", "Criterion",
    "FlowContext", "FlowRule", "RuleKey", "channel_groups", "default_flow_rules", "explain",
    "group_masks", "group_scores", "l1_norm", "l2_norm", "prune_channels", "HeadPrunedMultiheadAttention",
    "prune_optimizer_state", "ZeroOrMore", "PASS_THROUGH_LINEAR", "PASS_THROUGH_1D", "PASS_THROUGH_2D",
    "PASS_THROUGH_3D", "PASS_THROUGH_FLAT",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    assert set(fprune.__all__) == EXPECTED
    for name in fprune.__all__:
        assert hasattr(fprune, name), name


def test_public_functions_and_classes_have_docstrings() -> None:
    for name in fprune.__all__:
        value = getattr(fprune, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), name


def test_prune_error_is_a_value_error() -> None:
    assert issubclass(fprune.PruneError, ValueError)


def test_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("fprune").joinpath("py.typed").is_file()
