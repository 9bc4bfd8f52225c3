"""Bad input, dtypes and determinism, for both pipelines (pattern matches and channel groups).

Every refusal is a ``fprune.PruneError`` whose message names the tensor FQN or graph node and
says what to do. Items already covered elsewhere are listed in the audit below.

Audit (issue 6; "new" = in this file):
- masks of wrong length / dtype / device, all False, not a tensor:
  test_apply.py::test_bad_masks_raise_prune_error_naming_the_fqn (patterns);
  new test_bad_group_masks_raise_naming_the_fqn (groups)
- NaN-derived scores: test_masks.py::test_saliency_mask_nan_weight_raises,
  ::test_select_kept_nan_scores_raise, ::test_fpgm_mask_inf_weight_raises; new
  test_nan_weights_refuse_group_scoring, test_nan_weights_are_named
- levels NaN / negative / >= 1: test_masks.py::test_bad_level_raises,
  test_group_prune.py::test_group_masks_reject_bad_levels; new test_prune_channels_rejects_bad_levels
- unknown FQNs: test_apply.py::test_unknown_fqn_is_named_with_close_names; new
  test_unknown_fqns_in_group_masks_are_named, test_an_unknown_fqn_in_ignore_is_refused
- tied / shared parameters: test_apply.py::test_shared_parameter_is_refused; new
  test_a_tied_embedding_is_refused_by_patterns_and_pruned_whole_by_groups and the tie tests after
  it (patterns refuse to untie; channel groups prune every name of a tied tensor alike)
- not fx-traceable, dynamic control flow: test_sparsifier.py (prepare of an untraceable model);
  new test_untraceable_models_say_so, test_leaf_modules_make_the_rest_prunable,
  test_masked_parameters_says_the_model_is_untraceable
- hard-coded widths: test_apply.py::test_hard_coded_view_stops_the_chain_and_is_named; new
  test_hard_coded_widths_block_their_group, test_a_width_read_from_the_tensor_prunes_exactly
- modules used twice: test_apply.py::test_module_called_twice_is_refused,
  test_group_prune.py::test_group_mask_errors_name_the_tensor
- parametrized / already pruned: test_apply.py::test_parametrized_model_is_refused; new
  test_parametrized_models_are_refused_by_both_pipelines, test_a_pruned_copy_prunes_again,
  test_parametrized_models_are_named_by_group_masks_and_prune_channels,
  test_torch_utils_pruned_models_are_refused_clearly
- half, bfloat16, float64: new test_dtypes_* below; state: tests/pipeline/test_state.py
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

import fprune

from ..models import ConvBNNet, TiedEmbeddingLM, TiedLinear
from ..purity import assert_unchanged, snapshot
from ..refusals import refusal
from ..zoo import ZOO

Records = Sequence[fprune.Match] | Sequence[fprune.ChannelGroup]




def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))


def _groups(model: nn.Module, *inputs: Tensor) -> tuple[fprune.ChannelGroup, ...]:
    return fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=inputs or None)


def _matches(model: nn.Module) -> tuple[fprune.Match, ...]:
    return fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())


# --- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (torch.ones(6), ("mask for `0.weight` has dtype torch.float32", "expected torch.bool")),
        (torch.ones(6, dtype=torch.int64), ("mask for `0.weight` has dtype torch.int64", "expected torch.bool")),
        (torch.ones(5, dtype=torch.bool), ("mask for `0.weight` has shape (5,), expected (6,)", "one entry per row")),
        (torch.ones(6, 1, dtype=torch.bool), ("mask for `0.weight` has shape (6, 1), expected (6,)",)),
        (torch.zeros(6, dtype=torch.bool), ("mask for `0.weight` is all False", "keep at least one")),
        (torch.ones(6, dtype=torch.bool, device="meta"), ("mask for `0.weight` is on", "meta")),
        ([True] * 6, ("mask for `0.weight` is a list", "expected a torch.bool tensor")),
    ],
    ids=["float", "int", "length", "2-D", "all-False", "other-device", "list"],
)
def test_bad_group_masks_raise_naming_the_fqn(mask: object, words: tuple[str, ...]) -> None:
    model = _mlp()
    groups = _groups(model)
    before = snapshot(model)
    refusal(lambda: fprune.apply_prune(model, {"0.weight": mask}, groups), *words)  # type: ignore[dict-item, arg-type]
    refusal(lambda: fprune.masked_parameters(model, {"0.weight": mask}, groups), *words)  # type: ignore[dict-item, arg-type]
    assert_unchanged(model, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second real device")
@pytest.mark.parametrize("pipeline", ["patterns", "groups"])
def test_a_mask_on_another_real_device_is_refused(pipeline: str) -> None:
    model = _mlp()
    records: Records = _matches(model) if pipeline == "patterns" else _groups(model)
    mask = torch.ones(6, dtype=torch.bool, device="cuda")
    refusal(lambda: fprune.apply_prune(model, {"0.weight": mask}, records), "mask for `0.weight` is on cuda", "move the mask")


def test_a_group_mask_keyed_by_a_consumer_or_a_bias_says_what_to_key_it_by() -> None:
    model = _mlp()
    only_first = [g for g in _groups(model) if g.producers == ("0.weight",)]  # 2.weight only consumes it
    refusal(
        lambda: fprune.apply_prune(model, {"2.weight": torch.ones(5, dtype=torch.bool)}, only_first),
        "mask for `2.weight`: it is not a producer of a group",
        "key the mask by a producer weight of its group (0.weight)",
    )
    refusal(lambda: fprune.apply_prune(model, {"0.bias": _HALF_OF_6}, _groups(model)), "mask for `0.bias`", "masks go on a producer's 2+-dim weight")


def _nan_model() -> nn.Sequential:
    model = _mlp()
    with torch.no_grad():
        model.get_parameter("2.weight")[1, 3] = math.nan
    return model


def test_nan_weights_refuse_group_scoring() -> None:
    model = _nan_model()
    refusal(lambda: fprune.group_masks(model, _groups(model), 0.5), "contain NaN", "NaN or inf")
    refusal(lambda: fprune.prune_channels(model, 0.5), "contain NaN")


def test_nan_weights_are_named() -> None:
    model = _nan_model()
    refusal(lambda: fprune.group_masks(model, _groups(model), 0.5), "2.weight", "NaN")


@pytest.mark.parametrize("level", [math.nan, -0.1, 1.0, 1.5])
def test_prune_channels_rejects_bad_levels(level: float) -> None:
    refusal(lambda: fprune.prune_channels(_mlp(), level), "`level` must be in [0, 1)", repr(level))


def test_unknown_fqns_in_group_masks_are_named() -> None:
    model = _mlp()
    groups = _groups(model)
    keep = torch.ones(6, dtype=torch.bool)
    for call in (lambda: fprune.apply_prune(model, {"9.weight": keep}, groups), lambda: fprune.masked_parameters(model, {"9.weight": keep}, groups)):
        refusal(call, "mask for `9.weight`: the model has no parameter of that name", "tensors with that name: 0.weight")


@pytest.mark.parametrize("entry", ["0.wieght", "layer9"])
def test_an_unknown_fqn_in_ignore_is_refused(entry: str) -> None:
    model = _mlp()
    refusal(lambda: fprune.group_masks(model, _groups(model), 0.5, ignore={entry}), entry)
    refusal(lambda: fprune.prune_channels(model, 0.5, ignore={entry}), entry)


# --- tied / shared parameters --------------------------------------------------------------------


_IDS = torch.arange(10).reshape(2, 5)
_HALF_OF_6 = torch.tensor([True, False, True, False, True, False])


def _assert_tie_kept_and_exact(model: nn.Module, masks: dict[str, Tensor], groups: Records, x: Tensor, tied: tuple[str, str]) -> nn.Module:
    """The pruned copy still holds one tensor under both tied names, and equals the masked model."""
    pruned = fprune.apply_prune(model, masks, groups)
    assert pruned.get_parameter(tied[0]) is pruned.get_parameter(tied[1])
    assert pruned.get_parameter(tied[0]).shape != model.get_parameter(tied[0]).shape
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))
    return pruned


def test_a_tied_embedding_is_refused_by_patterns_and_pruned_whole_by_groups() -> None:
    model = TiedEmbeddingLM()
    refusal(lambda: fprune.apply_prune(model, {"out.weight": torch.ones(10, dtype=torch.bool)}, _matches(model)), "mask for `out.weight`", "shared with embed.weight", "untie them")
    # channel groups unite the two names' channels: the embedding dim and fc2's outputs are one group
    groups = _groups(model, _IDS)
    group = next(g for g in groups if "embed.weight" in g.producers)
    assert "fc2.weight" in group.producers and group.prunable
    _assert_tie_kept_and_exact(model, {"embed.weight": _HALF_OF_6}, groups, _IDS, ("embed.weight", "out.weight"))


@pytest.mark.parametrize("pipeline", ["patterns", "groups"])
def test_a_mask_that_slices_a_tied_consumer_is_refused_or_keeps_the_tie(pipeline: str) -> None:
    model = TiedLinear()
    if pipeline == "patterns":  # the chain rebuilds fc2 alone: it would untie fc2 and fc3
        refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6}, _matches(model)), "`fc2.weight`", "`fc3.weight`", "untie them first")
        return
    x = torch.randn(3, 4)
    groups = _groups(model, x)  # fc1, fc2 and fc3 outputs are one group: the tie slices rows and columns alike
    pruned = _assert_tie_kept_and_exact(model, {"fc1.weight": _HALF_OF_6}, groups, x, ("fc2.weight", "fc3.weight"))
    assert pruned.get_parameter("fc3.weight").shape == (3, 3)


def test_a_group_that_slices_a_tied_embedding_keeps_the_tie() -> None:
    model = TiedEmbeddingLM()
    _assert_tie_kept_and_exact(model, {"fc2.weight": _HALF_OF_6}, _groups(model, _IDS), _IDS, ("embed.weight", "out.weight"))


def test_groups_from_another_model_cannot_untie_weights() -> None:
    model, untied = TiedLinear(), TiedLinear()
    untied.fc3.weight = nn.Parameter(untied.fc2.weight.detach().clone())
    groups = _groups(untied, torch.randn(3, 4))  # found where fc2 and fc3 are separate
    refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6}, groups), "`fc2.weight` and `fc3.weight` are one tensor", "slice them differently")


def test_a_tie_that_only_one_name_slices_blocks_the_group() -> None:
    model = TiedEmbeddingLM()
    groups = _groups(model, _IDS)
    vocabulary = next(g for g in groups if g.producers == ("out.weight",))  # out's rows are embed's rows
    assert not vocabulary.prunable
    assert "tied weights" in vocabulary.blockers[0].reason and "`embed.weight`" in vocabulary.blockers[0].reason


@pytest.mark.parametrize("name", ["embedding", "linear"])
def test_prune_channels_never_returns_a_broken_tied_model(name: str) -> None:
    model: nn.Module = TiedEmbeddingLM() if name == "embedding" else TiedLinear()
    x = _IDS if name == "embedding" else torch.randn(3, 4)
    tied = ("embed.weight", "out.weight") if name == "embedding" else ("fc2.weight", "fc3.weight")
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,))
    groups = _groups(model, x)
    _assert_tie_kept_and_exact(model, fprune.group_masks(model, groups, 0.5), groups, x, tied)
    assert pruned.get_parameter(tied[0]) is pruned.get_parameter(tied[1])


# --- tracing ------------------------------------------------------------------------------------


class _Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) if bool(x.sum() > 0) else x


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2, self.fc3 = nn.Linear(4, 6), _Gate(), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(self.gate(self.fc1(x)))))
        return out


class _ShapeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1:
            x = x * 2
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


@pytest.mark.parametrize("model_class", [_DataDependent, _ShapeDependent])
def test_untraceable_models_say_so(model_class: type[nn.Module]) -> None:
    model = model_class()
    refusal(lambda: fprune.prune_channels(model, 0.5), "symbolic_trace failed", "control flow", "must be fx-traceable", "leaf modules")
    # a mask no given match covers: the hint says the model could not be traced
    refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6}, ()), "mask for `fc1.weight`: no match prunes it", "could not be traced")


@pytest.mark.parametrize("model_class", [_DataDependent, _ShapeDependent])
def test_masked_parameters_says_the_model_is_untraceable(model_class: type[nn.Module]) -> None:
    model = model_class()
    refusal(lambda: fprune.masked_parameters(model, {"fc1.weight": _HALF_OF_6}), "fx", "trace", "matches")


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _Gate) or super().is_leaf_module(m, module_qualified_name)


def test_leaf_modules_make_the_rest_prunable() -> None:
    """The advice works: with the control flow in a leaf module, the rest prunes exactly."""
    torch.manual_seed(0)
    model = _DataDependent()
    x = torch.randn(3, 4)
    gm = torch.fx.GraphModule(model, _LeafTracer().trace(model))
    groups = fprune.channel_groups(gm, example_inputs=(x,))
    blocked = next(g for g in groups if "fc1.weight" in g.producers)
    assert [(b.node, b.reason) for b in blocked.blockers] == [("gate", "module `gate` (_Gate) is not understood (no flow rule); register one to prune through it")]
    masks = fprune.group_masks(model, groups, 0.4)
    assert set(masks) == {"fc2.weight"}
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))
    refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6}, groups), "mask for `fc1.weight`: its channel group cannot be pruned: `gate`", "register one")
    matches = fprune.match_patterns(gm, fprune.default_patterns())
    # the hint re-traces with the default tracer, which fails here: it says so
    refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6}, matches), "mask for `fc1.weight`: no match prunes it", "could not be traced")


# --- hard-coded widths --------------------------------------------------------------------------


class _LinearView(nn.Module):
    def __init__(self, width: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 2)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.width == "literal":
            h = h.view(-1, 8)
        elif self.width == "minus-one":
            h = h.reshape(h.shape[0], -1)
        else:
            h = h.view(-1, h.shape[-1])
        out: Tensor = self.fc2(torch.relu(h))
        return out


class _ConvView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(800, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(torch.relu(self.conv(x)).view(-1, 800))
        return out


def test_hard_coded_widths_block_their_group() -> None:
    """x.view(-1, 8) / x.view(-1, 800): detected when analysed, not left to fail when run."""
    model = _LinearView("literal")
    x = torch.randn(3, 6)
    for source in (model, torch.fx.symbolic_trace(model)):
        groups = fprune.channel_groups(torch.fx.symbolic_trace(source), example_inputs=(x,))
        refusal(lambda: fprune.apply_prune(source, {"fc1.weight": torch.ones(8, dtype=torch.bool).index_fill(0, torch.tensor([1, 5]), False)}, groups),
                 "mask for `fc1.weight`: its channel group cannot be pruned: `view`", "the number 8", "write -1")
        # nothing else is prunable: prune_channels says so instead of returning an unpruned copy
        refusal(lambda: fprune.prune_channels(source, 0.5, example_inputs=(x,)),
                 "prune_channels: nothing to prune", "`view`", "the number 8", "write -1")
    refusal(lambda: fprune.apply_prune(model, {"fc1.weight": _HALF_OF_6.repeat(2)[:8]}, _groups(model)), "`view`", "pass example_inputs")
    conv = _ConvView()
    image = torch.randn(2, 3, 12, 12)
    refusal(lambda: fprune.apply_prune(conv, {"conv.weight": _HALF_OF_6.repeat(2)[:8]}, _groups(conv, image)),
             "mask for `conv.weight`: its channel group cannot be pruned: `view`", "not on the last dim", "torch.flatten(x, 1)")
    refusal(lambda: fprune.apply_prune(conv, {"conv.weight": _HALF_OF_6.repeat(2)[:8]}, _matches(conv)),
             "mask for `conv.weight`: no match prunes it: `conv` (Conv2d): no pattern continues with `view`")


@pytest.mark.parametrize("width", ["minus-one", "from-shape"])
def test_a_width_read_from_the_tensor_prunes_exactly(width: str) -> None:
    torch.manual_seed(0)
    model = _LinearView(width)
    x = torch.randn(3, 6)
    groups = _groups(model, x)
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"fc1.weight"}
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))


# --- parametrized, already pruned -----------------------------------------------------------------


def test_parametrized_models_are_refused_by_both_pipelines() -> None:
    model = _mlp()
    groups, matches = _groups(model), _matches(model)
    parametrize.register_parametrization(model[2], "weight", nn.Identity())
    for call in (
        lambda: fprune.apply_prune(model, {"0.weight": _HALF_OF_6}, groups),
        lambda: fprune.apply_prune(model, {"0.weight": _HALF_OF_6}, matches),
        lambda: fprune.masked_parameters(model, {"0.weight": _HALF_OF_6}, groups),
    ):
        refusal(call, "module `2` carries torch.nn.utils.parametrize parametrizations", "remove them first")


@pytest.mark.parametrize("entry", ["group_masks", "prune_channels"])
def test_parametrized_models_are_named_by_group_masks_and_prune_channels(entry: str) -> None:
    model = _mlp()
    groups = _groups(model)
    parametrize.register_parametrization(model[2], "weight", nn.Identity())
    call: Callable[[], object] = (lambda: fprune.group_masks(model, groups, 0.5)) if entry == "group_masks" else (lambda: fprune.prune_channels(model, 0.5))
    refusal(call, "`2`", "parametriz", "remove")


def _torch_pruned() -> nn.Sequential:
    model = _mlp()
    torch_prune.ln_structured(model[2], "weight", amount=0.4, n=2, dim=0)  # type: ignore[no-untyped-call]  # weight_orig + weight_mask + a pre-hook
    return model


_TORCH_PRUNE_CALLS: dict[str, Callable[[nn.Module], object]] = {
    "apply_prune patterns, another layer": lambda m: fprune.apply_prune(m, {"0.weight": _HALF_OF_6}, _matches(m)),
    "apply_prune patterns, that layer": lambda m: fprune.apply_prune(m, {"2.weight": torch.tensor([True, False] * 2 + [True])}, _matches(m)),
    "apply_prune groups": lambda m: fprune.apply_prune(m, {"0.weight": _HALF_OF_6}, _groups(m)),
    "masked_parameters": lambda m: fprune.masked_parameters(m, {"2.weight": torch.tensor([True, False] * 2 + [True])}),
    "group_masks": lambda m: fprune.group_masks(m, _groups(m), 0.5),
    "prune_channels": lambda m: fprune.prune_channels(m, 0.5),
}


@pytest.mark.parametrize("entry", sorted(_TORCH_PRUNE_CALLS))
def test_torch_utils_pruned_models_are_refused_clearly(entry: str) -> None:
    model = _torch_pruned()
    refusal(lambda: _TORCH_PRUNE_CALLS[entry](model), "`2", "torch.nn.utils.prune", "remove")


@pytest.mark.parametrize("pipeline", ["patterns", "groups"])
def test_a_pruned_copy_prunes_again(pipeline: str) -> None:
    torch.manual_seed(0)
    model, x = ConvBNNet().eval(), torch.randn(2, 3, 14, 14)

    def prune(m: nn.Module) -> tuple[nn.Module, dict[str, Tensor], Records]:
        if pipeline == "patterns":
            matches = _matches(m)
            masks = {f: fprune.saliency_mask(m.get_parameter(f), 0.5) for f in ("conv1.weight", "conv2.weight")}
            return fprune.apply_prune(m, masks, matches), masks, matches
        groups = _groups(m, x)
        masks = fprune.group_masks(m, groups, 0.5)
        return fprune.apply_prune(m, masks, groups), masks, groups

    once, masks, _ = prune(model)
    twice, masks2, records2 = prune(once)
    assert twice.get_submodule("conv1").get_parameter("weight").shape[0] == 2
    with torch.no_grad():
        torch.testing.assert_close(twice(x), functional_call(once, fprune.masked_parameters(once, masks2, records2), (x,)))
    # masks made for the original do not fit the pruned copy
    records = _matches(once) if pipeline == "patterns" else _groups(once, x)
    refusal(lambda: fprune.apply_prune(once, masks, records), "mask for `conv1.weight` has shape (8,), expected (4,)")


# --- dtypes ----------------------------------------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float64]
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 6e-2, torch.float64: 1e-10}  # atol = rtol; outputs are O(1)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.sigmoid(self.fc2(torch.relu(self.fc1(x)))))
        return out


def _dtype_case(name: str) -> tuple[nn.Module, Tensor]:
    if name in ZOO:
        return ZOO[name]()
    torch.manual_seed(0)
    if name == "mlp":
        return _MLP().eval(), torch.randn(4, 16)
    model = ConvBNNet().eval()
    with torch.no_grad():
        for name in ("bn1", "bn2"):
            nn.init.uniform_(model.get_buffer(f"{name}.running_mean"), -0.3, 0.3)
            nn.init.uniform_(model.get_buffer(f"{name}.running_var"), 0.5, 1.5)
            nn.init.uniform_(model.get_parameter(f"{name}.bias"), -0.3, 0.3)
    return model, torch.randn(2, 3, 14, 14)


def _assert_pruned_matches_in_dtype(
    model: nn.Module, pruned: nn.Module, x: Tensor, masks: Mapping[str, Tensor], records: Records, dtype: torch.dtype, prune_bias: bool = True
) -> None:
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    assert {b.dtype for b in pruned.buffers() if b.is_floating_point()} <= {dtype}
    masked = fprune.masked_parameters(model, masks, records, prune_bias=prune_bias)
    with torch.no_grad():
        got = pruned(x)
        same_dtype = functional_call(model, masked, (x,))
        wide = copy.deepcopy(model).double()  # the same masked weights, computed in float64
        exact = functional_call(wide, {k: v.double() for k, v in masked.items()}, (x.double() if x.is_floating_point() else x,))
    assert got.dtype == dtype and got.shape == exact.shape
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, same_dtype, rtol=tol, atol=tol)
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mlp", "convbn"])
@pytest.mark.parametrize("prune_bias", [True, False])
def test_dtypes_patterns(dtype: torch.dtype, name: str, prune_bias: bool) -> None:
    model, x = _dtype_case(name)
    model, x = model.to(dtype), x.to(dtype)
    matches = _matches(model)
    hidden = [m.weight_fqn for m in matches if m.pattern[-1] != "output"]
    assert len(hidden) == 2
    masks = {f: fprune.saliency_mask(model.get_parameter(f), 0.5) for f in hidden}  # masks from half weights
    pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    _assert_pruned_matches_in_dtype(model, pruned, x, masks, matches, dtype, prune_bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["mlp", "convbn", "resnet18", "vit", "llama", "lstm_lm"])
def test_dtypes_groups(dtype: torch.dtype, name: str) -> None:
    model, x = _dtype_case(name)
    model = model.to(dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    groups = _groups(model, x)
    masks = fprune.group_masks(model, groups, 0.5)  # scored from the model's own dtype
    assert masks
    pruned = fprune.apply_prune(model, masks, groups)
    _assert_pruned_matches_in_dtype(model, pruned, x, masks, groups, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_masks_from_half_weights_equal_masks_from_the_same_values_in_float32(dtype: torch.dtype) -> None:
    model, x = ZOO["resnet18"]()
    low = copy.deepcopy(model).to(dtype)
    wide = copy.deepcopy(low).float()  # exactly the half values
    groups = _groups(low, x.to(dtype))
    assert groups == _groups(wide, x)
    low_masks, wide_masks = fprune.group_masks(low, groups, 0.5), fprune.group_masks(wide, groups, 0.5)
    assert low_masks.keys() == wide_masks.keys() and all(torch.equal(low_masks[k], wide_masks[k]) for k in low_masks)
    for fqn, weight in low.named_parameters():
        if weight.dim() == 4:
            assert torch.equal(fprune.saliency_mask(weight, 0.3), fprune.saliency_mask(weight.float(), 0.3)), fqn


# --- determinism ------------------------------------------------------------------------------------


def _digest(model: nn.Module) -> str:
    """A hash of the structure (module tree, parameter names, shapes, dtypes) and every byte."""
    digest = hashlib.sha256(repr(model).encode())
    for key, value in model.state_dict().items():
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Tied(nn.Module):
    """Every weight constant: all channel scores tie, and the tie-break alone decides."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(0.25)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


def _pruned_models() -> dict[str, nn.Module]:
    """The same model, masks and inputs through both pipelines (built from seeds)."""
    out: dict[str, nn.Module] = {}
    torch.manual_seed(0)
    convbn = ConvBNNet().eval()
    matches = _matches(convbn)
    masks = {f: fprune.fpgm_mask(convbn.get_parameter(f), 0.5) for f in ("conv1.weight", "conv2.weight")}
    out["patterns"] = fprune.apply_prune(convbn, masks, matches, prune_bias=False)
    for name in ("resnet18", "llama"):
        model, x = ZOO[name]()
        out[name] = fprune.prune_channels(model, 0.5, example_inputs=(x,), round_to=2)
    tied = _Tied()
    groups = _groups(tied, torch.ones(1, 5))
    tied_masks = fprune.group_masks(tied, groups, 0.5)
    assert {k: int(v.sum()) for k, v in tied_masks.items()} == {"fc1.weight": 4, "fc2.weight": 3}
    out["tied-scores"] = fprune.apply_prune(tied, tied_masks, groups)
    return out


def test_pruning_is_bit_identical_on_every_run() -> None:
    first = {k: _digest(v) for k, v in _pruned_models().items()}
    for _ in range(2):
        assert {k: _digest(v) for k, v in _pruned_models().items()} == first
    assert len(set(first.values())) == len(first)


_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.pipeline.test_robustness import _digest, _pruned_models
for name, model in sorted(_pruned_models().items()):
    print(name, _digest(model))
"""


@pytest.mark.slow
def test_pruning_is_bit_identical_across_processes() -> None:
    root = str(Path(__file__).resolve().parent.parent.parent)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}  # set / dict orders differ between the runs
        result = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=root)], capture_output=True, text=True, env=env, cwd=root, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    here = "".join(f"{name} {_digest(model)}\n" for name, model in sorted(_pruned_models().items()))
    assert outputs[0] == outputs[1] == here
