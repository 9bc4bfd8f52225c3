"""The cheap first try of ``export_check``: the model's and the pruned copy's forwards run on
fake tensors under a ``TorchFunctionMode`` that records each torch call (its arguments' numbers,
its outputs' shapes), and the two records are compared with the numbers pruning changes in
the exported graph.

``torch.export`` tags every node with the torch call it came from (``node.meta["torch_fn"]``,
``"<function name>_<n-th call of it>"``); the recorder counts calls the same way, so a call
of the record and the nodes of the graph line up by that key. The check holds only where:

- the model's record agrees with the graph the groups were found in (every node's key was
  recorded, the last node of each key has the shape the call returned): the forward took the
  path the export took;
- the copy's record has the same calls in the same order;
- the numbers in each call's arguments differ between the two records exactly by the
  (old, new) pairs that the graph's changes make in that call's nodes, and no value such a pair
  changes occurs in the call more often than the pairs say (else which one changed is not
  known).

Anything else, and any error on the way, is "not proven": ``export_check`` then exports the
copy, as it always did. Running the two forwards costs about a fifth of one export.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode

from .._util.running import ExampleShapes, device_of, quiet_torch_logs


class _Call(NamedTuple):
    leaves: tuple[object, ...]
    shapes: tuple[tuple[int, ...], ...]


class _Record(NamedTuple):
    order: tuple[str, ...]
    calls: Mapping[str, _Call]


def _leaves(value: object) -> list[object]:
    """The numbers and other constants of a call's arguments, in order; tensors as one marker."""
    if isinstance(value, Tensor):
        return ["<tensor>"]
    if isinstance(value, slice):
        return ["<slice>", value.start, value.stop, value.step]
    if isinstance(value, (list, tuple)):  # torch.Size too; flat: ``x.view(a, b)`` and ``aten.view(x, [a, b])`` alike
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return ["<map>", *(leaf for key in sorted(value, key=str) for leaf in [key, *_leaves(value[key])]), "</map>"]
    if isinstance(value, fx.Node):
        return ["<tensor>"]
    return [value]


def _typed(value: object) -> tuple[str, object]:
    """A leaf compared with its type: True is no 1, 2.0 is no 2."""
    return (type(value).__name__, value)


class _Recorder(TorchFunctionMode):
    """Records every torch call that returns tensors, keyed as torch.export keys its nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[object, int] = {}
        self.order: list[str] = []
        self.calls: dict[str, _Call] = {}

    def __torch_function__(
        self, func: Callable[..., object], types: object, args: Sequence[object] = (), kwargs: Mapping[str, object] | None = None
    ) -> object:
        kwargs = kwargs or {}
        count = self.counts[func] = self.counts.get(func, 0) + 1
        result = func(*args, **kwargs)
        shapes = tuple(tuple(int(s) for s in t.shape) for t in pytree.tree_leaves(result) if isinstance(t, Tensor))
        if shapes:
            key = f"{getattr(func, '__name__', func)}_{count}"
            self.order.append(key)
            self.calls[key] = _Call(tuple(_leaves((tuple(args), dict(kwargs)))), shapes)
        return result


def _record(model: nn.Module, shapes: ExampleShapes) -> _Record | None:
    """`model`'s forward on fake tensors of the example shapes, recorded; None if it fails.
    Every parameter and buffer is a fake tensor during the call (``functional_call``): the
    forward's in-place updates (BatchNorm's running statistics) never reach the model's own."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = device_of(model)
    try:
        fake = FakeTensorMode()
        with fake:
            state: dict[str, Tensor] = {
                fqn: fake.from_tensor(tensor)  # memoized: tied names get one fake tensor
                for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
                for fqn, tensor in named
            }
            args = [fake.from_tensor(a) if isinstance(a, Tensor) else a for a in shapes.zero_inputs(device)]
            kwargs = {k: fake.from_tensor(v) if isinstance(v, Tensor) else v for k, v in shapes.zero_kwargs(device).items()}
        recorder = _Recorder()
        with quiet_torch_logs(), fake, recorder:  # a copy that fails here is exported: its errors are said there
            torch.func.functional_call(model, state, tuple(args), kwargs)
    except Exception:  # noqa: BLE001 - any failure only means: not proven here, export instead
        return None
    return _Record(tuple(recorder.order), recorder.calls)


class Change(NamedTuple):
    """What pruning changes in the nodes of one torch call: each changed node's argument
    leaves before and after, and whether that node is the call's only node."""

    single: bool
    old: tuple[object, ...]
    new: tuple[object, ...]
    pairs: tuple[tuple[object, object], ...]


def changes_by_call(
    graph: fx.Graph, new_args: Mapping[str, tuple[tuple[object, ...], dict[str, object]]]
) -> dict[str, list[Change]] | None:
    """Per torch-call key, the changes that the new arguments of nodes (`new_args`, by node
    name) make; None if a changed node has no key or changes its number of leaves."""
    nodes_per_key = collections.Counter((n.meta.get("torch_fn") or (None,))[0] for n in graph.nodes)
    changes: dict[str, list[Change]] = {}
    for node in graph.nodes:
        if node.name not in new_args:
            continue
        key = (node.meta.get("torch_fn") or (None,))[0]
        args, kwargs = new_args[node.name]
        old, new = _leaves((tuple(node.args), dict(node.kwargs))), _leaves((tuple(args), dict(kwargs)))
        if not isinstance(key, str) or len(old) != len(new):
            return None
        pairs = tuple((a, b) for a, b in zip(old, new) if _typed(a) != _typed(b))
        changes.setdefault(key, []).append(Change(nodes_per_key[key] == 1, tuple(old), tuple(new), pairs))
    return changes


def _agrees(record: _Record, graph: fx.Graph) -> bool:
    """Whether `record` took the exported path: every node's key recorded, with its shape."""
    last: dict[str, tuple[int, ...] | None] = {}
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        key = (node.meta.get("torch_fn") or (None,))[0]
        if isinstance(node.target, torch._ops.HigherOrderOperator) or _is_hop_output(node):
            continue  # a subgraph's call (``wrap_with_set_grad_enabled``): its calls are in the record, its nodes not here
        if not isinstance(key, str):
            return False
        meta = node.meta.get("tensor_meta")
        last[key] = tuple(meta.shape) if meta is not None else None
    for key, shape in last.items():
        call = record.calls.get(key)
        if call is None or shape is not None and shape not in call.shapes:
            return False
    return True


def _is_hop_output(node: fx.Node) -> bool:
    source = node.args[0] if node.args else None
    return isinstance(source, fx.Node) and isinstance(source.target, torch._ops.HigherOrderOperator)


def _same(a: Sequence[object], b: Sequence[object]) -> bool:
    return len(a) == len(b) and all(_typed(x) == _typed(y) for x, y in zip(a, b))


def _verdict(before: _Call, after: _Call, changes: Sequence[Change]) -> Verdict:
    """Whether the copy's call `after` is the model's `before` but for `changes`: "same",
    "differs" (certain: compared place by place) or "unknown"."""
    if len(before.leaves) != len(after.leaves):
        return "unknown"
    if not changes:
        return "same" if _same(before.leaves, after.leaves) else "unknown"
    if len(changes) == 1 and changes[0].single and _same(changes[0].old, before.leaves):
        return "same" if _same(changes[0].new, after.leaves) else "differs"  # the call's arguments are its node's
    pairs = [pair for change in changes for pair in change.pairs]
    seen = collections.Counter((_typed(a), _typed(b)) for a, b in zip(before.leaves, after.leaves) if _typed(a) != _typed(b))
    if seen != collections.Counter((_typed(a), _typed(b)) for a, b in pairs):
        return "unknown"
    olds = collections.Counter(_typed(a) for a, _ in pairs)
    present = collections.Counter(_typed(a) for a in before.leaves)
    certain = all(present[value] == count for value, count in olds.items())  # no unchanged twin: positions are certain
    return "same" if certain else "unknown"


Verdict = Literal["same", "differs", "unknown"]


def compare(
    original: Callable[[], _Record | None],
    pruned: nn.Module,
    graph: fx.Graph,
    shapes: ExampleShapes,
    changes: Mapping[str, Sequence[Change]],
) -> tuple[Verdict, str]:
    """Whether the records prove that `pruned`'s forward is `graph`'s but for `changes`
    ("same"), prove that it is not ("differs", with the call that differs), or neither
    ("unknown"); `original()` gives the model's record, once."""
    before = original()
    if before is None or not _agrees(before, graph):
        return "unknown", ""
    after = _record(pruned, shapes)
    if after is None or after.order != before.order or any(key not in before.calls for key in changes):
        return "unknown", ""
    verdicts = {key: _verdict(before.calls[key], after.calls[key], changes.get(key, ())) for key in before.order}
    wrong = next((key for key, v in verdicts.items() if v == "differs"), None)
    if wrong is not None:
        expected = changes[wrong][0].new
        return "differs", f"the torch call `{wrong}` gets {list(after.calls[wrong].leaves)}, expected {list(expected)}"
    return ("same", "") if all(v == "same" for v in verdicts.values()) else ("unknown", "")


def recorder_of(model: nn.Module, shapes: ExampleShapes) -> Callable[[], _Record | None]:
    """`model`'s record, made on the first call and kept."""
    made: list[_Record | None] = []

    def get() -> _Record | None:
        if not made:
            made.append(_record(model, shapes))
        return made[0]

    return get
