"""The torch.export front-end agrees with the fx one on the model zoos: the groups
``channel_groups(torch.export.export(model, (x,), strict=False))`` finds are the ones
``channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))`` finds (producers, size,
prunable, units; size literals, which only an exported graph records, may differ), but for the
models listed in ``DIFFERS`` with why; and pruning through the exported groups is exact."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.groups import ChannelGroup
from fprune.groups._export import torch_level_graph

from ..exact import prune_exactly
from .. import vision_zoo, zoo, zoo_cnn_layout, zoo_convnext, zoo_grouped, zoo_llama, zoo_vit

Builder = Callable[[], tuple[nn.Module, Tensor]]

ZOOS: dict[str, dict[str, Builder]] = {
    "zoo": zoo.ZOO,
    "zoo_llama": zoo_llama.ZOO,
    "vision_zoo": vision_zoo.ZOO,
    "zoo_grouped": zoo_grouped.ZOO,
    "zoo_cnn_layout": zoo_cnn_layout.ZOO,
    "zoo_convnext": zoo_convnext.ZOO,
    "zoo_vit": zoo_vit.ZOO,
}
SKIPPED = {"zoo_cnn_layout/shufflenetv2_x1_0"}  # as shufflenetv2, at full width: seconds of export alone

_WIDTH = (
    "the heads merge back to C = x.shape[-1], a number in the exported graph: the qkv group is prunable there (blocked "
    "in the traced one), and apply refuses it (the re-exported copy keeps C; test_a_width_read_from_a_shape_is_refused_at_apply)"
)
DIFFERS: dict[str, str] = {
    "zoo/vit": "nn.MultiheadAttention exports decomposed (the packed qkv through aten.unflatten): no module rule applies, its heads block",
    "zoo/lstm_lm": "nn.LSTM exports as aten.lstm, which no rule follows: the embedding's channels block",
    "zoo_cnn_layout/shufflenetv2": "the channel shuffle's view writes its group size as a number in the exported graph (computed "
    "from x.size() in the traced one): the view blocks, and the concatenated branches after it",
    "zoo_cnn_layout/ghostnet": "the in-place residual add (`x += shortcut`) exports as aten.add_, which no rule follows: the stem blocks",
    "zoo_vit/vit": _WIDTH,
    "zoo_vit/vit_index_manual": _WIDTH,
    "zoo_vit/swin": "the residual stream's views write its width as a number in the exported graph, computed in forward in "
    "the traced one (where the walk stops): the stream's blocked groups merge into fewer; the prunable groups agree",
}
"""Models whose exported groups differ from the traced ones, and why (each blocks more)."""

FAST = {"zoo/resnet18", "zoo/densenet", "zoo/llama", "zoo_llama/llama", "zoo_llama/llama_nn_rmsnorm", "zoo_cnn_layout/c2f",
        "zoo_convnext/convnext", "zoo_vit/vit_merge_-1"}  # fmt: skip
"""Cases of the fast tier (the rest, and every model in `DIFFERS`, are slow)."""


def _case(case: str) -> object:
    marks = [pytest.mark.xfail(reason=DIFFERS[case], strict=True)] if case in DIFFERS else []
    return pytest.param(case, marks=marks if case in FAST else [*marks, pytest.mark.slow])


CASES = [_case(f"{zoo_name}/{name}") for zoo_name, models in ZOOS.items() for name in models if f"{zoo_name}/{name}" not in SKIPPED]


def build(case: str) -> tuple[nn.Module, Tensor]:
    zoo_name, _, name = case.partition("/")
    return ZOOS[zoo_name][name]()


def exported(model: nn.Module, x: Tensor) -> tuple[ChannelGroup, ...]:
    return fprune.channel_groups(torch.export.export(model, (x,), strict=False))


def signature(groups: tuple[ChannelGroup, ...]) -> list[tuple[tuple[str, ...], int, bool, tuple[tuple[int, ...], ...]]]:
    """What both front-ends must agree on, group by group (their order may differ)."""
    return sorted((g.producers, g.size, g.prunable, g.units) for g in groups)


@pytest.mark.parametrize("case", CASES)
def test_export_finds_the_groups_fx_finds(case: str) -> None:
    model, x = build(case)
    traced = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    through_export = exported(model, x)
    assert any(g.prunable for g in traced)
    assert signature(through_export) == signature(traced)


def test_every_model_that_differs_still_exports_some_prunable_groups_or_says_why() -> None:
    """The xfail list is short and true: each entry names a model of the zoos."""
    names = {f"{zoo_name}/{name}" for zoo_name, models in ZOOS.items() for name in models}
    assert set(DIFFERS) <= names and SKIPPED <= names


@pytest.mark.parametrize(
    "case", ["zoo/resnet18", "zoo/mobilenetv2", "zoo_llama/llama", pytest.param("zoo_cnn_layout/ghostnet", marks=pytest.mark.slow)]
)
def test_pruning_through_the_exported_groups_is_exact(case: str) -> None:
    model, x = build(case)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, groups = prune_exactly(model, x, find=exported)
    assert all(g.graph == "export" for g in groups)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    if case == "zoo/mobilenetv2":  # its depthwise convs lose channels, each keeping one group per channel
        depthwise = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels}
        narrower = [n for n, m in depthwise.items() if pruned.get_submodule(n).in_channels < m.in_channels]  # type: ignore[operator]
        assert depthwise and narrower
        for name in narrower:
            conv = pruned.get_submodule(name)
            assert isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels


def test_a_width_read_from_a_shape_is_refused_at_apply() -> None:
    """Where export cannot tell a width forward read from a shape from a literal, apply checks."""
    model, x = build("zoo_vit/vit")
    groups = exported(model, x)
    qkv = [g for g in groups if g.producers == ("blocks.0.attn.qkv.weight",)]
    assert qkv and qkv[0].prunable
    with pytest.raises(fprune.PruneError, match="could not be exported again"):
        fprune.apply_prune(model, fprune.group_masks(model, qkv, 0.5), groups)


# --- translations: each ATen op read as the torch call it is ------------------------------------


class Stages(nn.Module):
    """One conv -> BatchNorm -> activation -> pool stage per (activation, pool), then a conv."""

    def __init__(self, stages: list[tuple[nn.Module, nn.Module]]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(len(stages)))
        self.bns = nn.ModuleList(nn.BatchNorm2d(8) for _ in stages)
        self.acts = nn.ModuleList(act for act, _ in stages)
        self.pools = nn.ModuleList(pool for _, pool in stages)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn, act, pool in zip(self.convs, self.bns, self.acts, self.pools):
            x = pool(act(bn(conv(x))))
        out: Tensor = self.head(x)
        return out


STAGES: dict[bool, list[tuple[nn.Module, nn.Module]]] = {
    False: [
        (nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        (nn.ReLU6(), nn.AvgPool2d(3, 1, 1)),
        (nn.ReLU6(inplace=True), nn.Identity()),
        (nn.Hardtanh(-2.0, 3.0), nn.Identity()),
        (nn.Hardswish(), nn.Identity()),
        (nn.Hardswish(inplace=True), nn.Identity()),
        (nn.LeakyReLU(0.2), nn.Identity()),
        (nn.LeakyReLU(0.2, inplace=True), nn.Identity()),
        (nn.ELU(0.5), nn.Identity()),
        (nn.Mish(), nn.Identity()),
        (nn.SiLU(inplace=True), nn.Identity()),
        (nn.SELU(), nn.Identity()),
        (nn.CELU(0.5), nn.Identity()),
        (nn.Hardshrink(0.1), nn.Identity()),
        (nn.RReLU(), nn.Identity()),
        (nn.GELU(approximate="tanh"), nn.AdaptiveAvgPool2d(2)),
    ],
    True: [(nn.ReLU(inplace=True), nn.MaxPool2d(2)), (nn.ReLU6(inplace=True), nn.AvgPool2d(3, 1, 1)), (nn.Hardswish(), nn.AdaptiveAvgPool2d(2))],
}


@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_activations_and_pools_translate(train: bool) -> None:
    """Each stage's channels go through BatchNorm (eval: running statistics; train: batch ones),
    the activation (in place or not) and the pool, and prune exactly."""
    torch.manual_seed(0)
    model = Stages(copy.deepcopy(STAGES[train])).double().train(train)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    groups = exported(model, x)
    for i in range(len(STAGES[train])):
        (group,) = [g for g in groups if g.producers == (f"convs.{i}.weight",)]
        assert group.prunable, fprune.explain(groups)
        assert {m.fqn for m in group.members} >= {f"bns.{i}.weight", f"bns.{i}.running_mean", f"bns.{i}.running_var"}
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = functional_call(copy.deepcopy(model), fprune.masked_parameters(model, masks, groups), (x,))
        torch.testing.assert_close(pruned(x), expected, rtol=1e-9, atol=1e-10)


def targets(model: nn.Module, x: Tensor) -> list[object]:
    gm = torch_level_graph(torch.export.export(model, (x,), strict=False))
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def test_batch_norm_reads_its_tensors_in_their_places() -> None:
    """``aten.batch_norm(input, weight, bias, running_mean, running_var, ...)`` becomes
    ``F.batch_norm(input, running_mean, running_var, weight, bias, ...)``: the same numbers."""
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bn).eval()
    with torch.no_grad():
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            assert tensor is not None
            tensor.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 4, 4)
    gm = torch_level_graph(torch.export.export(model, (x,), strict=False))
    assert F.batch_norm in [n.target for n in gm.graph.nodes]
    torch.testing.assert_close(gm(x)[0], model(x))


def test_the_no_training_batch_norm_of_a_decomposed_program_is_read_through_its_output_0() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (4, 1)), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own use of a deprecated pytree API
        ep = torch.export.export(model, (x,), strict=False).run_decompositions({})
    assert any(n.target is torch.ops.aten._native_batch_norm_legit_no_training.default for n in ep.graph.nodes)
    gm = torch_level_graph(ep)
    assert F.batch_norm in [n.target for n in gm.graph.nodes]
    torch.testing.assert_close(gm(x)[0], model(x))


class ReadAfterWrite(nn.Module):
    """``F.hardsigmoid(h, inplace=True)`` after a view of h was taken, read after: an
    out-of-place hardsigmoid would leave what the view reads unchanged (its removed channels
    0.5 there, not 0). Export itself reads h after the write from the op's result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)
        self.c = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        v = h.view(2, 8)
        g = F.hardsigmoid(h, inplace=True)
        out: Tensor = self.b(g) + self.c(v)
        return out


def test_an_op_that_writes_a_tensor_read_later_stays_aten_and_blocks() -> None:
    model, x = ReadAfterWrite(), torch.randn(2, 4)
    (group,) = [g for g in exported(model, x) if g.producers == ("a.weight",)]
    assert not group.prunable and "hardsigmoid_" in group.blockers[0].reason
    assert F.hardsigmoid not in targets(model, x)
    assert F.hardsigmoid in targets(nn.Sequential(nn.Linear(4, 8), nn.Hardsigmoid(inplace=True), nn.Linear(8, 2)), x)


def test_a_channel_shuffle_ties_positions_as_in_the_traced_graph() -> None:
    model, x = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ChannelShuffle(2), nn.Conv2d(8, 4, 1)), torch.randn(2, 3, 4, 4)
    through_export = exported(model, x)
    assert signature(through_export) == signature(fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,)))
    assert any(g.units for g in through_export if g.prunable)


class Twice(nn.Module):
    """One Linear called twice (a fuzzer case): its calls read one weight, which export does not
    tell apart; as a module called twice in a traced graph, its channels block."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.layer = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.layer(torch.relu(self.layer(self.a(x)))))
        return out


def test_a_layer_called_twice_blocks_as_in_the_traced_graph() -> None:
    model, x = Twice(), torch.randn(3, 4)
    through_export = exported(model, x)
    assert signature(through_export) == signature(fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,)))
    assert not any("layer.weight" in p for g in through_export if g.prunable for p in g.producers)
    (group,) = [g for g in through_export if g.producers == ("a.weight",)]
    assert "read by 2 calls" in group.blockers[0].reason
