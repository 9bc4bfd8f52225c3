"""The torch.export front-end: an ExportedProgram's graph read as the torch-level graph the flow
rules follow (FQNs from the graph signature, tied tensors by the module that uses them), models
fx cannot trace pruned through it, and the sizes the copy must change checked by exporting it."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.groups._export import torch_level_graph

from ..refusals import refusal


class ChunkList(nn.Module):
    """A C2f-like block fx cannot trace (``list(...)`` of a proxy), torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(24, 8)

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.a(x).chunk(2, -1))
        parts.append(self.b(torch.relu(parts[-1])))
        out: Tensor = self.c(torch.cat(parts, -1))
        return out


class Heads(nn.Module):
    """Attention whose head count is an attribute written into a view (``self.heads``)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 4
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        out: Tensor = self.out(y.transpose(1, 2).reshape(b, t, self.heads * 4))
        return out


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.head(torch.relu(self.mid(self.embed(ids))))
        return out


ModelT = TypeVar("ModelT", bound=nn.Module)


def _exact(model: ModelT, inputs: tuple[Tensor, ...], level: float = 0.5) -> ModelT:
    model = model.double().eval()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    groups = fprune.channel_groups(torch.export.export(model, inputs, strict=False))
    assert all(g.graph == "export" for g in groups)
    masks = fprune.group_masks(model, groups, level)
    assert masks, fprune.explain(groups)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(*inputs), functional_call(model, fprune.masked_parameters(model, masks, groups), inputs))
    return pruned


def test_the_graph_reads_the_models_own_names_and_shapes() -> None:
    model, x = ChunkList(), torch.randn(2, 8)
    gm = torch_level_graph(torch.export.export(model, (x,)))
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == {f"{m}.{p}" for m in "abc" for p in ("weight", "bias")}
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"][:2] == [F.linear, torch.chunk]
    assert all("tensor_meta" in n.meta for n in gm.graph.nodes if n.op == "call_function" and n.target is F.linear)
    assert dict(gm.named_parameters())["a.weight"] is model.a.weight  # shared, not copied


def test_a_model_fx_cannot_trace_prunes_exactly_through_export() -> None:
    model, x = ChunkList(), torch.randn(2, 8)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    pruned = _exact(model, (x,))
    assert pruned.a.out_features == 8 and pruned.c.in_features < 24
    again = fprune.prune_channels(model, 0.5, example_inputs=(x,))  # fx fails: prune_channels exports it
    assert again.a.out_features == 8 and model.a.out_features == 16


def test_a_head_count_attribute_follows_and_is_checked_by_exporting_the_copy() -> None:
    model = Heads()
    pruned = _exact(model, (torch.randn(2, 5, 16),))
    assert pruned.heads == 2 and model.heads == 4
    assert pruned.qkv.out_features == 24


def test_tied_weights_are_named_by_the_module_that_uses_them() -> None:
    model = Tied()
    groups = fprune.channel_groups(torch.export.export(model, (torch.tensor([[1, 2, 3]]),)))
    hidden = next(g for g in groups if "embed.weight" in g.producers)
    assert {m.fqn for m in hidden.members} >= {"embed.weight", "head.weight"}  # both names of the tie
    pruned = _exact(model, (torch.tensor([[1, 2, 3]]),))
    assert pruned.head.weight is pruned.embed.weight and pruned.embed.embedding_dim == 4


def test_prune_channels_graph_choice_is_checked() -> None:
    model, x = ChunkList(), torch.randn(2, 8)
    refusal(lambda: fprune.prune_channels(model, 0.5, example_inputs=(x,), graph="fx"), "prune_channels: torch.fx could not trace")
    refusal(lambda: fprune.prune_channels(model, 0.5, graph="export"), "prune_channels: graph='export' needs `example_inputs`")
    refusal(lambda: fprune.prune_channels(model, 0.5, graph="jit"), "prune_channels: `graph` must be")  # type: ignore[arg-type]
    refusal(
        lambda: fprune.prune_channels(model, 0.5, example_inputs=(x,), example_kwargs={"y": 1}, graph="fx"),
        "prune_channels: `example_kwargs` need graph='export'",
    )
    assert fprune.prune_channels(model, 0.5, example_inputs=(x,), graph="export").a.out_features == 8


def test_an_export_failure_says_what_to_pass() -> None:
    class Cache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> object:
            return self.fc(x), object()

    refusal(
        lambda: fprune.prune_channels(Cache(), 0.5, example_inputs=(torch.randn(2, 4),), graph="export"),
        "prune_channels: torch.export could not capture the model", "example_kwargs",
    )


def test_exported_depthwise_and_grouped_convs_prune_exactly() -> None:
    """``F.conv2d`` with groups in an exported graph, as the nn.Conv rule prunes it: a depthwise
    conv's filter goes with its channels (its ``groups``, the channel count, a literal the re-export
    checks, down to 1), a grouped conv's in-group positions are tied (its ``groups`` stays)."""

    class Convs(nn.Module):
        def __init__(self, grouped: bool) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2) if grouped else nn.Identity()
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.c(torch.relu(self.g(torch.relu(self.dw(torch.relu(self.a(x)))))))
            return out

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    for grouped, keep in [(True, [0, 2, 4, 6]), (True, [1, 5]), (False, [3])]:
        model = Convs(grouped).double().eval()
        groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
        (into,) = [g for g in groups if g.producers == ("a.weight",)]
        assert into.prunable, fprune.explain(groups)
        assert {(m.fqn, m.role) for m in into.members} >= {("dw.weight", "carrier"), ("dw.bias", "carrier")}
        assert [(lit.node, lit.index, lit.value) for lit in into.literals] == [("conv2d_1", 0, 8)]  # dw's groups
        if grouped:
            assert set(into.units) == {(j, j + 4) for j in range(4)}  # g reads position j of both groups
            (out,) = [g for g in groups if g.producers == ("g.weight",)]
            assert out.prunable and set(out.units) == {(k, k + 4) for k in range(4)}
        mask = torch.zeros(8, dtype=torch.bool)
        mask[keep] = True
        masks = {"a.weight": mask}
        pruned = fprune.apply_prune(model, masks, groups)
        assert isinstance(pruned.dw, nn.Conv2d) and pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == len(keep)
        if grouped:
            assert isinstance(pruned.g, nn.Conv2d) and pruned.g.groups == 2 and pruned.g.in_channels == len(keep)
        with torch.no_grad():
            expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
            torch.testing.assert_close(pruned(x), expected, rtol=1e-10, atol=1e-10)
