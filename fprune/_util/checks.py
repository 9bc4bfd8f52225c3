"""Checks every entry point makes on the model it is given."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .._errors import PruneError


def names_by_tensor(named: Iterable[tuple[str, Tensor]]) -> dict[int, list[str]]:
    """Every FQN of each tensor, keyed by the tensor's id() (tied tensors have several)."""
    names: dict[int, list[str]] = {}
    for fqn, tensor in named:
        names.setdefault(id(tensor), []).append(fqn)
    return names


def parametrized_module(model: nn.Module) -> str | None:
    """The name of the first module of `model` that carries parametrizations, or None."""
    for fqn, module in model.named_modules():
        if parametrize.is_parametrized(module):
            return fqn or type(model).__name__
    return None


def _torch_pruned_module(model: nn.Module) -> tuple[str, str] | None:
    """(module name, tensor name) of the first module pruned with torch.nn.utils.prune, or None."""
    for fqn, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                return fqn or type(model).__name__, str(getattr(hook, "_tensor_name", "weight"))
    return None


def check_model(model: object, function: str) -> None:
    """PruneError unless `model` is an nn.Module whose parameters are its real weights."""
    if not isinstance(model, nn.Module):
        raise PruneError(f"{function}: expects an nn.Module, got {type(model).__name__}")
    name = parametrized_module(model)
    if name is not None:
        raise PruneError(
            f"{function}: module `{name}` carries torch.nn.utils.parametrize parametrizations; remove them first "
            "(parametrize.remove_parametrizations, or a sparsifier's squash_mask) so fprune sees the real weights"
        )
    pruned = _torch_pruned_module(model)
    if pruned is not None:
        module, tensor = pruned
        raise PruneError(
            f"{function}: module `{module}` was pruned with torch.nn.utils.prune (`{tensor}_orig`, `{tensor}_mask` and a "
            f"forward pre-hook); make that permanent first with torch.nn.utils.prune.remove(module, {tensor!r}) "
            f"so fprune sees a real `{tensor}` parameter"
        )


def describe_node(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """What a graph node calls, for messages: "module `fc1` (Linear)", "method .view()",
    "function relu"."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        return f"module `{node.target}` ({type(module).__name__ if module is not None else 'module'})"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))}"
    return node.op


def named_tensors(model: nn.Module) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return tensors


def has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def trace(model: nn.Module, function: str, remedy: str = "") -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, or a PruneError from `function` that says why and
    what to do (`remedy` adds a way out particular to the caller)."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure is reported the same way
        text = str(error).strip()
        raise PruneError(
            f"{function}: torch.fx could not trace the model, torch.fx.symbolic_trace failed ({type(error).__name__}: "
            f"{text.splitlines()[0] if text else ''}); pruning follows the traced graph, so the model must be "
            f"fx-traceable (no data-dependent control flow; mark such submodules as leaf modules){remedy}"
        ) from None
