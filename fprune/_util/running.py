"""Running a model without side effects: the example inputs' shapes (``ExampleShapes``), the
model's own hooks switched off, buffers copied, and one quiet run on meta or real tensors."""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .shape_mode import ShapeOnly


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype of one example tensor; its values are not kept.

    Attributes:
        shape: the tensor's shape.
        dtype: the tensor's dtype.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class ExampleShapes:
    """What ``channel_groups`` was given as ``example_inputs``, without the values: enough to
    run the model once on meta tensors.

    Attributes:
        leaves: the inputs flattened through tuples, lists and dicts: a :class:`TensorSpec`
            for each tensor, any other value as it was given.
        structure: how the leaves nest (a ``torch.utils._pytree`` spec).
        keywords: the leaves are those of ``(args, kwargs)``: keyword arguments were given too.
    """

    leaves: tuple[object, ...]
    structure: pytree.TreeSpec
    keywords: bool = False

    def meta_inputs(self) -> tuple[object, ...]:
        """The positional inputs again, with a meta tensor for each tensor."""
        return self._args(self._unflatten(lambda x: torch.empty(x.shape, dtype=x.dtype, device="meta")))

    def zero_inputs(self, device: torch.device) -> tuple[object, ...]:
        """The positional inputs again, with zeros on `device` for each tensor."""
        return self._args(self._unflatten(lambda x: torch.zeros(x.shape, dtype=x.dtype, device=device)))

    def meta_kwargs(self) -> dict[str, object]:
        """The keyword inputs again (empty if none were given), meta tensors for tensors."""
        return self._kwargs(self._unflatten(lambda x: torch.empty(x.shape, dtype=x.dtype, device="meta")))

    def zero_kwargs(self, device: torch.device) -> dict[str, object]:
        """The keyword inputs again (empty if none were given), zeros on `device` for tensors."""
        return self._kwargs(self._unflatten(lambda x: torch.zeros(x.shape, dtype=x.dtype, device=device)))

    def _unflatten(self, make: Callable[[TensorSpec], Tensor]) -> object:
        return pytree.tree_unflatten([make(x) if isinstance(x, TensorSpec) else x for x in self.leaves], self.structure)

    def _args(self, tree: object) -> tuple[object, ...]:
        args = tree[0] if self.keywords and isinstance(tree, tuple) else tree
        assert isinstance(args, tuple)
        return args

    def _kwargs(self, tree: object) -> dict[str, object]:
        if not self.keywords:
            return {}
        assert isinstance(tree, tuple) and isinstance(tree[1], dict)
        return tree[1]


def example_shapes(example_inputs: Sequence[object], example_kwargs: Mapping[str, object] | None = None) -> ExampleShapes:
    """The shapes and dtypes of `example_inputs` (positional arguments of forward) and of
    `example_kwargs` (keyword arguments), if given."""
    tree: object = (tuple(example_inputs), dict(example_kwargs)) if example_kwargs else tuple(example_inputs)
    leaves, structure = pytree.tree_flatten(tree)
    specs = tuple(TensorSpec(tuple(x.shape), x.dtype) if isinstance(x, Tensor) else x for x in leaves)
    return ExampleShapes(specs, structure, keywords=bool(example_kwargs))


# --- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ran:
    """One forward: its output, or the exception it raised."""

    output: object = None
    error: Exception | None = None


_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
"""The per-module hook tables nn.Module.__call__ consults."""


@contextmanager
def hooks_off(*models: nn.Module) -> Iterator[None]:
    """The modules' own hooks do not fire inside (the check is not the user's forward: a hook
    that records, logs or counts must not see it); the very same tables are back afterwards."""
    saved: list[tuple[nn.Module, str, object]] = []
    seen: set[int] = set()
    stack: list[nn.Module | None] = list(models)
    try:
        while stack:  # model.modules() without its names: this runs on every check
            module = stack.pop()
            if module is None or id(module) in seen:
                continue
            seen.add(id(module))
            state = vars(module)
            for name in _HOOKS:
                table = state.get(name)
                if table:
                    saved.append((module, name, table))
                    state[name] = OrderedDict()
            stack.extend(state["_modules"].values())
        yield
    finally:
        for module, name, table in saved:
            vars(module)[name] = table


def run_on_copies(model: nn.Module, inputs: Sequence[object], kwargs: Mapping[str, object] | None = None) -> object:
    """`model(*inputs, **kwargs)` with copies of its buffers in place of its own, so that what
    forward writes to them (BatchNorm statistics in train mode) does not stay in the model."""
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers(remove_duplicate=False)}
    return torch.func.functional_call(model, buffers, tuple(inputs), dict(kwargs or {}))


def run_quietly(model: nn.Module, inputs: Sequence[object], *, meta: bool, kwargs: Mapping[str, object] | None = None) -> _Ran:
    with warnings.catch_warnings(), torch.no_grad(), hooks_off(model):
        warnings.simplefilter("ignore")  # the model's warnings belong to the user's own runs
        try:
            if meta:
                with ShapeOnly():
                    return _Ran(model(*inputs, **dict(kwargs or {})))
            return _Ran(run_on_copies(model, inputs, kwargs))
        except Exception as error:  # noqa: BLE001 - reported, or the check is skipped
            return _Ran(error=error)


def on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def device_of(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


_TORCH_LOGGERS = ("torch._subclasses.fake_tensor", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")


@contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """torch's loggers that print tracebacks while an export fails, at CRITICAL inside."""
    loggers = [logging.getLogger(name) for name in _TORCH_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
