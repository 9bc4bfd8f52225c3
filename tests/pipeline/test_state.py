"""State that survives pruning, in both pipelines (pattern matches and channel groups).

requires_grad flags, per-module train/eval mode, dtype and device, registered and
non-persistent buffers, forward hooks and pre-hooks, and ``state_dict`` round trips through
``torch.save`` / ``torch.load(weights_only=True)`` into a second pruned copy.

Hooks, as observed (and pinned here): a pruned copy is made by ``copy.deepcopy``, so every
module keeps its hooks, pruned modules included (their hooks then see the pruned shapes). A
hook that is a plain function or closure is the *same* function object in both models, so
its captured state (a list it appends to) is shared: calls on the copy land there too. A hook
that is a bound method has its object deep-copied along with the model: its state is not
shared. Removing a hook through the original's handle leaves the copy's hook in place.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

import fprune

from ..zoo import ZOO

Records = Sequence[fprune.Match] | Sequence[fprune.ChannelGroup]


class _Net(nn.Module):
    """conv-bn-relu x2, pool, flatten, fc-relu-dropout-fc; custom buffers on several modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6, 10)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(10, 4)
        self.register_buffer("steps", torch.tensor(3))
        self.register_buffer("cache", torch.arange(5.0), persistent=False)
        self.conv1.register_buffer("tag", torch.tensor([1.0, 2.0]))  # on a pruned module
        self.conv1.register_buffer("scratch", torch.ones(8), persistent=False)
        self.fc2.register_buffer("calibration", torch.full((4,), 0.5))  # on a module that only loses columns
        self.fc2.register_buffer("tmp", torch.zeros(3), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        out: Tensor = self.fc2(self.drop(torch.relu(self.fc1(x))))
        return out


def _net() -> tuple[_Net, Tensor]:
    torch.manual_seed(0)
    model = _Net().double()
    with torch.no_grad():
        for name in ("bn1", "bn2"):
            nn.init.uniform_(model.get_buffer(f"{name}.running_mean"), -0.5, 0.5)
            nn.init.uniform_(model.get_buffer(f"{name}.running_var"), 0.5, 1.5)
    return model, torch.randn(2, 3, 10, 10, dtype=torch.float64)


def _records(model: nn.Module, x: Tensor, pipeline: str) -> tuple[dict[str, Tensor], Records]:
    gm = torch.fx.symbolic_trace(model)
    if pipeline == "patterns":
        matches = fprune.match_patterns(gm, fprune.default_patterns())
        fqns = ("conv1.weight", "conv2.weight", "fc1.weight")
        return {f: fprune.saliency_mask(model.get_parameter(f), 0.5) for f in fqns}, matches
    groups = fprune.channel_groups(gm, example_inputs=(x,))
    masks = fprune.group_masks(model, groups, 0.5)
    assert set(masks) == {"conv1.weight", "conv2.weight", "fc1.weight"}
    return masks, groups


PIPELINES = ["patterns", "groups"]


def _prune(model: nn.Module, x: Tensor, pipeline: str, prune_bias: bool = True) -> nn.Module:
    masks, records = _records(model, x, pipeline)
    return fprune.apply_prune(model, masks, records, prune_bias=prune_bias)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_requires_grad_flags_survive_on_pruned_and_untouched_parameters(pipeline: str) -> None:
    model, x = _net()
    frozen = {"conv1.weight", "conv1.bias", "fc2.bias", "bn2.weight"}  # pruned rows, pruned, untouched, pruned
    for fqn in frozen:
        model.get_parameter(fqn).requires_grad_(False)
    pruned = _prune(model, x, pipeline)
    assert pruned.get_parameter("conv1.weight").shape[0] == 4 and pruned.get_parameter("bn2.weight").shape[0] == 3
    assert {n for n, p in pruned.named_parameters() if not p.requires_grad} == frozen
    assert all(type(p) is nn.Parameter for p in pruned.parameters())
    torch.autograd.backward(pruned(x).sum())
    assert all((p.grad is None) == (n in frozen) for n, p in pruned.named_parameters())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_train_and_eval_mode_survive_per_module(pipeline: str) -> None:
    model, x = _net()
    model.train()
    model.bn2.eval()
    model.drop.eval()
    pruned = _prune(model, x, pipeline)
    modes = {n: m.training for n, m in pruned.named_modules()}
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert modes["bn1"] and not modes["bn2"] and not modes["drop"] and modes["conv1"] and modes[""]
    model.eval()
    assert not any(m.training for m in _prune(model, x, pipeline).modules())


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_device_survive(pipeline: str, dtype: torch.dtype) -> None:
    model, x = _net()
    model = model.to(dtype)
    pruned = _prune(model, x.to(dtype), pipeline)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    assert {n: b.dtype for n, b in pruned.named_buffers()} == {n: b.dtype for n, b in model.named_buffers()}
    assert {t.device for t in [*pruned.parameters(), *pruned.buffers()]} == {torch.device("cpu")}
    assert pruned(x.to(dtype)).dtype == dtype


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_registered_and_non_persistent_buffers_survive(pipeline: str) -> None:
    model, x = _net()
    pruned = _prune(model, x, pipeline)
    buffers = dict(pruned.named_buffers())
    original = dict(model.named_buffers())
    assert buffers.keys() == original.keys()
    # custom buffers, on pruned and untouched modules, are kept as they are (fprune cannot know
    # what they index), in new storage
    for fqn in ("steps", "cache", "conv1.tag", "conv1.scratch", "fc2.calibration", "fc2.tmp"):
        assert torch.equal(buffers[fqn], original[fqn]) and buffers[fqn].data_ptr() != original[fqn].data_ptr()
    # BatchNorm statistics follow their channels; the batch counter is kept
    keep1 = pruned.get_parameter("conv1.weight").shape[0]
    assert buffers["bn1.running_mean"].shape == (keep1,) and torch.equal(buffers["bn1.num_batches_tracked"], original["bn1.num_batches_tracked"])
    # non-persistent buffers stay non-persistent: in named_buffers, not in the state_dict
    keys = set(pruned.state_dict())
    assert {"cache", "conv1.scratch", "fc2.tmp"}.isdisjoint(keys)
    assert {"steps", "conv1.tag", "fc2.calibration", "bn1.running_var"} <= keys
    assert keys == set(model.state_dict())
    assert pruned.get_submodule("conv1")._non_persistent_buffers_set == {"scratch"}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_hooks_fire_on_the_pruned_copy_as_documented(pipeline: str) -> None:
    model, x = _net()
    model.eval()
    calls: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        model.bn2.register_forward_hook(lambda m, i, o: calls.append(("bn2 hook", tuple(o.shape)))),
        model.fc2.register_forward_pre_hook(lambda m, i: calls.append(("fc2 pre-hook", tuple(i[0].shape)))),
        model.drop.register_forward_hook(lambda m, a, k, o: calls.append(("drop hook with kwargs", tuple(o.shape))), with_kwargs=True),
        model.conv1.register_forward_hook(lambda m, i, o: calls.append(("conv1 hook", tuple(o.shape)))),
    ]

    class Recorder:
        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.shapes.append(tuple(output.shape))

    recorder = Recorder()
    model.fc1.register_forward_hook(recorder.hook)
    pruned = _prune(model, x, pipeline)
    assert calls == [] and recorder.shapes == []  # pruning runs no forward of the model
    pruned(x)
    # untouched modules' hooks and pre-hooks fire; so do pruned modules' hooks, with pruned shapes
    assert calls == [("conv1 hook", (2, 4, 8, 8)), ("bn2 hook", (2, 3, 6, 6)), ("drop hook with kwargs", (2, 5)), ("fc2 pre-hook", (2, 5))]
    # a bound-method hook's object was deep-copied with the model: the original's saw nothing
    assert recorder.shapes == []
    copied = next(iter(pruned.get_submodule("fc1")._forward_hooks.values()))
    assert getattr(copied, "__self__").shapes == [(2, 5)]
    # removing through the original's handles leaves the copy's hooks alone
    for handle in handles:
        handle.remove()
    calls.clear()
    model(x)
    pruned(x)
    assert len(calls) == 4
    # and a hook changing the output changes the copy's output
    pruned.get_submodule("fc2").register_forward_hook(lambda m, i, o: o * 0)
    assert not pruned(x).any()


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            tensor.add_(torch.rand_like(tensor))
        for buffer in model.buffers():
            if not buffer.is_floating_point():
                buffer.add_(7)
    return model


def _weights_only_round_trip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Tensor] = torch.load(buffer, weights_only=True)
    return loaded


def _assert_round_trip(build: Callable[[], nn.Module], x: Tensor) -> None:
    """A pruned copy's state_dict loads (strict) into a second copy built the same way."""
    first, second = build(), build()
    _perturbed(first)  # so that loading has something to carry over
    with torch.no_grad():
        assert not torch.equal(first(x), second(x))
    result = second.load_state_dict(_weights_only_round_trip(first.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert first.state_dict().keys() == second.state_dict().keys()
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(first(x), second(x))


@pytest.mark.parametrize(("pipeline", "prune_bias"), [("patterns", True), ("patterns", False), ("groups", True)])
def test_state_dict_round_trip_into_a_second_pruned_copy(pipeline: str, prune_bias: bool) -> None:
    model, x = _net()
    model.eval()
    masks, records = _records(model, x, pipeline)

    def build() -> nn.Module:
        return fprune.apply_prune(model, masks, records, prune_bias=prune_bias)

    if not prune_bias:  # fc2 had a bias; conv2 and fc1 get folded constants in theirs
        assert build().get_submodule("fc1").get_parameter("bias").shape == (5,)
    _assert_round_trip(build, x)


class _BiasFree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


def test_a_bias_added_by_folding_is_in_the_state_dict_and_round_trips() -> None:
    torch.manual_seed(1)
    model = _BiasFree()
    with torch.no_grad():
        model.fc1.bias.fill_(0.5)
    x = torch.randn(3, 4)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {"fc1.weight": torch.tensor([True, False, True, False, True, True])}

    def build() -> nn.Module:
        return fprune.apply_prune(model, masks, matches, prune_bias=False)

    assert "fc2.bias" in build().state_dict() and "fc2.bias" not in model.state_dict()
    _assert_round_trip(build, x)


@pytest.mark.parametrize("name", ["vit", "llama", "lstm_lm"])
def test_state_dict_round_trip_of_zoo_models(name: str) -> None:
    """Pruned attention (HeadPrunedMultiheadAttention, head counts) and LSTM round trip too."""
    model, x = ZOO[name]()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, 0.5)

    def build() -> nn.Module:
        return fprune.apply_prune(model, masks, groups)

    _assert_round_trip(build, x)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_original_state_dict_does_not_load_into_the_pruned_copy(pipeline: str) -> None:
    """The shapes really changed: loading the unpruned weights is torch's size-mismatch error."""
    model, x = _net()
    pruned = _prune(model, x, pipeline)
    with pytest.raises(RuntimeError, match=r"size mismatch for conv1.weight"):
        pruned.load_state_dict(model.state_dict())
