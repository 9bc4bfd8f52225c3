"""The pipeline fuzzer: random traceable models through both fprune pipelines.

For every generated model (tests/pipeline/fuzz_models.py) and masks (tests/pipeline/fuzz_pipelines.py), either
``apply_prune`` returns a copy that computes exactly what the masked original computes, or
it raises ``PruneError``; either way the input model is bit-for-bit unchanged. Any other
exception, a mismatch or a changed input fails the test, and hypothesis shrinks the model.

A normal run tries ``sum(NORMAL_EXAMPLES.values())`` models (at least 300), derandomized so
that CI is reproducible. ``--fuzz-long`` or ``FPRUNE_FUZZ_LONG=1`` runs ``LONG_EXAMPLES``
models per pipeline with random seeds. Each case is built from one drawn seed (a failure
prints the command that replays it); ``FPRUNE_FUZZ_SHRINK=1`` makes every choice a
hypothesis draw instead, so that a failure shrinks to a small model (hypothesis explores
small models more than the seeded builder does, so that mode finds less).
``python -m tests.pipeline.fuzz_report`` prints the figures (docs/reliability.md).

Below the fuzzer: regression tests, each a minimal repro of a bug it found (all fixed).
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

import fprune

from .fuzz_models import Chooser, DrawChooser, RandomChooser, build_case
from .fuzz_pipelines import PIPELINES, STATS, run_pipeline
from ..purity import changes, snapshot

NORMAL_EXAMPLES = {"groups/group_masks": 130, "groups/random": 140, "groups/export": 60, "patterns": 130}
LONG_EXAMPLES = 2000


def _fuzz(pipeline: str, long: bool, structural: bool) -> None:
    examples = LONG_EXAMPLES if long else NORMAL_EXAMPLES[pipeline]

    @settings(
        max_examples=examples,
        derandomize=not long,
        database=None,
        deadline=None,
        print_blob=long,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        choose: Chooser
        if structural:  # every choice a hypothesis draw: failures shrink to small models
            choose = DrawChooser(data.draw)
        else:  # one drawn seed: cases as varied as the report's, replayable from the seed
            seed = data.draw(st.integers(0, 2**63 - 1), label="case seed")
            choose = RandomChooser(random.Random(seed))
            note(f"replay: python -m tests.pipeline.fuzz_report --replay {seed} --pipeline {pipeline}")
        case = build_case(choose)
        note(repr(case))
        outcome = run_pipeline(pipeline, case, choose)
        STATS.add(outcome)
        assert outcome.status in ("exact", "refused"), f"{outcome.status} ({outcome.reason}): {outcome.detail}"

    before = STATS.tried[pipeline]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only contend (6x slower on 2 busy cores)
    try:
        check()
    finally:
        torch.set_num_threads(threads)
    tried = STATS.tried[pipeline] - before
    assert tried >= examples, f"hypothesis stopped after {tried} of {examples} models"


@pytest.mark.parametrize("pipeline", [p if p == "patterns" else pytest.param(p, marks=pytest.mark.slow) for p in PIPELINES])
def test_generated_models_prune_exactly_or_refuse_and_stay_unchanged(pipeline: str, fuzz_long: bool) -> None:
    _fuzz(pipeline, fuzz_long, structural=os.environ.get("FPRUNE_FUZZ_SHRINK", "") not in ("", "0"))


def test_a_normal_run_tries_at_least_300_models() -> None:
    assert set(NORMAL_EXAMPLES) == set(PIPELINES)
    assert sum(NORMAL_EXAMPLES.values()) >= 300


def test_the_input_check_notices_every_kind_of_change() -> None:
    """The fuzzer's own check (fuzz_pipelines.changes) sees each way a model can change."""
    edits: dict[str, Callable[[nn.Sequential], object]] = {
        "changed value": lambda m: m.get_parameter("0.weight").data.add_(1),
        "was replaced": lambda m: setattr(m[0], "weight", nn.Parameter(m.get_parameter("0.weight").detach().clone())),
        "requires_grad": lambda m: m.get_parameter("0.weight").requires_grad_(False),
        "training flag": lambda m: m[1].eval(),
        "hooks": lambda m: m[0].register_forward_hook(lambda *args: None),
        "parametrizations": lambda m: torch.nn.utils.parametrize.register_parametrization(m[0], "weight", nn.Identity()),
        "attributes": lambda m: setattr(m[0], "in_features", 5),
        "state_dict keys": lambda m: m[0].register_buffer("extra", torch.zeros(1)),
        "global module hooks": lambda m: torch.nn.modules.module.register_module_forward_hook(lambda *args: None),
    }
    for expected, edit in edits.items():
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
        before = snapshot(model)
        assert changes(model, before) == []
        handle = edit(model)
        found = changes(model, before)
        if isinstance(handle, torch.utils.hooks.RemovableHandle):
            handle.remove()
        assert any(expected in change for change in found), (expected, found)


# --- regressions: bugs the fuzzer found in the flow rules (fixed in _flow_rules.py) ---------------


def _exact_groups(model: nn.Module, x: Tensor, level: float = 0.5) -> dict[str, Tensor]:
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))
    return masks


class _Shifted(nn.Module):
    """``fc1(x) + shift`` into fc2; `shift` is a parameter of one value, a per-channel
    parameter, or a per-channel buffer."""

    def __init__(self, shift: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.kind = shift
        self.shift = nn.Parameter(torch.rand(1 if shift == "shared" else 6) + 0.5)
        self.offset: Tensor
        self.register_buffer("offset", torch.rand(6) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        out: Tensor = self.fc2(h + self.offset if self.kind == "buffer" else h + self.shift)
        return out


@pytest.mark.parametrize("shift", ["shared", "buffer"])
def test_a_tensor_added_to_removed_channels_blocks_their_group(shift: str) -> None:
    """Was: `h + p` with p of shape (1,) (or a per-channel buffer, which masked_parameters
    cannot zero) let the group through, and the pruned copy lost p in the removed channels."""
    torch.manual_seed(0)
    model = _Shifted(shift).eval()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(torch.randn(2, 4),))
    group = next(g for g in groups if "fc1.weight" in g.producers)
    assert not group.prunable
    assert "to the channels: removed channels would pass it on" in group.blockers[0].reason
    assert not fprune.group_masks(model, groups, 0.5).keys() & {"fc1.weight"}


def test_a_per_channel_parameter_added_to_the_channels_goes_with_them() -> None:
    torch.manual_seed(0)
    masks = _exact_groups(_Shifted("per-channel").eval(), torch.randn(2, 4))
    assert "fc1.weight" in masks


class _SplitMean(nn.Module):
    """chunk and mean over positive dims of a Linear's output on the model input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.fc(x).chunk(2, dim=2)
        out: Tensor = self.head(torch.cat([u * torch.relu(v), u], dim=2).mean(1))
        return out


def test_split_and_mean_over_positive_dims_use_the_example_input_shapes() -> None:
    """Was: 'split along a positive dim of a tensor of unknown rank; pass example_inputs' even
    with example inputs given (and likewise for mean)."""
    torch.manual_seed(0)
    masks = _exact_groups(_SplitMean().eval(), torch.randn(2, 5, 4))
    assert "fc.weight" in masks and int(masks["fc.weight"].sum()) == 2  # 3 tied pairs: floor(0.5 * 3) = 1 pair kept


# --- more bugs the fuzzer found (fixed in _prune_functions.py, _group_prune.py and _mha.py) --------


@pytest.mark.parametrize(("affine", "prune_bias"), [(True, False), (False, True)])
def test_train_mode_batchnorm_in_a_chain_folds_with_batch_statistics(affine: bool, prune_bias: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=affine), nn.Linear(4, 2)).double().train()
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    masks = {"0.weight": torch.tensor([True, False, True, True])}
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    with torch.no_grad():
        expected = functional_call(copy.deepcopy(model), fprune.masked_parameters(model, masks, matches, prune_bias=prune_bias), (x,))
        torch.testing.assert_close(pruned(x), expected)


class _ConcatResidual(nn.Module):
    """``cat([a(x), b(x)]) + c(x)``: one group of 5 channels; `a` holds 3 of them, `b` 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 2), nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))
        return out


def test_group_masks_cover_a_group_no_single_producer_holds() -> None:
    torch.manual_seed(0)
    model, x = _ConcatResidual().eval(), torch.randn(2, 4)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    group = next(g for g in groups if "c.weight" in g.producers)
    assert group.producers == ("a.weight", "b.weight", "c.weight") and group.prunable and group.size == 5
    _exact_groups(model, x)


class _ConcatBatchNorm(nn.Module):
    """``cat([a(x), bn(b(x))]) + c(x)``: `b` holds one channel of the group of 3."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(2, 3)
        self.bn = nn.BatchNorm1d(1)
        self.head = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(torch.cat([self.a(x), self.bn(self.b(x))], 1) + self.c(x))
        return out


def test_a_mask_removing_every_channel_of_a_concat_branch_is_refused() -> None:
    torch.manual_seed(0)
    model, x = _ConcatBatchNorm().eval(), torch.randn(3, 2)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = {"c.weight": torch.tensor([True, True, False])}
    with pytest.raises(fprune.PruneError, match="removes every channel that `b.weight` produces"):
        fprune.apply_prune(model, masks, groups)
    # group_masks never makes such a mask: at 0.9 the branch keeps its one channel
    masks = fprune.group_masks(model, groups, 0.9)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))


class _Halves(nn.Module):
    """``torch.split(fc(x), self.piece, dim=self.dim)`` with ``piece == dim == 2``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(3, 4), nn.Linear(2, 1)
        self.piece, self.dim = 2, 2

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.fc(x), self.piece, dim=self.dim)
        out: Tensor = self.head(a * b)
        return out


def test_updating_a_split_size_leaves_an_equal_dim_attribute_alone() -> None:
    torch.manual_seed(0)
    model, x = _Halves().eval(), torch.randn(1, 2, 3)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = {"fc.weight": torch.tensor([True, False, True, False])}  # the halves lose the same position
    pruned = fprune.apply_prune(model, masks, groups)
    assert isinstance(pruned, _Halves) and (pruned.piece, pruned.dim) == (1, 2)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))


class _HeadAttention(nn.Module):
    """Hand-written attention with its head count in ``self.num_heads``."""

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[1]
        q, k, v = (f(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        out: Tensor = self.o(context)
        return out


class _TwoAttentions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.attn = _HeadAttention()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.attn(self.mha(x, x, x, need_weights=False)[0])
        return out


def test_multihead_attention_and_hand_written_heads_in_one_model() -> None:
    torch.manual_seed(0)
    model, x = _TwoAttentions().eval(), torch.randn(2, 3, 8)
    masks = _exact_groups(model, x)
    assert {"attn.q.weight", "mha.in_proj_weight"} <= masks.keys()


class _MHAClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.mha(x, x, x, need_weights=False)[0])
        return out


def test_a_pruned_multihead_attention_traces_again() -> None:
    torch.manual_seed(0)
    model, x = _MHAClassifier().eval(), torch.randn(2, 3, 8)
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,))
    assert isinstance(pruned.mha, fprune.groups.HeadPrunedMultiheadAttention) and pruned.mha.num_heads == 1
    traced = torch.fx.symbolic_trace(pruned)  # the attention is one call in the graph, as the original's
    with torch.no_grad():
        torch.testing.assert_close(traced(x), pruned(x))
    groups = fprune.channel_groups(traced, example_inputs=(x,))  # analysable again: its heads stay as they are
    assert not any("mha.in_proj_weight" in g.producers for g in groups)
