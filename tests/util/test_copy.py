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
from torch import Tensor, fx, nn

from fprune._util.copy import copy_module
from tests.pipeline.fuzz_models import FuzzCase, fuzz_cases
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


# --- computed tensors (not graph leaves), which copy.deepcopy refuses ---------------------------


class Holder:
    """A plain object that keeps a tensor, as a user's bookkeeping object might."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def _computed_state(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    """Store computed tensors (autograd on) in `model` the ways modules do: a plain tensor
    attribute, a list, a tuple, a dict, inside a plain object, and on a parametrized module."""
    out = model(x)
    model.last = out  # a computed tensor as a plain attribute
    model.history = [out * 2, x]  # type: ignore[assignment]
    model.pair = (out.sum(), 3)  # type: ignore[assignment]
    model.stats = {"mean": out.mean()}  # type: ignore[assignment]
    model.holder = Holder(out + 1)  # type: ignore[assignment]
    return out, out * 2


@pytest.mark.parametrize("parametrized", [False, True], ids=["plain", "parametrized"])
def test_computed_tensors_are_copied_detached(parametrized: bool) -> None:
    """copy.deepcopy raises "Only Tensors created explicitly by the user (graph leaves) support
    the deepcopy protocol" on a module holding computed tensors; copy_module copies their
    values, detached, and leaves the module unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    if parametrized:  # a module copied through its own __deepcopy__ (copy.deepcopy's path)
        torch.nn.utils.parametrize.register_parametrization(model[0], "weight", nn.Identity())
    x = torch.randn(2, 4)
    out, _ = _computed_state(model, x)
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)

    ours = copy_module(model)
    assert model.last is out and out.grad_fn is not None  # the original keeps its tensors
    for name in ("last",):
        copied = getattr(ours, name)
        assert isinstance(copied, Tensor) and copied is not out and copied.is_leaf and not copied.requires_grad
        torch.testing.assert_close(copied, out.detach())
    history = ours.history
    assert isinstance(history, list) and history[1] is not x and torch.equal(history[1], x)
    torch.testing.assert_close(history[0], out.detach() * 2)
    assert ours.pair[1] == 3 and ours.pair[0].is_leaf  # type: ignore[index]
    assert ours.stats["mean"].is_leaf  # type: ignore[index]
    holder = ours.holder
    assert isinstance(holder, Holder) and holder is not model.holder and holder.tensor.is_leaf
    torch.testing.assert_close(holder.tensor, out.detach() + 1)
    torch.testing.assert_close(ours(x), model(x))


class Halve(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 0.5


def test_an_lstm_weight_cache_of_computed_tensors_is_copied() -> None:
    """After a forward with autograd on through a parametrized weight, an LSTM's
    ``_flat_weights`` cache holds the computed weights (what fprune.sparsifier's prepared
    models hold after training); the copy runs and computes what the original does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4))
    torch.nn.utils.parametrize.register_parametrization(model[0], "weight_ih_l0", Halve())
    x = torch.randn(2, 3)
    model(x)
    lstm = model[0]
    assert isinstance(lstm, nn.LSTM)
    cached = lstm._flat_weights[0]
    assert cached is not None and not cached.is_leaf
    ours = copy_module(model)
    copied = ours[0]
    assert isinstance(copied, nn.LSTM)
    cached = copied._flat_weights[0]
    assert cached is not None and cached.is_leaf
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], model(x)[0])


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_apply_prune_copies_a_model_holding_computed_tensors() -> None:
    """apply_prune copies the rest of the model with copy_module: a weight_norm module (whose
    `weight` is a computed tensor after a forward) and computed attributes do not stop it."""
    import fprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), torch.nn.utils.weight_norm(nn.Linear(5, 2)))
    x = torch.randn(3, 4)
    _computed_state(model, x)
    matches = fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns())
    keep = {"0.weight": torch.tensor([True, False, True, True, False, True])}
    pruned = fprune.apply_prune(model, keep, matches)
    assert pruned[2].in_features == 4 and isinstance(pruned.last, Tensor) and pruned.last.is_leaf
    masked = fprune.masked_parameters(model, keep, matches)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), torch.func.functional_call(model, masked, (x,)))
