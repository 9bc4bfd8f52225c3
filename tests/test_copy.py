"""copy_module: the same copy as ``copy.deepcopy(module, memo)``, object for object."""

from __future__ import annotations

import copy
import functools
import itertools
import weakref
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, fx, nn

from fprune._copy import copy_module
from tests.fuzz_models import FuzzCase, fuzz_cases
from tests.models import TiedEmbeddingLM
from tests.zoo import ZOO

Canon = tuple[object, ...]


def canon(obj: object, seen: dict[int, int], original: set[int]) -> object:
    """A structure that two copies share exactly when they are the same object graph: every
    object is replaced by its type and contents, a second visit by a back reference, and an
    object of the original model (not copied) by its identity."""
    if id(obj) in original:
        return ("original", id(obj))
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return ("value", canon(type(obj), seen, original), obj)
    if isinstance(obj, weakref.ref):
        return ("weakref", canon(obj(), seen, original))
    if isinstance(obj, type):  # by name: a GraphModule's class is made per instance
        return ("type", obj.__module__, obj.__qualname__)
    if isinstance(obj, (range, types_function)) or callable(obj) and not isinstance(obj, (nn.Module, functools.partial)) and not hasattr(obj, "__self__"):
        return ("shared", id(obj))
    if id(obj) in seen:
        return ("ref", seen[id(obj)])
    seen[id(obj)] = len(seen)
    if isinstance(obj, Tensor):
        return ("tensor", canon(type(obj), seen, original), obj.dtype, tuple(obj.shape), obj.requires_grad, obj.detach().flatten().tolist(), canon(obj.__dict__, seen, original))
    if isinstance(obj, dict):
        return ("dict", canon(type(obj), seen, original), tuple((canon(k, seen, original), canon(v, seen, original)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return ("seq", canon(type(obj), seen, original), tuple(canon(v, seen, original) for v in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", canon(type(obj), seen, original), tuple(sorted(repr(v) for v in obj)))
    if isinstance(obj, functools.partial):
        return ("partial", canon(obj.func, seen, original), canon(obj.args, seen, original), canon(obj.keywords, seen, original))
    if hasattr(obj, "__self__") and hasattr(obj, "__func__"):
        return ("method", id(obj.__func__), canon(obj.__self__, seen, original))
    if hasattr(obj, "__dict__"):
        return ("object", canon(type(obj), seen, original), canon(vars(obj), seen, original))
    return ("other", canon(type(obj), seen, original), repr(obj))


types_function = type(canon)


def originals(model: nn.Module) -> set[int]:
    """ids of every object reachable from `model` (and `model`), to catch a copy that shares one."""
    found: set[int] = set()
    stack: list[object] = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in found or obj is None or isinstance(obj, (bool, int, float, str, type, torch.dtype, torch.device)) or isinstance(obj, types_function):
            continue
        found.add(id(obj))
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif isinstance(obj, Tensor):
            stack.append(obj.__dict__)
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
    return found


def assert_same_copy(model: nn.Module, memo_of: Callable[[], dict[int, object]] = dict) -> nn.Module:
    before = canon(model, {}, set())
    expected = copy.deepcopy(model, memo_of())
    memo = memo_of()
    substituted = {id(v) for k, v in memo.items() if k != id(memo)}
    ours = copy_module(model, memo)
    shared = originals(model) - substituted
    assert canon(ours, {}, shared) == canon(expected, {}, shared)
    assert canon(model, {}, set()) == before  # the original is untouched
    return ours


class Hooked(nn.Module):
    """Hooks of every kind (functions, a bound method of the module, a partial), custom
    attributes (lists, dicts, sets, tuples holding tensors), a module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.again = self.fc
        self.bn = nn.BatchNorm1d(3)
        self.register_buffer("steps", torch.tensor(2))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.history: list[Tensor] = [torch.zeros(2)]
        self.config = {"scale": 0.5, "names": ("a", "b"), "tensor": torch.ones(1)}
        self.tags = {"x", "y"}
        self.pair = (self.fc.weight, 3)
        self.calls = 0
        self.register_forward_hook(self.count)
        self.fc.register_forward_pre_hook(lambda m, args: None)
        self.bn.register_forward_hook(functools.partial(_scaled, 2.0))
        self.register_full_backward_hook(lambda m, gi, go: None)
        self.register_state_dict_pre_hook(lambda m, prefix, keep_vars: None)  # type: ignore[no-untyped-call]

    def count(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        self.calls += 1

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.bn(self.again(self.fc.weight.new_ones(1) * x)[:, :3] + self.fc(x))
        return out


def _scaled(factor: float, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    return out * factor


class CustomDeepcopy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.copies = 0

    def __deepcopy__(self, memo: dict[int, object]) -> CustomDeepcopy:
        new = CustomDeepcopy()
        new.fc = copy.deepcopy(self.fc, memo)
        new.copies = self.copies + 1
        memo[id(self)] = new
        return new


class WithState(nn.Module):
    """A module with its own __getstate__ / __setstate__ (as nn.LSTM has)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.cache = torch.ones(3)

    def __getstate__(self) -> dict[str, object]:
        state: dict[str, object] = super().__getstate__()  # type: ignore[no-untyped-call]
        state.pop("cache")
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self.cache = torch.zeros(3)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {name: build()[0] for name, build in ZOO.items()}
    models.update(
        {
            "conv-bn-linear": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)),
            "multihead-attention": nn.MultiheadAttention(8, 2),
            "embedding": nn.Embedding(5, 3),
            "tied-embedding": TiedEmbeddingLM(),
            "hooks-and-attributes": Hooked(),
            "own-copy-protocols": nn.Sequential(CustomDeepcopy(), WithState()),
            "graph-module": fx.symbolic_trace(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))),
            "containers": nn.Sequential(nn.Dropout(), nn.ModuleList([nn.Identity(), nn.GELU(approximate="tanh")]), nn.ModuleDict({"a": nn.Tanh()})),
        }
    )
    return models


@pytest.mark.parametrize("name", sorted(_models()))
def test_copy_module_equals_deepcopy(name: str) -> None:
    model = _models()[name]
    ours = assert_same_copy(model)
    for tensor in itertools.chain(ours.parameters(), ours.buffers()):
        assert all(tensor.data_ptr() != t.data_ptr() or t.numel() == 0 for t in itertools.chain(model.parameters(), model.buffers()))


def test_memo_entries_are_substituted_and_ties_kept() -> None:
    model = Hooked()
    new_weight = nn.Parameter(torch.full((3, 4), 7.0))

    def memo() -> dict[int, object]:
        return {id(model.fc.weight): new_weight}

    ours = assert_same_copy(model, memo)
    assert ours.get_parameter("fc.weight") is new_weight and ours.get_submodule("again") is ours.get_submodule("fc")
    assert ours.pair[0] is new_weight  # type: ignore[index]


def test_hooks_are_rebound_to_the_copy() -> None:
    model = Hooked().eval()
    ours = copy_module(model)
    x = torch.randn(2, 4)
    torch.testing.assert_close(ours(x), model(x))
    assert ours.calls == 1 and model.calls == 1  # the bound hook counts on its own module


@settings(max_examples=40, deadline=None)
@given(case=fuzz_cases())
def test_copy_module_equals_deepcopy_on_fuzzed_models(case: FuzzCase) -> None:
    assert_same_copy(case.model)
