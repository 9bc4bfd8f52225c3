"""The one purity check of the test suite: everything about a model that pruning must leave
as it was (tensors by identity and value, requires_grad / .grad, modules, their attributes,
hooks and parametrizations, the global hooks), snapshotted and compared."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals
from torch.nn.utils import parametrize

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)
_PLAIN = (int, float, bool, str, tuple, type(None))


@dataclass(frozen=True)
class Snapshot:
    """Everything about a model that pruning must not change, copied."""

    tensors: dict[str, tuple[int, Tensor]]
    flags: dict[str, tuple[bool, bool]]  # requires_grad, has .grad
    modules: dict[str, tuple[int, str, bool, str, tuple[int, ...], bool]]  # id, type, training, attributes, hooks, parametrized
    structure: str
    global_hooks: tuple[int, ...]


def snapshot(model: nn.Module) -> Snapshot:
    tensors = {k: (id(v), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    flags = {k: (p.requires_grad, p.grad is not None) for k, p in model.named_parameters(remove_duplicate=False)}
    modules = {
        name: (
            id(m),
            type(m).__qualname__,
            m.training,
            repr(sorted((k, repr(v)) for k, v in vars(m).items() if isinstance(v, _PLAIN) and k != "training")),
            tuple(len(getattr(m, d, {})) for d in _HOOK_DICTS),
            parametrize.is_parametrized(m),
        )
        for name, m in model.named_modules(remove_duplicate=False)
    }
    global_hooks = tuple(len(getattr(module_globals, name, {})) for name in _GLOBAL_HOOKS)
    return Snapshot(tensors, flags, modules, repr(model), global_hooks)


def changes(model: nn.Module, before: Snapshot) -> list[str]:
    """How `model` differs from `before` (empty: bit-for-bit the same)."""
    after = snapshot(model)
    found: list[str] = []
    if after.tensors.keys() != before.tensors.keys():
        found.append(f"state_dict keys changed: {sorted(set(after.tensors) ^ set(before.tensors))}")
    for key, (ident, value) in before.tensors.items():
        if key not in after.tensors:
            continue
        new_ident, new_value = after.tensors[key]
        if new_ident != ident:
            found.append(f"{key} was replaced by another tensor")
        if new_value.shape != value.shape or new_value.dtype != value.dtype or not torch.equal(new_value, value):
            found.append(f"{key} changed value")
    if after.flags != before.flags:
        found.append("requires_grad / .grad changed: " + ", ".join(k for k in before.flags if after.flags.get(k) != before.flags[k]))
    if after.modules.keys() != before.modules.keys():
        found.append("submodules changed")
    for name, record in before.modules.items():
        new = after.modules.get(name)
        if new is not None and new != record:
            what = ["identity", "type", "training flag", "attributes", "hooks", "parametrizations"]
            found.append(f"module `{name}`: {', '.join(w for w, a, b in zip(what, record, new) if a != b)} changed")
    if after.structure != before.structure:
        found.append("repr(model) changed")
    if after.global_hooks != before.global_hooks:
        found.append("global module hooks changed")
    return found


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    """AssertionError listing how `model` differs from `before`, if it does."""
    found = changes(model, before)
    assert not found, "; ".join(found)


def assert_modules_unchanged(modules: list[nn.Module], before: list[Snapshot]) -> None:
    """:func:`assert_unchanged` for each of several modules (a prune function's inputs)."""
    for module, snap in zip(modules, before, strict=True):
        assert_unchanged(module, snap)
