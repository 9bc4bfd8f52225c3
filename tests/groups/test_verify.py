"""The safety net: with example inputs at hand, a pruned copy that fails on its first forward,
or returns other shapes than the original, is never returned.

The broken copies here come from flow rules that are deliberately wrong (passed with
``rules=``), so the tests do not depend on any bug of fprune's own rules staying unfixed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import fprune
from fprune.groups import ExampleShapes, TensorSpec

from ..refusals import refusal
from ..zoo import ZOO




def _pass_through(ctx: fprune.groups.FlowContext) -> fprune.groups.Axis | None:
    """WRONG on purpose: claims the channels leave the op where they came in."""
    flow = ctx.input(0)
    return flow if isinstance(flow, fprune.groups.Axis) else None


def _drop(ctx: fprune.groups.FlowContext) -> fprune.groups.Axis | None:
    """WRONG on purpose: claims no channel comes out of the op."""
    return None


def _rules(**wrong: fprune.groups.FlowRule) -> dict[fprune.groups.RuleKey, fprune.groups.FlowRule]:
    rules = fprune.groups.default_flow_rules()
    for key, rule in wrong.items():
        rules[key] = rule
    return rules


class TimmStyleMixer(nn.Module):
    """timm-ViT style: ``B, N, C = x.shape`` read from the block's input, then
    ``.reshape(B * N, C)`` of the hidden channels, which hard-codes their number."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        h = torch.relu(self.fc1(x)).reshape(B * N, C)
        out: Tensor = self.fc2(h).reshape(B, N, C)
        return out


class TimmStyleAttention(nn.Module):
    """timm's Attention: ``qkv(x).reshape(B, N, 3, heads, C // heads)``, merged back with
    ``.reshape(B, N, C)``."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc(x))
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out: Tensor = self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        return out


_TOKENS = torch.randn(2, 5, 8)


def test_a_copy_that_fails_is_refused_by_prune_channels_with_the_node_and_the_group() -> None:
    model = TimmStyleMixer()
    message = refusal(
        lambda: fprune.prune_channels(model, 0.5, example_inputs=(_TOKENS,), rules=_rules(reshape=_pass_through)),
        "prune_channels: the pruned copy fails on its first forward at node `reshape` (method .reshape())",
        "RuntimeError", "the group of 8 channels produced by `fc1.weight`", "ignore={'fc1.weight'}", "rules=", "report the model",
    )  # fmt: skip
    assert "fc2.weight" not in message  # its group reaches the output, which prune_channels leaves whole


def test_a_copy_that_fails_is_refused_by_apply_prune_when_groups_carry_example_shapes() -> None:
    model = TimmStyleMixer()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(_TOKENS,), rules=_rules(reshape=_pass_through))
    assert groups[0].example_shapes == ExampleShapes((TensorSpec((2, 5, 8), torch.float32),), groups[0].example_shapes.structure)  # type: ignore[union-attr]
    masks = fprune.group_masks(model, groups, 0.5)
    refusal(
        lambda: fprune.apply_prune(model, masks, groups),
        "apply_prune: the pruned copy fails on its first forward at node `reshape`", "`fc1.weight`", "leave out the masks of that group",
    )
    unchecked = fprune.channel_groups(torch.fx.symbolic_trace(model), rules=_rules(reshape=_pass_through))
    assert unchecked == groups  # example_shapes is not compared
    with pytest.raises(RuntimeError):  # without example inputs there is nothing to run: the broken copy comes back
        fprune.apply_prune(model, masks, unchecked)(_TOKENS)


def test_the_timm_vit_reshape_is_never_returned_broken() -> None:
    """Whatever fprune's own rules make of it: pruned exactly, or refused."""
    for model in (TimmStyleMixer(), TimmStyleAttention()):
        for ignore in (None, ()):
            try:
                pruned = fprune.prune_channels(model, 0.5, example_inputs=(_TOKENS,), ignore=ignore)
            except fprune.PruneError:
                continue
            with torch.no_grad():
                assert pruned(_TOKENS).shape[:-1] == model(_TOKENS).shape[:-1]


class _Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, int]]:
        return self.fc2(x), (torch.relu(self.fc1(x)), x.shape[0])


def _drop_relu() -> dict[fprune.groups.RuleKey, fprune.groups.FlowRule]:
    rules = _rules()
    rules[torch.relu] = _drop  # fc1's channels then seem not to reach the output, which they shrink
    return rules


def test_an_output_that_changes_shape_is_refused_with_its_path() -> None:
    model, x = _Features(), torch.randn(3, 4)
    refusal(
        lambda: fprune.prune_channels(model, 0.5, example_inputs=(x,), rules=_drop_relu()),
        "prune_channels: the pruned copy runs, but its output[1][0] (node `relu`) has shape (3, 4), expected (3, 8)",
        "`fc1.weight`", "ignore={'fc1.weight'}",
    )  # fmt: skip


class _TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor, offset: float) -> tuple[Tensor, tuple[Tensor, dict[str, int]]]:
        h = torch.relu(self.bn(self.conv(x + offset)))
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return self.head(pooled), (pooled, {"batch": x.shape[0]})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ignore", [None, ()])
def test_correct_copies_pass_with_tuple_and_dict_outputs_in_every_dtype(dtype: torch.dtype, ignore: tuple[str, ...] | None) -> None:
    torch.manual_seed(0)
    model = _TupleModel().to(dtype).train()  # train mode: BatchNorm updates nothing during the check
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    state = copy.deepcopy(model.state_dict())
    if ignore is None:  # `pooled` is returned: its group is skipped, and so is the head's
        refusal(lambda: fprune.prune_channels(model, 0.5, example_inputs=(x, 0.5)), "nothing to prune", "returned by forward", "ignore=()")
        return
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x, 0.5), ignore=ignore)
    assert pruned.conv.out_channels == 4 and pruned.head.out_features == 2
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is unchanged
    if dtype in (torch.float32, torch.float64):
        out, extra = pruned(x, 0.5)
        assert out.shape == (2, 2) and extra[0].shape == (2, 4) and extra[1] == {"batch": 2}


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        hidden = torch.relu(self.fc1(x))
        return {"logits": self.fc2(hidden), "hidden": hidden}


def test_channels_returned_in_a_dict_never_shrink_unannounced() -> None:
    """Groups returned inside a dict reach the output like any other (regression: they did not,
    and prune_channels shrank them by default). Both groups here are returned, so the default
    prunes nothing and says so; without ignoring them, both shrink, exactly."""
    model, x = _DictOutput(), torch.randn(3, 4)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    assert all(g.reaches_output for g in groups)
    with pytest.raises(fprune.PruneError, match="nothing to prune"):
        fprune.prune_channels(model, 0.5, example_inputs=(x,))
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,), ignore=())
    with torch.no_grad():
        assert {k: tuple(v.shape) for k, v in pruned(x).items()} == {"logits": (3, 1), "hidden": (3, 4)}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_pass_the_check(name: str) -> None:
    model, x = ZOO[name]()
    for ignore in (None, ()):
        pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,), ignore=ignore)
        groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
        again = fprune.apply_prune(model, fprune.group_masks(model, groups, 0.5, ignore=ignore), groups)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), again(x))


def test_meta_models_are_checked_on_meta() -> None:
    model, x = ZOO["resnet18"]()
    meta = copy.deepcopy(model).to("meta")
    masks = fprune.group_masks(model, fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,)), 0.5)
    small = fprune.apply_prune(meta, masks, fprune.channel_groups(torch.fx.symbolic_trace(meta), example_inputs=(x,)))
    assert all(t.is_meta for t in small.parameters())  # a correct copy passes
    features = _Features().to("meta")
    groups = fprune.channel_groups(torch.fx.symbolic_trace(features), example_inputs=(torch.randn(3, 4),), rules=_drop_relu())
    keep = torch.tensor([True, False] * 4)
    refusal(lambda: fprune.apply_prune(features, {"fc1.weight": keep}, groups), "apply_prune: the pruned copy runs, but its output[1][0]")


def test_graph_modules_are_checked_and_named_by_their_own_graph() -> None:
    gm = torch.fx.symbolic_trace(TimmStyleMixer())
    refusal(
        lambda: fprune.prune_channels(gm, 0.5, example_inputs=(_TOKENS,), rules=_rules(reshape=_pass_through)),
        "at node `reshape` (method .reshape())", "`fc1.weight`",
    )


@torch.fx.wrap
def _normalized(x: Tensor) -> Tensor:
    return x / max(float(x.abs().max().item()), 1.0)  # reads a value: cannot run on meta tensors


class _ReadsValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(_normalized(torch.relu(self.fc1(x))).view(-1, 8))
        return out


def test_models_that_read_values_are_checked_on_real_inputs() -> None:
    model, x = _ReadsValues(), torch.randn(4, 6)
    rules = _rules(view=_pass_through)
    rules[_normalized] = lambda ctx: ctx.input(0)
    refusal(lambda: fprune.prune_channels(model, 0.5, example_inputs=(x,), rules=rules), "the pruned copy fails on its first forward at node `fc2`", "`fc1.weight`")
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,), rules=rules)
    refusal(lambda: fprune.apply_prune(model, fprune.group_masks(model, groups, 0.5), groups), "apply_prune: the pruned copy fails", "`fc2`")  # zeros


def test_hooks_do_not_fire_during_the_check_and_stay_registered() -> None:
    model, x = _TupleModel().eval(), torch.randn(2, 3, 6, 6)
    seen: list[str] = []
    model.conv.register_forward_hook(lambda m, i, o: seen.append("conv"))
    model.register_forward_pre_hook(lambda m, i: seen.append("model"))
    tables = (model.conv._forward_hooks, model._forward_pre_hooks)
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x, 0.0), ignore=())
    assert seen == [] and (model.conv._forward_hooks, model._forward_pre_hooks) == tables
    assert model.conv._forward_hooks is tables[0] and model._forward_pre_hooks is tables[1]
    pruned(x, 0.0)  # the copy keeps them
    assert seen == ["model", "conv"]
