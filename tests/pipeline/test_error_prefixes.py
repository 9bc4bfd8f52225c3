"""Every PruneError message starts with the public function that raised it (issue 12): the
function the user called, also where the refusal comes from code it shares with others (a mask
check, a chain function, the group scorer, the tracer) or from another public function it calls
(``prune_channels`` -> ``group_masks``, ``prune_optimizer_state`` -> ``apply_prune``)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

import fprune
import fprune.groups
import fprune.patterns
import fprune.sparsifier
from fprune.patterns import UnfoldableConstant
from fprune.sparsifier import FakeStructuredSparsity, FPGMPruner, SaliencyPruner

from ..models import Branching, HardCodedView, LSTMNet, Untraceable


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _matches(model: nn.Module) -> tuple[fprune.Match, ...]:
    return fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns())


def _groups(model: nn.Module) -> tuple[fprune.ChannelGroup, ...]:
    return fprune.channel_groups(fx.symbolic_trace(model))


def _keep(n: int, *removed: int) -> Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


class _PaddedConvs(nn.Module):
    """A conv before a zero-padded conv: with prune_bias=False its removed channels' bias
    cannot be folded (an UnfoldableConstant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))  # type: ignore[no-any-return]


class _Heads(nn.Module):
    """A view that needs shapes: channel_groups runs the example inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x).view(x.shape[0], 4, 4)
        out: Tensor = self.out(h.reshape(x.shape[0], -1))
        return out


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.proj(x))
        out, _ = self.attn(h, h, h)
        return self.head(out)  # type: ignore[no-any-return]


# --- the calls, each refused ---------------------------------------------------------------------


def _lstm_nan() -> object:
    weight = torch.randn(8, 3)
    weight[1, 1] = math.nan
    return fprune.lstm_saliency_mask(weight, 0.5)


def _chain_all_false() -> object:
    ops = (nn.Linear(3, 4), nn.Linear(4, 2))
    return fprune.patterns.prune_linear_linear(ops, {"weight": torch.zeros(4, dtype=torch.bool)}, prune_bias=True)


def _padded_convs() -> _PaddedConvs:
    model = _PaddedConvs()
    bias = model.conv1.bias
    assert bias is not None
    with torch.no_grad():
        bias.fill_(1.0)  # removed channels emit 1: not foldable into a zero-padded conv
    return model


def _chain_unfoldable() -> object:
    model = _padded_convs()
    return fprune.patterns.prune_conv2d_conv2d([model.conv1, model.conv2], {"weight": _keep(4, 0)}, prune_bias=False)


def _lstm_chain_gates_differ() -> object:
    model = LSTMNet(layers=1)
    getitem = fprune.patterns.Call(operator.getitem, (0,))
    return fprune.patterns.prune_lstm_output_linear(
        [model.lstm, getitem, model.linear], {"weight_ih_l0": _keep(32, 0)}, prune_bias=True
    )


def _apply_unmatched() -> object:
    model = Branching()
    return fprune.apply_prune(model, {"fc1.weight": _keep(6, 0)}, _matches(model))


def _apply_chain_refusal() -> object:
    model = _padded_convs()
    return fprune.apply_prune(model, {"conv1.weight": _keep(4, 0)}, _matches(model), prune_bias=False)


def _apply_lstm_chain_refusal() -> object:
    model = LSTMNet(layers=1)
    return fprune.apply_prune(model, {"lstm.weight_ih_l0": _keep(32, 0)}, _matches(model))


def _apply_group_refusal() -> object:
    model = HardCodedView()
    return fprune.apply_prune(model, {"fc1.weight": _keep(8, 0)}, _groups(model))


def _apply_parametrized() -> object:
    model = _mlp()
    parametrize.register_parametrization(model[0], "weight", nn.Identity())
    return fprune.apply_prune(model, {}, _matches(_mlp()))


def _masked_parameters_group_refusal() -> object:
    model = HardCodedView()
    return fprune.masked_parameters(model, {"fc1.weight": _keep(8, 0)}, _groups(model))


def _channel_groups_bad_inputs() -> object:
    return fprune.channel_groups(fx.symbolic_trace(_Heads()), example_inputs=(torch.randn(2, 9),))


def _group_masks_meta() -> object:
    with torch.device("meta"):
        model = _mlp()
    return fprune.group_masks(model, _groups(model), 0.5)


def _group_scores_other_model() -> object:
    groups = _groups(_mlp())
    return fprune.group_scores(nn.Sequential(nn.Linear(4, 6)), groups[0])


def _optimizer_state_bad_mask() -> object:
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters())
    return fprune.prune_optimizer_state(optimizer, model, {"0.weight": torch.ones(6)}, _matches(model))


def _optimizer_state_unnamed() -> object:
    model = _mlp()
    state = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    return fprune.prune_optimizer_state(state, model, {"0.weight": _keep(6, 0)}, _matches(model))


def _prepared() -> SaliencyPruner:
    pruner = SaliencyPruner({"sparsity_level": 0.5})
    pruner.prepare(_mlp(), [{"tensor_fqn": "0.weight"}])
    return pruner


def _prune_all_false() -> object:
    pruner = _prepared()
    pruner.state["0.weight"]["mask"].fill_(False)
    return pruner.prune()


def _step_without_level() -> object:
    pruner = SaliencyPruner()
    pruner.prepare(_mlp(), [{"tensor_fqn": "0.weight"}])
    pruner.step()
    return None


def _prepare_bad_patterns() -> object:
    pruner = SaliencyPruner({"sparsity_level": 0.5}, patterns={(nn.Linear,): fprune.patterns.prune_linear})
    pruner.prepare(_mlp(), [{"tensor_fqn": "0.weight"}])
    return None


def _head_pruned_attention_3d_mask() -> object:
    model = _Attention().eval()
    x = torch.randn(2, 5, 8)
    groups = fprune.channel_groups(fx.symbolic_trace(model), example_inputs=(x,))
    pruned = fprune.apply_prune(model, fprune.group_masks(model, groups, 0.5), groups)
    attention = pruned.get_submodule("attn")
    assert isinstance(attention, fprune.groups.HeadPrunedMultiheadAttention)
    h = torch.randn(2, 5, attention.embed_dim)
    return attention(h, h, h, attn_mask=torch.zeros(2 * attention.num_heads, 5, 5, dtype=torch.bool))


REFUSALS: dict[str, tuple[Callable[[], object], str]] = {
    # masks
    "saliency_mask 1-D weight": (lambda: fprune.saliency_mask(torch.ones(3), 0.5), "saliency_mask"),
    "fpgm_mask level 1": (lambda: fprune.fpgm_mask(torch.randn(4, 3), 1.0), "fpgm_mask"),
    "select_kept 2-D scores": (lambda: fprune.select_kept(torch.ones(2, 2), 0.5), "select_kept"),
    "row_norms 1-D weight": (lambda: fprune.row_norms(torch.ones(3)), "row_norms"),
    "fpgm_scores 1-D weight": (lambda: fprune.fpgm_scores(torch.ones(3)), "fpgm_scores"),
    "lstm_unit_scores 5 rows": (lambda: fprune.lstm_unit_scores(torch.ones(5, 3)), "lstm_unit_scores"),
    "lstm_saliency_mask level": (lambda: fprune.lstm_saliency_mask(torch.randn(8, 3), 1.5), "lstm_saliency_mask"),
    "lstm_saliency_mask NaN": (_lstm_nan, "lstm_saliency_mask"),
    # engine A: patterns and chain functions
    "match_patterns not a GraphModule": (lambda: fprune.match_patterns(_mlp(), fprune.default_patterns()), "match_patterns"),  # type: ignore[arg-type]
    "match_patterns malformed pattern": (
        lambda: fprune.match_patterns(fx.symbolic_trace(_mlp()), {(nn.Linear,): fprune.patterns.prune_linear}),
        "match_patterns",
    ),
    "ZeroOrMore empty": (lambda: fprune.patterns.ZeroOrMore(), "ZeroOrMore"),
    "prune_linear_linear wrong ops": (
        lambda: fprune.patterns.prune_linear_linear([nn.Conv2d(1, 2, 1), nn.Linear(2, 2)], {"weight": _keep(2)}, prune_bias=True),
        "prune_linear_linear",
    ),
    "prune_linear_linear all-False mask": (_chain_all_false, "prune_linear_linear"),
    "prune_chain one op": (lambda: fprune.patterns.prune_chain([nn.Linear(2, 2)], {"weight": _keep(2)}, prune_bias=True), "prune_chain"),
    "prune_conv2d_conv2d unfoldable": (_chain_unfoldable, "prune_conv2d_conv2d"),
    "prune_lstm_output_linear gates differ": (_lstm_chain_gates_differ, "prune_lstm_output_linear"),
    # apply_prune and masked_parameters, both engines
    "apply_prune no match prunes it": (_apply_unmatched, "apply_prune"),
    "apply_prune bool mask": (lambda: fprune.apply_prune(_mlp(), {"0.weight": torch.ones(6)}, _matches(_mlp())), "apply_prune"),
    "apply_prune unfoldable chain": (_apply_chain_refusal, "apply_prune"),
    "apply_prune LSTM chain": (_apply_lstm_chain_refusal, "apply_prune"),
    "apply_prune blocked group": (_apply_group_refusal, "apply_prune"),
    "apply_prune parametrized model": (_apply_parametrized, "apply_prune"),
    "masked_parameters mask shape": (lambda: fprune.masked_parameters(_mlp(), {"0.weight": _keep(5)}), "masked_parameters"),
    "masked_parameters blocked group": (_masked_parameters_group_refusal, "masked_parameters"),
    # engine B: channel groups
    "channel_groups not a GraphModule": (lambda: fprune.channel_groups(_mlp()), "channel_groups"),  # type: ignore[arg-type]
    "channel_groups bad example inputs": (_channel_groups_bad_inputs, "channel_groups"),
    "group_masks level 1": (lambda: fprune.group_masks(_mlp(), _groups(_mlp()), 1.0), "group_masks"),
    "group_masks meta weights": (_group_masks_meta, "group_masks"),
    "group_scores groups of another model": (_group_scores_other_model, "group_scores"),
    "HeadPrunedMultiheadAttention 3-D attn_mask": (_head_pruned_attention_3d_mask, "HeadPrunedMultiheadAttention"),
    # prune_channels, also where group_masks / channel_groups / the tracer refuse for it
    "prune_channels nothing to prune": (lambda: fprune.prune_channels(_mlp(), 1e-12), "prune_channels"),
    "prune_channels level 1": (lambda: fprune.prune_channels(_mlp(), 1.0), "prune_channels"),
    "prune_channels bad example inputs": (lambda: fprune.prune_channels(_Heads(), 0.5, example_inputs=(torch.randn(2, 9),)), "prune_channels"),
    "prune_channels untraceable": (lambda: fprune.prune_channels(Untraceable(), 0.5), "prune_channels"),
    # prune_optimizer_state, also where apply_prune refuses for it
    "prune_optimizer_state bad mask": (_optimizer_state_bad_mask, "prune_optimizer_state"),
    "prune_optimizer_state unnamed state dict": (_optimizer_state_unnamed, "prune_optimizer_state"),
    # the sparsifier
    "prepare() unknown tensor": (lambda: SaliencyPruner({}).prepare(_mlp(), [{"tensor_fqn": "9.weight"}]), "prepare()"),
    "prepare() malformed patterns": (_prepare_bad_patterns, "prepare()"),
    "prepare() twice": (lambda: _prepared().prepare(_mlp(), [{"tensor_fqn": "0.weight"}]), "prepare()"),
    "step() before prepare": (lambda: SaliencyPruner({}).step(), "step()"),
    "step() without sparsity_level": (_step_without_level, "step()"),
    "prune() all-False mask": (_prune_all_false, "prune()"),
    "squash_mask() before prepare": (lambda: SaliencyPruner({}).squash_mask(), "squash_mask()"),
    "model before prepare": (lambda: SaliencyPruner({}).model, "model"),
    "SaliencyPruner defaults": (lambda: SaliencyPruner([0.5]), "SaliencyPruner"),  # type: ignore[arg-type]
    "FPGMPruner dist": (lambda: FPGMPruner(dist=-1), "FPGMPruner"),
    "FakeStructuredSparsity float mask": (lambda: FakeStructuredSparsity(torch.ones(3)), "FakeStructuredSparsity"),
    "masked_weight_and_mask unprepared": (
        lambda: fprune.sparsifier.masked_weight_and_mask(nn.Linear(2, 2), "weight"),
        "masked_weight_and_mask",
    ),
    "sparsity_level missing": (lambda: fprune.sparsifier.sparsity_level({"tensor_fqn": "fc.weight"}), "sparsity_level"),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refusal_starts_with_the_public_function_called(name: str) -> None:
    call, function = REFUSALS[name]
    with pytest.raises(fprune.PruneError) as error:
        call()
    message = str(error.value)
    assert message.startswith(f"{function}:"), message
    assert not message.startswith(f"{function}: {function}:"), message  # named once


def test_a_prefixed_unfoldable_constant_keeps_its_class_and_reason() -> None:
    """apply_prune(..., unfoldable="keep") tells an unfoldable constant apart by its class and
    reads its reason: the chain function's prefix must keep both."""
    with pytest.raises(UnfoldableConstant) as error:
        _chain_unfoldable()
    assert str(error.value).startswith("prune_conv2d_conv2d: ")
    assert error.value.reason == "zero-padded Conv2d consumer"


def test_apply_prune_names_the_chain_and_the_chain_function_after_its_own_name() -> None:
    with pytest.raises(fprune.PruneError) as error:
        _apply_lstm_chain_refusal()
    message = str(error.value)
    assert message.startswith("apply_prune: pruning `lstm.weight_ih_l0` (chain "), message
    assert "prune_lstm_output_linear: keep-mask for LSTM weight_ih_l0 differs between its 4 gates" in message
