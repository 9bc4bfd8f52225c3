"""Plans (fprune.plan, issue 16): ``apply_plan(model, make_plan(model, masks, groups))`` is
``apply_prune(model, masks, groups)`` bit for bit (every tensor's bits, dtype, shape,
requires_grad and Parameter-ness, module attributes and classes, the HF config, the graph code,
the outputs) on every zoo model, traced or not, on the paths that change values (bias folds,
bias compensation, RMSNorm rescales, Gemma's embedding scale) and on those that change
attributes, classes, configs and graphs; a plan survives its JSON form unchanged and replays on
another instance of the architecture with other weights as apply_prune prunes that instance;
a model a plan does not fit, a damaged plan and anything but a plan are refused, and the
models passed in are left as they were."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, fx, nn

import fprune
from fprune.calibrate import Statistics, collect_statistics
from fprune.groups import ChannelGroup, HeadPrunedMultiheadAttention
from fprune.patterns import Match
from fprune.plan import (
    Compensate,
    EllipsisValue,
    Fold,
    Full,
    MeanTerm,
    NodeArgs,
    NodeRef,
    Plan,
    Scale,
    SliceValue,
    Take,
    TensorOp,
    Value,
    Zeros,
    apply_plan,
    make_plan,
)

from .. import vision_zoo, zoo, zoo_cnn_layout, zoo_convnext, zoo_grouped, zoo_llama, zoo_vit
from ..purity import Snapshot, assert_unchanged, snapshot

Builder = Callable[[], tuple[nn.Module, Tensor]]
Groups = Sequence[Match] | Sequence[ChannelGroup]

# --------------------------------------------------------------------------- helpers

_TRACE_CONSTANT = re.compile(r"_tensor_constant\d+")
_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer under every name (tied names too), in order."""
    named: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return named


def _ties(model: nn.Module) -> list[list[str]]:
    names: dict[int, list[str]] = {}
    for fqn, tensor in _tensors(model).items():
        names.setdefault(id(tensor), []).append(fqn)
    return sorted(sorted(n) for n in names.values() if len(n) > 1)


def _bits(t: Tensor) -> Tensor:
    """The tensor's bytes (a NaN equals itself, -0.0 differs from 0.0)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat if t.dtype == torch.bool or not flat.numel() else flat.view(torch.uint8)


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _attributes(module: nn.Module) -> dict[str, str]:
    """A module's own attributes (not its tensors and children), plain ones by their exact
    repr, others by type alone; a trace's tensor constants left out."""
    skip_private = isinstance(module, fx.GraphModule)
    found: dict[str, str] = {}
    for key, value in vars(module).items():
        if key in ("_parameters", "_buffers", "_modules") or _TRACE_CONSTANT.fullmatch(key):
            continue
        if skip_private and key.startswith("_"):
            continue
        found[key] = repr(value) if _plain(value) else type(value).__qualname__
    return found


def _class(module: nn.Module) -> type:
    """The module's class (each GraphModule has a class of its own: GraphModule for all)."""
    return fx.GraphModule if isinstance(module, fx.GraphModule) else type(module)


def _leaves(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [leaf for value in output.values() for leaf in _leaves(value)]
    if isinstance(output, (tuple, list)):
        return [leaf for value in output for leaf in _leaves(value)]
    assert output is None, type(output)
    return []


def _outputs(model: nn.Module, args: tuple[object, ...], kwargs: Mapping[str, object]) -> list[Tensor]:
    with torch.no_grad():
        return _leaves(model(*args, **kwargs))


def assert_same_model(
    got: nn.Module,
    want: nn.Module,
    args: tuple[object, ...] = (),
    kwargs: Mapping[str, object] | None = None,
    *,
    values: bool = True,
) -> None:
    """`got` is `want`: the same class, modules (names, classes, attributes), tensors under
    the same names in the same order, tied alike, each of the same type (Parameter or not),
    dtype, shape, device, requires_grad and (with `values`) bits; the same HF config and graph
    code; and (with `values`) bitwise the same outputs on `args` / `kwargs`."""
    assert _class(got) is _class(want)
    got_modules, want_modules = dict(got.named_modules(remove_duplicate=False)), dict(want.named_modules(remove_duplicate=False))
    assert list(got_modules) == list(want_modules)
    for name, module in want_modules.items():
        other = got_modules[name]
        assert _class(other) is _class(module), name
        assert _attributes(other) == _attributes(module), name
    got_tensors, want_tensors = _tensors(got), _tensors(want)
    assert list(got_tensors) == list(want_tensors)
    assert _ties(got) == _ties(want)
    for fqn, w in want_tensors.items():
        g = got_tensors[fqn]
        assert type(g) is type(w), fqn
        assert (g.dtype, g.shape, g.device, g.requires_grad) == (w.dtype, w.shape, w.device, w.requires_grad), fqn
        if values:
            assert torch.equal(_bits(g), _bits(w)), f"the values of `{fqn}` differ"
    got_config, want_config = getattr(got, "config", None), getattr(want, "config", None)
    if callable(getattr(want_config, "to_dict", None)):
        assert getattr(got_config, "to_dict")() == getattr(want_config, "to_dict")()
    if isinstance(want, fx.GraphModule):
        assert isinstance(got, fx.GraphModule) and got.code == want.code
    if values:
        a, b = _outputs(got, args, kwargs or {}), _outputs(want, args, kwargs or {})
        assert len(a) == len(b) and len(a) > 0
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bits(x), _bits(y))


def assert_independent(pruned: nn.Module, model: nn.Module) -> None:
    """`pruned` shares no tensor memory with `model` (changing one leaves the other)."""
    pointers = {t.untyped_storage().data_ptr() for t in _tensors(model).values() if t.device.type != "meta" and t.numel()}
    shared = [fqn for fqn, t in _tensors(pruned).items() if t.device.type != "meta" and t.numel() and t.untyped_storage().data_ptr() in pointers]
    assert not shared, shared


Purity = tuple[Snapshot, dict[str, tuple[str, ...]]]


def _purity(model: nn.Module) -> Purity:
    """What make_plan / apply_plan must leave as it was: purity.snapshot, and every module's
    attribute names (a trace of the model would add `_tensor_constant` ones)."""
    return snapshot(model), {name: tuple(sorted(vars(m))) for name, m in model.named_modules(remove_duplicate=False)}


def _assert_pure(model: nn.Module, before: Purity, *, trace_constants: bool = False) -> None:
    """`model` as it was; with `trace_constants`, but for `_tensor_constant` attributes added
    (apply_prune's own check of head counts traces the model itself: see
    test_apply_leaves_a_model_that_makes_tensors_in_forward_as_it_was)."""
    assert_unchanged(model, before[0])
    after = _purity(model)[1]
    if trace_constants:
        after = {name: tuple(k for k in keys if k in before[1].get(name, ()) or not _TRACE_CONSTANT.fullmatch(k)) for name, keys in after.items()}
    assert after == before[1]


def perturb(model: nn.Module, seed: int = 1) -> nn.Module:
    """`model` with every floating point tensor multiplied, entry by entry, by a random factor
    in [0.5, 1.5) (signs kept: BatchNorm variances stay positive), in place; returned."""
    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) in seen or not tensor.is_floating_point():
                continue
            seen.add(id(tensor))
            factor = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) + 0.5
            tensor.mul_(factor.to(tensor.dtype))
    return model


def check_plan(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    groups: Groups,
    args: tuple[object, ...],
    kwargs: Mapping[str, object] | None = None,
    *,
    compensate: Statistics | None = None,
    other: nn.Module | None = None,
    trace_constants: bool = False,
) -> Plan:
    """The plan of the pruning, checked: replayed it is apply_prune's copy bit for bit, shares
    no memory with `model`, says the copy's shapes, reads back from its JSON the same (and
    replays the same from there), and on `other` (another instance, other weights) replays to
    apply_prune's copy of `other` and is the plan made from `other`. The models are unchanged
    (`trace_constants`: see :func:`_assert_pure`)."""
    before = _purity(model)
    plan = make_plan(model, masks, groups, compensate=compensate)
    _assert_pure(model, before, trace_constants=trace_constants)
    got = apply_plan(model, plan)
    _assert_pure(model, before, trace_constants=trace_constants)
    want = fprune.apply_prune(model, masks, groups, compensate=compensate)
    assert_same_model(got, want, args, kwargs)
    assert_independent(got, model)
    assert plan.new_shapes() == {fqn: tuple(t.shape) for fqn, t in _tensors(want).items()}
    assert plan.shapes == {fqn: tuple(t.shape) for fqn, t in _tensors(model).items()}
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan and again.to_json() == text and again.fingerprint == plan.fingerprint
    assert_same_model(apply_plan(model, again), want, args, kwargs)
    if other is not None:
        other_before = _purity(other)
        assert make_plan(other, masks, groups, compensate=compensate) == plan  # a plan holds no weights
        assert_same_model(apply_plan(other, again), fprune.apply_prune(other, masks, groups, compensate=compensate), args, kwargs)
        _assert_pure(other, other_before, trace_constants=trace_constants)
    return plan


def _ops(plan: Plan) -> set[type]:
    return {type(op) for ops in plan.tensors.values() for op in ops}


def _double(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    return model.double(), (x.double() if x.is_floating_point() else x)


def _traced_groups(model: nn.Module, args: tuple[object, ...], norms: Literal["block", "renormalize"] = "block") -> tuple[ChannelGroup, ...]:
    """The channel groups of `model` (a GraphModule: of its own graph, else of its fx trace)."""
    graph = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    return fprune.channel_groups(graph, example_inputs=args, norms=norms)


# --------------------------------------------------------------------------- 1. every zoo model

ZOOS: dict[str, Builder] = {
    f"{module.__name__.rpartition('.')[2]}.{name}": builder
    for module in (zoo, vision_zoo, zoo_llama, zoo_vit, zoo_grouped, zoo_convnext, zoo_cnn_layout)
    for name, builder in getattr(module, "ZOO").items()
}


def _zoo_case(name: str, traced: bool) -> tuple[nn.Module, Tensor]:
    model, x = _double(*ZOOS[name]())
    return (fx.symbolic_trace(model) if traced else model), x


@pytest.mark.parametrize("traced", [False, True], ids=["module", "graph"])
@pytest.mark.parametrize("name", sorted(ZOOS))
def test_every_zoo_model_plans_what_apply_prune_does(name: str, traced: bool) -> None:
    model, x = _zoo_case(name, traced)
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.5)
    assert masks, fprune.explain(groups)
    other = perturb(_zoo_case(name, traced)[0])
    plan = check_plan(model, masks, groups, (x,), other=other, trace_constants=name == "zoo_vit.swin")
    assert plan.architecture == ("torch.fx.GraphModule" if traced else f"{type(model).__module__}.{type(model).__qualname__}")
    assert Take in _ops(plan) and plan.attributes


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_the_reference_zoo_at_another_level_in_float32(name: str) -> None:
    """tests/zoo.py as test_group_prune prunes it: float32, level 0.3."""
    model, x = zoo.ZOO[name]()
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.3)
    check_plan(model, masks, groups, (x,), other=perturb(zoo.ZOO[name]()[0]))


def test_a_graph_that_slices_the_channels_gets_its_slices_back() -> None:
    """GhostNet's ``out[:, :oup]`` in a GraphModule: the slices in the node's arguments are
    slices again after the plan (and after its JSON)."""
    model, x = _zoo_case("zoo_cnn_layout.ghostnet", traced=True)
    groups = _traced_groups(model, (x,))
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (x,))
    sliced = [a for a in plan.graph.values() if any(isinstance(v, tuple) and any(isinstance(s, SliceValue) for s in v) for v in a.args)]
    assert sliced
    pruned = apply_plan(model, plan)
    assert isinstance(pruned, fx.GraphModule) and "slice(None, 24, None)" in pruned.code


def test_apply_leaves_a_model_that_makes_tensors_in_forward_as_it_was() -> None:
    """Swin computes tensors in forward (its attention mask): a trace stores them on the traced
    module as `_tensor_constant` attributes, so tracing the user's model changes it."""
    model, x = _zoo_case("zoo_vit.swin", traced=False)
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.5)
    before = _purity(model)
    try:
        make_plan(model, masks, groups)
        fprune.apply_prune(model, masks, groups)
    finally:
        after = _purity(model)[1][""]
    assert after == before[1][""], sorted(set(after) - set(before[1][""]))


class LiteralSplit(nn.Module):
    """YOLOv8's C2f with the split sizes written as a list of numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.cv1, self.m, self.cv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(12, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.cv1(x), [4, 4], 1)
        out: Tensor = self.cv2(torch.cat([a, b, self.m(b)], 1))
        return out


def test_a_list_in_a_graph_stays_a_list() -> None:
    torch.manual_seed(0)
    gm = fx.symbolic_trace(LiteralSplit().double().eval())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    groups = _traced_groups(gm, (x,))
    other = fx.symbolic_trace(perturb(LiteralSplit().double().eval()))
    plan = check_plan(gm, fprune.group_masks(gm, groups, 0.5), groups, (x,), other=other)
    (args,) = plan.graph.values()
    assert [2, 2] in args.args and "[2, 2]" in apply_plan(gm, plan).code


# --------------------------------------------------------------------------- 2. paths that change values


class SigmoidMlp(nn.Module):
    """fc1 -> sigmoid -> fc2: removed channels hold 0.5, which folds into fc2's bias."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.sigmoid(self.fc1(x)))
        return out


class SigmoidConv(nn.Module):
    """conv1 -> BN -> sigmoid -> unpadded conv2: the constant folds over conv2's kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(torch.sigmoid(self.bn(self.conv1(x))))
        return out


def _removed(masks: Mapping[str, Tensor], fqn: str) -> tuple[int, ...]:
    return tuple((~masks[fqn]).nonzero().squeeze(1).tolist())


def _kept(masks: Mapping[str, Tensor], fqn: str) -> tuple[int, ...]:
    return tuple(masks[fqn].nonzero().squeeze(1).tolist())


@pytest.mark.parametrize(("make", "x"), [(SigmoidMlp, torch.randn(5, 6)), (SigmoidConv, torch.randn(2, 3, 6, 6))], ids=["linear", "conv"])
def test_a_bias_fold_is_recorded_and_replayed(make: Callable[[], nn.Module], x: Tensor) -> None:
    torch.manual_seed(0)
    model = make().double().eval()
    x = x.double()
    producer, consumer = ("fc1", "fc2") if isinstance(model, SigmoidMlp) else ("conv1", "conv2")
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.5)
    plan = check_plan(model, masks, groups, (x,), other=perturb(make().double().eval()))
    removed = _removed(masks, f"{producer}.weight")
    assert plan.tensors[f"{consumer}.bias"] == (Fold(f"{consumer}.weight", 1, removed, 0.5, 0),)
    bias = apply_plan(model, plan).get_submodule(consumer).get_parameter("bias")
    assert not torch.equal(bias, model.get_submodule(consumer).get_parameter("bias"))  # the fold changed it


class CompensatedMlp(nn.Module):
    """fc1 -> act -> fc2 (no bias) -> relu -> fc3: compensation gives fc2 a bias, sliced with
    fc2's kept rows, and adds to fc3's."""

    def __init__(self, act: Callable[[Tensor], Tensor] = torch.relu) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 12, bias=False), nn.Linear(12, 4)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))
        return out


class ReflectConvs(nn.Module):
    """conv1 -> relu -> conv2 (reflect padding, no bias): a conv consumer of compensation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect", bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(torch.relu(self.conv1(x)))
        return out


def _batches(shape: tuple[int, ...], count: int = 3) -> list[Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64) + 0.5 for _ in range(count)]


def _compensated(model: nn.Module, x: Tensor, other: nn.Module) -> tuple[Plan, dict[str, Tensor]]:
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.5)
    stats = collect_statistics(model, _batches(tuple(x.shape)), groups=groups, progress=False)
    return check_plan(model, masks, groups, (x,), compensate=stats, other=other), masks


@pytest.mark.parametrize("trainable", [True, False])
def test_bias_compensation_creates_and_changes_biases(trainable: bool) -> None:
    torch.manual_seed(0)
    model = CompensatedMlp().double().requires_grad_(trainable)
    x = torch.randn(5, 8, dtype=torch.float64)
    plan, masks = _compensated(model, x, other=perturb(CompensatedMlp().double().requires_grad_(trainable)))
    zeros, compensate, take = plan.tensors["fc2.bias"]
    assert zeros == Zeros((12,), "fc2.weight") and take == Take(((0, _kept(masks, "fc2.weight")),))
    assert isinstance(compensate, Compensate) and compensate.replace
    assert [(t.weight, t.dim, t.removed, t.rows) for t in compensate.terms] == [("fc2.weight", 1, _removed(masks, "fc1.weight"), 0)]
    (added,) = plan.tensors["fc3.bias"]
    assert isinstance(added, Compensate) and not added.replace and added.terms[0].removed == _removed(masks, "fc2.weight")
    assert "fc2.bias" not in plan.shapes and plan.new_shapes()["fc2.bias"] == (6,)
    bias = apply_plan(model, plan).get_submodule("fc2").bias
    assert isinstance(bias, nn.Parameter) and bias.requires_grad is trainable and bias.dtype == torch.float64 and bool(bias.any())


def test_compensation_replaces_a_fold() -> None:
    torch.manual_seed(0)
    model = CompensatedMlp(torch.sigmoid).double()
    plan, _ = _compensated(model, torch.randn(5, 8, dtype=torch.float64), other=perturb(CompensatedMlp(torch.sigmoid).double()))
    assert Fold not in _ops(plan) and Compensate in _ops(plan)


def test_compensation_into_a_conv_consumer() -> None:
    torch.manual_seed(0)
    model = ReflectConvs().double()
    plan, _ = _compensated(model, torch.randn(2, 3, 6, 6, dtype=torch.float64), other=perturb(ReflectConvs().double()))
    assert plan.tensors["conv2.bias"][0] == Zeros((4,), "conv2.weight")


@pytest.mark.parametrize("form", zoo_llama.FORMS)
def test_rmsnorm_weights_are_rescaled_and_eps_moved(form: zoo_llama.RMSNormForm) -> None:
    model, ids = zoo_llama.llama(form, compute_dtype=torch.float64)
    model = model.double()
    groups = _traced_groups(model, (ids,))
    masks = fprune.group_masks(model, groups, 0.5)
    other = perturb(zoo_llama.llama(form, compute_dtype=torch.float64)[0].double())
    plan = check_plan(model, masks, groups, (ids,), other=other)
    (take, scale) = plan.tensors["norm.weight"]
    assert isinstance(take, Take) and scale == Scale(math.sqrt(2.0))  # 32 channels, 16 kept
    eps = {key: value for attributes in plan.attributes.values() for key, value in attributes.items() if "eps" in key}
    assert eps and all(isinstance(v, float) for v in eps.values())


def test_a_traced_rmsnorm_gets_its_eps_rewritten_in_the_graph() -> None:
    model, ids = zoo_llama.llama("plain")
    gm = fx.symbolic_trace(model.double())
    groups = _traced_groups(gm, (ids,))
    plan = check_plan(gm, fprune.group_masks(gm, groups, 0.5), groups, (ids,), other=fx.symbolic_trace(perturb(zoo_llama.llama("plain")[0].double())))
    assert NodeArgs((NodeRef("mean"), 2e-06), {}) in plan.graph.values()


class SeqFirstAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.attn, self.head = nn.Linear(8, 16), nn.MultiheadAttention(16, 4), nn.Linear(16, 3)

    def forward(self, x: Tensor, padding: Tensor) -> tuple[Tensor, Tensor | None]:
        h = torch.relu(self.proj(x))
        out, weights = self.attn(h, h, h, key_padding_mask=padding)
        return self.head(out), weights


def _attention_inputs() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(4)
    return torch.randn(6, 2, 8, generator=generator, dtype=torch.float64), torch.tensor([[False] * 5 + [True], [False] * 6])


@pytest.mark.parametrize("masked", ["all", "output only"])
def test_multihead_attention_changes_class(masked: str) -> None:
    torch.manual_seed(1)
    model = SeqFirstAttention().double().eval()
    args = _attention_inputs()
    groups = _traced_groups(model, args)
    masks = fprune.group_masks(model, groups, 0.5)
    if masked == "output only":
        masks = {"attn.out_proj.weight": torch.tensor([True, False] * 8)}
    plan = check_plan(model, masks, groups, args, other=perturb(SeqFirstAttention().double().eval()))
    assert plan.classes == {"attn": "fprune.groups.HeadPrunedMultiheadAttention"}
    attention = apply_plan(model, plan).get_submodule("attn")
    assert isinstance(attention, HeadPrunedMultiheadAttention)
    assert attention.num_heads == (2 if masked == "all" else 4) and plan.attributes["attn"]["embed_dim"] == attention.embed_dim
    assert type(model.attn) is nn.MultiheadAttention


def test_an_lstm_replays_with_its_flat_weights() -> None:
    model, ids = zoo.ZOO["lstm_lm"]()
    groups = _traced_groups(model, (ids,))
    masks = fprune.group_masks(model, groups, 0.5)
    plan = check_plan(model, masks, groups, (ids,), other=perturb(zoo.ZOO["lstm_lm"]()[0]))
    assert plan.attributes["lstm"]["hidden_size"] == 16
    lstm = apply_plan(model, plan).get_submodule("lstm")
    assert isinstance(lstm, nn.LSTM)
    assert all(w is getattr(lstm, name) for w, name in zip(lstm._flat_weights, lstm._flat_weights_names))


class ManualAttention(nn.Module):
    """Attention whose head count is written as the number 4 in its views (a GraphModule's
    graph holds it; apply rewrites it there)."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[1]
        q, k, v = (p(x).view(b, t, 4, 8).permute(0, 2, 1, 3) for p in (self.query, self.key, self.value))
        context = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1) @ v
        out: Tensor = self.out(context.permute(0, 2, 1, 3).contiguous().view(b, t, 4 * 8))
        return out


def test_head_counts_written_as_numbers_in_a_graph() -> None:
    torch.manual_seed(0)
    gm = fx.symbolic_trace(ManualAttention().double().eval())
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    groups = _traced_groups(gm, (x,))
    masks = fprune.group_masks(gm, groups, 0.5)
    plan = check_plan(gm, masks, groups, (x,), other=fx.symbolic_trace(perturb(ManualAttention().double().eval())))
    assert plan.graph["view"] == NodeArgs((NodeRef("query"), NodeRef("getitem"), NodeRef("getitem_1"), 2, 8), {})
    assert "view(getitem, getitem_1, 2, 8)" in apply_plan(gm, plan).code and "view(getitem, getitem_1, 4, 8)" in gm.code


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.gn, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 8, 3, padding=1)
        self.ln, self.conv3 = LayerNorm2d(8), nn.Conv2d(8, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv3(self.ln(self.conv2(F.relu(self.gn(self.conv1(x))))))
        return out


def _group_norm_net() -> nn.Module:
    model = GroupNormNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.double().eval()


@pytest.mark.parametrize("traced", [False, True], ids=["module", "graph"])
def test_renormalized_layer_and_group_norms(traced: bool) -> None:
    """F.layer_norm's normalized_shape: a module attribute, or a number in a GraphModule's graph."""
    torch.manual_seed(1)
    model = _group_norm_net()
    torch.manual_seed(2)
    other = perturb(_group_norm_net())
    if traced:
        model, other = fx.symbolic_trace(model), fx.symbolic_trace(other)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    groups = _traced_groups(model, (x,), norms="renormalize")
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (x,), other=other)
    if traced:
        assert plan.graph["layer_norm"].args[1] == (4,)
    else:
        assert plan.attributes["ln"]["normalized_shape"] == (4,) and plan.attributes["gn"]["num_channels"] == 8


class TiedLM(nn.Module):
    """A residual stream whose embedding is tied to the output head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc1, self.fc2 = nn.Embedding(16, 8), nn.Linear(8, 12), nn.Linear(12, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        out: Tensor = self.head(h + self.fc2(torch.relu(self.fc1(h))))
        return out


def _tied() -> tuple[nn.Module, Tensor, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]:
    torch.manual_seed(0)
    model, ids = TiedLM().double(), torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    groups = _traced_groups(model, (ids,))
    masks = fprune.group_masks(model, groups, 0.5)
    return model, ids, masks, groups, make_plan(model, masks, groups)


def test_tied_tensors_stay_tied() -> None:
    model, ids, masks, groups, plan = _tied()
    check_plan(model, masks, groups, (ids,), other=perturb(TiedLM().double()))
    assert plan.tensors["embed.weight"] == plan.tensors["head.weight"]
    pruned = apply_plan(model, plan)
    assert pruned.get_submodule("head").weight is pruned.get_submodule("embed").weight


def test_a_plan_rebuilds_the_pruned_architecture_on_the_meta_device() -> None:
    for make, x in ((SigmoidMlp, torch.randn(5, 6)), (TiedLM, torch.randint(0, 16, (2, 5)))):
        torch.manual_seed(0)
        model = make().double().eval()
        groups = _traced_groups(model, (x.double() if x.is_floating_point() else x,))
        masks = fprune.group_masks(model, groups, 0.5)
        plan = make_plan(model, masks, groups)
        meta = copy.deepcopy(model).to("meta")
        assert make_plan(meta, masks, groups) == plan
        got = apply_plan(meta, plan)
        assert all(t.is_meta for t in _tensors(got).values())
        assert_same_model(got, fprune.apply_prune(model, masks, groups).to("meta"), values=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_plan_made_in_float64_replays_on_a_model_in_another_dtype(dtype: torch.dtype) -> None:
    """Plans hold no dtype: a fold, a compensation and a rescale replay in the model's dtype
    as apply_prune computes them there."""
    torch.manual_seed(0)
    model, x = CompensatedMlp(torch.sigmoid).double(), torch.randn(5, 8, dtype=torch.float64)
    groups = _traced_groups(model, (x,))
    masks = fprune.group_masks(model, groups, 0.5)
    for stats in (None, collect_statistics(model, _batches(tuple(x.shape)), groups=groups, progress=False)):  # a fold, a compensation
        plan = make_plan(model, masks, groups, compensate=stats)
        low = copy.deepcopy(model).to(dtype)
        assert_same_model(apply_plan(low, plan), fprune.apply_prune(low, masks, groups, compensate=stats), (x.to(dtype),))
    llama, ids = zoo_llama.llama("plain", compute_dtype=torch.float64)
    groups = _traced_groups(llama.double(), (ids,))
    masks = fprune.group_masks(llama, groups, 0.5)
    plan = make_plan(llama, masks, groups)
    low_llama = copy.deepcopy(llama).to(dtype)
    assert_same_model(apply_plan(low_llama, plan), fprune.apply_prune(low_llama, masks, groups), (ids,))


def test_a_tensor_a_plan_does_nothing_to_is_a_copy() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    plan = Plan("torch.nn.modules.container.Sequential", {"0.weight": (8, 4), "0.bias": (8,)}, {"0.weight": ()})
    pruned = apply_plan(model, plan)
    assert_same_model(pruned, model, (torch.randn(2, 4),))
    assert_independent(pruned, model)


def test_the_json_form_is_one_line_per_entry_with_index_ranges() -> None:
    torch.manual_seed(0)
    model = SigmoidMlp()
    groups = _traced_groups(model, (torch.randn(2, 6),))
    keep = torch.tensor([True, True, True, True, False, False, False, True, False, True, True, True])
    plan = make_plan(model, {"fc1.weight": keep}, groups)
    lines = plan.to_json().splitlines()
    assert lines[1] == ' "schema": 1,' and any(line.startswith(' "fingerprint": "sha256:') for line in lines)
    assert '  "fc1.weight": [{"op": "take", "kept": {"0": "0-3,7,9-11"}}],' in lines
    assert '  "fc2.bias": [{"op": "fold", "weight": "fc2.weight", "dim": 1, "removed": "4-6,8", "value": 0.5, "rows": 0}]' in lines
    for fqn in (*plan.shapes, *plan.tensors, *plan.attributes):
        assert sum(line.startswith(f'  "{fqn}": ') for line in lines) == (fqn in plan.shapes) + (fqn in plan.tensors) + (fqn in plan.attributes)


# --------------------------------------------------------------------------- 3. Hugging Face

_KW: dict[str, object] = {"use_cache": False}


def _hf(build: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module, Tensor, tuple[ChannelGroup, ...]]:
    """Two float64 eval instances from `build` (the second with other weights), token ids and
    the first's exported groups."""
    pytest.importorskip("transformers")
    model, other = build().double(), perturb(build().double())
    nn.Module.eval(model)
    nn.Module.eval(other)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    program = torch.export.export(model, (ids,), kwargs=dict(_KW), strict=False)
    return model, other, ids, fprune.channel_groups(program)


def _decoder(family: str, **extra: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        sizes: dict[str, object] = dict(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, head_dim=8,
        )  # fmt: skip
        config = getattr(transformers, f"{family}Config")(**sizes, **extra)
        model = getattr(transformers, f"{family}ForCausalLM")(config)
        assert isinstance(model, nn.Module)
        if family == "Gemma":  # its norm weights start at 0 (x * (1 + 0)): make them tell the channels apart
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name.endswith("norm.weight"):
                        parameter.normal_(0.0, 0.5)
        return model

    return build


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
    return BertModel(config)


def test_hf_llama_config_follows() -> None:
    model, other, ids, groups = _hf(_decoder("Llama"))
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (ids,), _KW, other=other)
    changed = {"hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 2e-06}
    assert {k: plan.config[k] for k in changed} == changed and plan.config.get("head_dim", 8) == 8
    assert getattr(apply_plan(model, plan), "config").intermediate_size == 24 and getattr(model, "config").intermediate_size == 48


def test_hf_gemma_folds_its_embedding_scale_through_the_tied_head() -> None:
    model, other, ids, groups = _hf(_decoder("Gemma"))
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (ids,), _KW, other=other)
    assert plan.tensors["model.embed_tokens.embed_scale"] == (Full(4.0),)  # sqrt(16)
    assert plan.tensors["model.embed_tokens.weight"] == plan.tensors["lm_head.weight"]
    assert plan.tensors["model.embed_tokens.weight"][-1] == Scale(math.sqrt(32) / 4.0)
    assert any(isinstance(op, Scale) and op.offset == 1.0 for op in plan.tensors["model.norm.weight"])


def test_hf_gpt2_conv1d() -> None:
    model, other, ids, groups = _hf(_gpt2)
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (ids,), _KW, other=other)
    (take,) = plan.tensors["transformer.h.0.mlp.c_fc.weight"]
    assert isinstance(take, Take) and [dim for dim, _ in take.kept] == [1]  # Conv1D: [in, out]
    assert plan.config["n_inner"] == 64


def test_hf_bert_head_attributes() -> None:
    model, other, ids, groups = _hf(_bert)
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (ids,), _KW, other=other)
    attention = plan.attributes["encoder.layer.0.attention.self"]
    assert attention["num_attention_heads"] == 2 and attention["all_head_size"] == 16
    assert plan.config["intermediate_size"] == 24


def test_hf_llama_compensation_creates_biases_and_turns_on_their_flags() -> None:
    model, other, ids, groups = _hf(_decoder("Llama"))
    masks = fprune.group_masks(model, groups, 0.5, ignore=["model.embed_tokens", "lm_head"])
    generator = torch.Generator().manual_seed(5)
    batches = [{"input_ids": torch.randint(0, 64, (2, 9), generator=generator), **_KW} for _ in range(3)]
    stats = collect_statistics(model, batches, groups=groups, progress=False)
    plan = check_plan(model, masks, groups, (ids,), _KW, compensate=stats, other=other)
    assert plan.config["mlp_bias"] is True and plan.config["attention_bias"] is True
    layer = "model.layers.1"
    for name in ("mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert plan.tensors[f"{layer}.{name}.bias"] == (Zeros(plan.new_shapes()[f"{layer}.{name}.bias"], f"{layer}.{name}.weight"),)
    for name in ("mlp.down_proj", "self_attn.o_proj"):
        assert [type(op) for op in plan.tensors[f"{layer}.{name}.bias"]] == [Zeros, Compensate]


def test_hf_tied_llama_and_ties_a_plan_breaks() -> None:
    model, other, ids, groups = _hf(_decoder("Llama", tie_word_embeddings=True))
    plan = check_plan(model, fprune.group_masks(model, groups, 0.5), groups, (ids,), _KW, other=other)
    embed, head = "model.embed_tokens.weight", "lm_head.weight"
    assert plan.tensors[embed] == plan.tensors[head]
    untied = dataclasses.replace(plan, tensors={k: v for k, v in plan.tensors.items() if k != head})
    with pytest.raises(fprune.PruneError, match=rf"^apply_plan: the plan changes `{embed}` but not `{head}`, the same tensor"):
        apply_plan(model, untied)
    other_ops = dataclasses.replace(plan, tensors={**plan.tensors, head: (*plan.tensors[head], Scale(2.0))})
    with pytest.raises(fprune.PruneError, match=rf"^apply_plan: `{head}` and `{embed}` are one tensor \(tied\), but the plan changes them differently"):
        apply_plan(model, other_ops)


# --------------------------------------------------------------------------- 4. pattern matches


def _chain(kind: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    if kind == "conv":
        model: nn.Module = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1)
        )
        vision_zoo.randomize_batchnorms(model)
        return model.double().eval(), torch.randn(2, 3, 9, 9, dtype=torch.float64)
    act: nn.Module = nn.Sigmoid() if kind == "sigmoid" else nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return model.double().eval(), torch.randn(5, 4, dtype=torch.float64)


def _pattern_masks(model: nn.Module) -> dict[str, Tensor]:
    first = model.get_submodule("0").get_parameter("weight").shape[0]
    return {"0.weight": torch.arange(first) % 3 != 1, "3.weight": torch.tensor([True, False, True, True, False, True])}


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("traced", [False, True], ids=["module", "graph"])
def test_pattern_matches_of_a_chain_plan_what_apply_prune_does(kind: str, traced: bool) -> None:
    model, x = _chain(kind)
    gm = fx.symbolic_trace(model)
    matches = fprune.match_patterns(gm, fprune.default_patterns())
    masks = _pattern_masks(model) if kind == "conv" else {"0.weight": torch.arange(8) % 3 != 1, "2.weight": torch.tensor([True, False, True, True, False, True])}
    target = gm if traced else model
    other = perturb(_chain(kind)[0])
    check_plan(target, masks, matches, (x,), other=fx.symbolic_trace(other) if traced else other)


def test_pattern_matches_the_groups_prune_otherwise_are_refused() -> None:
    """Linear -> sigmoid -> Linear: the groups and the pattern both fold sigmoid(0) into the next
    bias, each summing in its own order; where the bits differ, make_plan says so, and where they
    do not, the plan is the pattern's pruning."""
    refused = 0
    for seed in range(8):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3))
        x = torch.randn(3, 4)
        matches = fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns())
        keep = torch.rand(8) < 0.5
        keep[0] = True
        before = _purity(model)
        try:
            check_plan(model, {"0.weight": keep}, matches, (x,))
        except fprune.PruneError as error:
            refused += 1
            assert re.match(r"make_plan: the channel groups of the model prune it differently from these pattern matches \(the values of `2.bias` differ\); find the channel groups", str(error)), error
        _assert_pure(model, before)
    assert refused


def test_pattern_matches_with_compensation_are_refused() -> None:
    model, x = _chain("linear")
    matches = fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns())
    stats = collect_statistics(model, _batches(tuple(x.shape)), progress=False)
    with pytest.raises(fprune.PruneError, match=r"^make_plan: `compensate` .*channel groups"):
        make_plan(model, {"0.weight": torch.arange(8) % 3 != 1}, matches, compensate=stats)


class ConstantInForward(nn.Module):
    """A tensor made in forward: tracing stores it on the traced module (`_tensor_constant0`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x))) * torch.tensor(2.0, dtype=torch.float64)
        return out


def test_pattern_matches_leave_a_model_with_tensor_constants_as_it_was() -> None:
    model = ConstantInForward().double()
    matches = fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns())
    check_plan(model, {"fc1.weight": torch.arange(8) % 2 == 0}, matches, (torch.randn(3, 4, dtype=torch.float64),))


# --------------------------------------------------------------------------- 5. refusals


def _resnet(**sizes: object) -> nn.Module:
    torch.manual_seed(0)
    return zoo.ResNet50Style(**sizes).eval()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def resnet_plan() -> tuple[nn.Module, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]:
    model = _resnet()
    groups = _traced_groups(model, (torch.randn(2, 3, 32, 32),))
    masks = fprune.group_masks(model, groups, 0.5)
    return model, masks, groups, make_plan(model, masks, groups)


def _refused(model: nn.Module, plan: object, message: str) -> None:
    before = _purity(model)
    with pytest.raises(fprune.PruneError, match=message):
        apply_plan(model, plan)  # type: ignore[arg-type]
    _assert_pure(model, before)


def test_a_model_of_another_class_is_refused(resnet_plan: tuple[nn.Module, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]) -> None:
    plan = resnet_plan[3]
    torch.manual_seed(0)
    _refused(zoo.ResNet18Style().eval(), plan, r"^apply_plan: the plan was made for a tests\.zoo\.ResNet50Style, not a tests\.zoo\.ResNet18Style; make a plan")
    _refused(fx.symbolic_trace(resnet_plan[0]), plan, r"^apply_plan: the plan was made for a tests\.zoo\.ResNet50Style, not a torch\.fx\.GraphModule")


def test_a_model_lacking_or_adding_a_tensor_is_refused(resnet_plan: tuple[nn.Module, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]) -> None:
    model, _, _, plan = resnet_plan
    shallow = _resnet(depths=(1, 1, 1, 1))
    _refused(shallow, plan, r"^apply_plan: the plan's model has a tensor `layer2\.1\.conv1\.weight` \[32, 128, 1, 1\] that this model lacks")
    groups = _traced_groups(shallow, (torch.randn(2, 3, 32, 32),))
    shallow_plan = make_plan(shallow, fprune.group_masks(shallow, groups, 0.5), groups)
    _refused(model, shallow_plan, r"^apply_plan: this model has a tensor `layer2\.1\.conv1\.weight` that the plan's model lacks")


def test_a_model_of_other_widths_or_already_pruned_is_refused(resnet_plan: tuple[nn.Module, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]) -> None:
    model, masks, groups, plan = resnet_plan
    _refused(_resnet(width=8), plan, r"^apply_plan: `conv1\.weight` has shape \[8, 3, 3, 3\] here, \[16, 3, 3, 3\] in the plan's model")
    pruned = apply_plan(model, plan)
    _refused(pruned, plan, r"^apply_plan: `conv1\.weight` has shape \[8, 3, 3, 3\] here, \[16, 3, 3, 3\] in the plan's model.*already pruned")


def test_anything_but_a_plan_or_a_module_is_refused(resnet_plan: tuple[nn.Module, dict[str, Tensor], tuple[ChannelGroup, ...], Plan]) -> None:
    model, _, _, plan = resnet_plan
    _refused(model, plan.to_json(), r"^apply_plan: expects a fprune\.Plan \(from make_plan or Plan\.from_json\), got str")
    _refused(model, None, r"^apply_plan: expects a fprune\.Plan")
    with pytest.raises(fprune.PruneError, match=r"^apply_plan: expects an nn\.Module, got str"):
        apply_plan("model", plan)  # type: ignore[type-var]
    with pytest.raises(fprune.PruneError, match=r"^make_plan: expects an nn\.Module, got dict"):
        make_plan({}, {}, [])  # type: ignore[arg-type]


def test_a_model_with_parametrizations_is_refused() -> None:
    class Positive(nn.Module):
        def forward(self, w: Tensor) -> Tensor:
            return w.abs()

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = _traced_groups(model, (torch.randn(2, 4),))
    masks = {"0.weight": torch.arange(8) % 2 == 0}
    plan = make_plan(model, masks, groups)
    torch.nn.utils.parametrize.register_parametrization(model.get_submodule("0"), "weight", Positive())
    _refused(model, plan, r"^apply_plan: module `0` carries torch\.nn\.utils\.parametrize parametrizations")
    with pytest.raises(fprune.PruneError, match=r"^make_plan: module `0` carries"):
        make_plan(model, masks, groups)


def test_masks_that_remove_nothing_plan_a_copy() -> None:
    model, x = zoo.ZOO["resnet18"]()
    groups = _traced_groups(model, (x,))
    masks = {fqn: torch.ones_like(m) for fqn, m in fprune.group_masks(model, groups, 0.5).items()}
    for chosen in ({}, masks):
        plan = check_plan(model, chosen, groups, (x,))
        assert not plan.tensors and not plan.attributes and plan.new_shapes() == plan.shapes
        assert_same_model(apply_plan(model, plan), model, (x,))


def test_plans_edited_into_what_the_model_cannot_take_are_refused() -> None:
    torch.manual_seed(0)
    model = SigmoidMlp().double()
    groups = _traced_groups(model, (torch.randn(3, 6, dtype=torch.float64),))
    plan = make_plan(model, fprune.group_masks(model, groups, 0.5), groups)
    past_the_end = dataclasses.replace(plan, tensors={**plan.tensors, "fc2.weight": (Take(((1, (0, 99)),)),)})
    _refused(model, past_the_end, r"^apply_plan: the plan's ops on `fc2\.weight` do not apply to this model's tensors \((IndexError|RuntimeError)")
    unknown = dataclasses.replace(plan, classes={"fc1": "os.system"})
    _refused(model, unknown, r"^apply_plan: the plan gives `fc1` the class os\.system, which fprune does not make")
    reads = dataclasses.replace(plan, tensors={**plan.tensors, "fc2.bias": (Fold("fc9.weight", 1, (0,), 0.5, 0),)})
    _refused(model, reads, r"^apply_plan: the plan reads a tensor `fc9\.weight` this model lacks")
    module = dataclasses.replace(plan, attributes={"fc9": {"in_features": 3}})
    _refused(model, module, r"^apply_plan: the plan names a module `fc9` this model lacks")
    config = dataclasses.replace(plan, config={"hidden_size": 3})
    _refused(model, config, r"^apply_plan: the plan sets config fields, but this model has no `config`")
    graph = dataclasses.replace(plan, graph={"fc1": NodeArgs((NodeRef("x"),), {})})
    _refused(model, graph, r"^apply_plan: the plan changes graph nodes, but this model is no GraphModule")


def test_plans_of_a_graph_naming_nodes_it_lacks_are_refused() -> None:
    gm = fx.symbolic_trace(ManualAttention().double())
    plan = dataclasses.replace(Plan("torch.fx.GraphModule", {fqn: tuple(t.shape) for fqn, t in _tensors(gm).items()}, {}), graph={"view": NodeArgs((NodeRef("nowhere"), 2), {})})
    _refused(gm, plan, r"^apply_plan: the plan names a graph node `nowhere` this GraphModule lacks")
    plan = dataclasses.replace(plan, graph={"nowhere": NodeArgs((2,), {})})
    _refused(gm, plan, r"^apply_plan: the plan changes a graph node `nowhere` this GraphModule lacks")


def _json(plan: Plan) -> dict[str, object]:
    document = json.loads(plan.to_json())
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", r"the text is not JSON"),
        (lambda d: "[1, 2]", r"the JSON is not a plan \(no `schema` / `tensors`\)"),
        (lambda d: json.dumps({**d, "schema": 99}), r"the plan has schema version 99, this fprune reads version 1"),
        (lambda d: json.dumps({**d, "schema": True}), r"the plan has schema version True"),
        (lambda d: json.dumps({**d, "fingerprint": "sha256:" + "0" * 64}), r"the plan's fingerprint does not match its architecture and shapes"),
        (lambda d: json.dumps({**d, "shapes": {**d["shapes"], "0.weight": [9, 4]}}), r"the plan's fingerprint does not match"),
        (lambda d: json.dumps({**d, "architecture": "torch.nn.Linear"}), r"the plan's fingerprint does not match"),
        (lambda d: json.dumps({**d, "shapes": {**d["shapes"], "0.weight": [8.5, 4]}}), r"the plan is malformed \(ValueError"),
        (lambda d: json.dumps({**d, "tensors": {"0.weight": [{"op": "take", "kept": 5}]}}), r"the plan is malformed \(ValueError: a take's `kept`"),
        (lambda d: json.dumps({**d, "tensors": {"0.weight": [{"op": "twist"}]}}), r"the plan is malformed \(ValueError: unknown tensor op 'twist'"),
        (lambda d: json.dumps({**d, "tensors": {"0.weight": [{"op": "zeros", "shape": 3, "like": "0.weight"}]}}), r"the plan is malformed"),
        (lambda d: json.dumps({**d, "tensors": {"0.weight": [{"op": "compensate", "terms": {}, "replace": True}]}}), r"the plan is malformed"),
        (lambda d: json.dumps({**d, "tensors": {"0.weight": ["take"]}}), r"the plan is malformed"),
        (lambda d: json.dumps({**d, "attributes": {"0": {"in_features": {"set": 3}}}}), r"the plan is malformed"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "shapes"}), r"the plan is malformed \(KeyError"),
    ],
    ids=[
        "not json", "not a plan", "schema 99", "schema true", "fingerprint", "shape", "architecture", "float shape",
        "take", "unknown op", "zeros", "compensate", "op not an object", "unknown value", "no shapes",
    ],
)  # fmt: skip
def test_damaged_json_is_refused(edit: Callable[[dict[str, object]], str], message: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = _traced_groups(model, (torch.randn(2, 4),))
    plan = make_plan(model, {"0.weight": torch.arange(8) % 2 == 0}, groups)
    with pytest.raises(fprune.PruneError, match=rf"^Plan\.from_json: {message}"):
        Plan.from_json(edit(_json(plan)))
    assert Plan.from_json(plan.to_json().encode()) == plan  # bytes are read too


def test_a_plan_is_frozen_and_shares_no_mutable_value_with_the_models_it_makes() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    plan = Plan(
        architecture="torch.nn.modules.container.Sequential",
        shapes={"0.weight": (8, 4), "0.bias": (8,)},
        tensors={},
        attributes={"0": {"sizes": [1, [2, 3]], "table": {"a": [4]}}},
    )
    first, second = apply_plan(model, plan), apply_plan(model, plan)
    sizes = getattr(first.get_submodule("0"), "sizes")
    sizes[1].append(9)
    getattr(first.get_submodule("0"), "table")["a"].append(5)
    assert plan.attributes["0"]["sizes"] == [1, [2, 3]] and plan.attributes["0"]["table"] == {"a": [4]}
    assert getattr(second.get_submodule("0"), "sizes") == [1, [2, 3]]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.architecture = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    [
        None, True, 0, -3, 1.5, -0.0, 1e-300, float("inf"), "text", (1, 2), [1, (2, 3)], {"a": [1, None]}, (), [],
        NodeRef("x"), SliceValue(None, 24, None), SliceValue(NodeRef("n"), -1, 2), EllipsisValue(), (EllipsisValue(), SliceValue(None, None, None)),
    ],
)  # fmt: skip
def test_every_kind_of_value_survives_json(value: Value) -> None:
    plan = Plan("torch.fx.GraphModule", {"w": (3,)}, {}, attributes={"": {"v": value}}, config={"c": value}, graph={"n": NodeArgs((value,), {"k": value})})
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert repr(again.attributes[""]["v"]) == repr(value)  # -0.0 stays -0.0, a tuple a tuple, a list a list


@pytest.mark.parametrize(
    "ops",
    [
        (Take(((0, (0, 2, 3, 4, 7)), (1, ()))),),
        (Fold("fc.weight", 1, (5,), 0.6931471805599453, 0), Take(((0, (1,)),))),
        (Zeros((4,), "w"), Compensate((MeanTerm("w", 1, (0, 3), (0.1, -1e-17), 0), MeanTerm("v", 0, (2,), (3.0,), 1)), True)),
        (Scale(1.4142135623730951), Scale(0.5, 1.0), Full(4.0)),
    ],
)
def test_every_kind_of_op_survives_json(ops: tuple[TensorOp, ...]) -> None:
    plan = Plan("m.M", {"w": (8, 4)}, {"w": ops})
    assert Plan.from_json(plan.to_json()) == plan


# --------------------------------------------------------------------------- 6. random models and masks


class Chain(nn.Module):
    """Linear or conv layers of the given widths, `act` between them (a BatchNorm before it in
    a CNN)."""

    def __init__(self, kind: str, widths: Sequence[int], act: str, bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(zip(widths, widths[1:])):
            last = index == len(widths) - 2
            layers.append(nn.Linear(a, b, bias=bias or last) if kind == "mlp" else nn.Conv2d(a, b, 3, bias=bias or last))
            if not last:
                if kind == "cnn":
                    layers.append(nn.BatchNorm2d(b))
                layers.append({"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[act])
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["mlp", "cnn"]),
    widths=st.lists(st.integers(1, 8), min_size=2, max_size=4),
    act=st.sampled_from(["relu", "sigmoid", "tanh"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_random_chains_and_masks(kind: str, widths: list[int], act: str, bias: bool, seed: int, data: st.DataObject) -> None:
    torch.manual_seed(seed)
    model = Chain(kind, [3, *widths], act, bias).double()
    vision_zoo.randomize_batchnorms(model)
    model.eval()
    x = torch.randn(2, 3, *((2 * len(widths) + 3,) * 2 if kind == "cnn" else ()), dtype=torch.float64)
    groups = _traced_groups(model, (x,))
    masks: dict[str, Tensor] = {}
    for fqn, size in ((fqn, len(m)) for fqn, m in fprune.group_masks(model, groups, 0.5).items()):
        keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=size, max_size=size), label=fqn))
        keep[data.draw(st.integers(0, size - 1), label=f"{fqn} keeps")] = True  # a group keeps a channel
        masks[fqn] = keep
    torch.manual_seed(seed + 1)
    other = Chain(kind, [3, *widths], act, bias).double()
    vision_zoo.randomize_batchnorms(other)
    check_plan(model, masks, groups, (x,), other=other.eval())


def test_plans_hash_by_their_fingerprint() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    plan = make_plan(model, fprune.group_masks(model, groups, 0.5), groups)
    assert {plan, Plan.from_json(plan.to_json())} == {plan} and hash(plan) == hash(plan.fingerprint)
