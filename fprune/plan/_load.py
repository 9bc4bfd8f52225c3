"""``load_pruned``: the pruned architecture rebuilt from a plan on the meta device (the original
weights are never allocated), with pruned weights loaded into it from a file read without
pickle (safetensors, or a ``state_dict`` file read with ``weights_only=True``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._errors import PruneError
from .._util.checks import check_model, named_tensors, names_by_tensor
from .._util.safetensors_stream import checkpoint_files
from ._records import Plan
from ._replay import check_fits, replay

Weights = str | os.PathLike[str] | Mapping[str, Tensor]
"""Pruned weights: a ``.safetensors`` file, a folder of safetensors shards, a file written by
``torch.save(state_dict)``, or the state dict itself."""


_RANDOM_FILLS = frozenset(
    getattr(Tensor, name) for name in ("normal_", "uniform_", "bernoulli_", "exponential_", "random_", "cauchy_", "log_normal_", "geometric_")
)


class _SkipMetaRandomFills(TorchFunctionMode):
    """A random fill of a meta tensor (``nn.init``'s ``normal_`` / ``uniform_``) returns it as it
    is: a meta tensor has no values to fill, and torch runs such a fill through its Python
    reference implementations, whose first call costs most of a second."""

    def __torch_function__(
        self, func: Callable[..., object], types: object, args: tuple[object, ...] = (), kwargs: Mapping[str, object] | None = None
    ) -> object:
        if func in _RANDOM_FILLS and args and isinstance(args[0], Tensor) and args[0].device.type == "meta":
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within it, every parameter a module registers goes to the meta device (no memory; the
    random initialisation of meta tensors is skipped), while buffers stay real (a rotary
    embedding's ``inv_freq``, which no checkpoint holds)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        value = module._parameters.get(name)
        if type(value) is nn.Parameter and value.device.type != "meta":
            module._parameters[name] = nn.Parameter(value.to("meta"), requires_grad=value.requires_grad)

    setattr(nn.Module, "register_parameter", on_meta)  # undone on exit
    try:
        with _SkipMetaRandomFills():
            yield
    finally:
        setattr(nn.Module, "register_parameter", register)


def read_weights(weights: Weights, caller: str) -> dict[str, Tensor]:
    """The state dict `weights` names (see :data:`Weights`), read without pickle."""
    if isinstance(weights, Mapping):
        if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
            raise PruneError(f"{caller}: `weights` must map tensor FQNs (str) to tensors")
        return dict(weights)
    if not isinstance(weights, (str, os.PathLike)):
        raise PruneError(f"{caller}: `weights` must be a file or folder path, or a state dict; got {type(weights).__name__}")
    path = Path(weights)
    if not path.exists():
        raise PruneError(f"{caller}: no file or folder {str(path)!r}")
    if path.is_dir() or path.suffix == ".safetensors":
        state: dict[str, Tensor] = {}
        for file in checkpoint_files(path):
            state.update(load_file(file))
        return state
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:  # a file in torch's legacy format cannot be memory-mapped
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported as what to do
            raise PruneError(f"{caller}: cannot read {str(path)!r} as a state_dict with weights_only=True ({error})") from None
    except Exception as error:  # noqa: BLE001 - the unpickler refuses anything but tensors and plain containers
        raise PruneError(
            f"{caller}: cannot read {str(path)!r} as a state_dict with weights_only=True ({str(error).splitlines()[0]}); "
            "save `pruned.state_dict()` (not the module), or safetensors"
        ) from None
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise PruneError(f"{caller}: {str(path)!r} holds a {type(loaded).__name__}, not a state_dict of tensors by FQN")
    return dict(loaded)


def load_pruned(model: nn.Module | Callable[[], nn.Module], plan: Plan, weights: Weights) -> nn.Module:
    """The pruned model that `plan` describes, on the user's own class, with `weights` loaded.

    Args:
        model: a function that builds the original (unpruned) model, such as
            ``lambda: LlamaForCausalLM(config)``: it is called with its parameters put on
            the meta device as they are registered, so the original weights are never
            allocated (buffers are built for real: no checkpoint holds a non-persistent
            one); or the original model itself (on the meta device, or any).
        plan: from :func:`make_plan` or :meth:`Plan.from_json`.
        weights: the pruned weights: a ``.safetensors`` file, a folder of shards (as
            :func:`prune_checkpoint` writes), a ``torch.save(pruned.state_dict())`` file (read
            with ``weights_only=True``: no code runs), or a state dict.

    Returns:
        The pruned model, bit for bit the one whose weights were saved (its class, sizes,
        attributes and config from the plan; its tensors, dtypes included, from `weights`;
        tied weights tied). In the mode the factory left it in.

    Raises:
        PruneError: the model does not fit the plan (the first difference); weights that are
            missing, unexpected, or of other shapes than the plan gives (the first of them);
            a file that cannot be read without pickle.
    """
    if isinstance(model, nn.Module):
        base = model
    elif callable(model):
        with parameters_on_meta():
            built = model()
        if not isinstance(built, nn.Module):
            raise PruneError(f"load_pruned: the model factory returned a {type(built).__name__}, not an nn.Module")
        base = built
    else:
        raise PruneError(f"load_pruned: `model` must be an nn.Module or a function that builds one, got {type(model).__name__}")
    check_model(base, "load_pruned")
    check_fits(base, plan, "load_pruned")
    skeleton = replay(base, plan, "load_pruned", values="real")  # no op runs on a meta tensor
    state = read_weights(weights, "load_pruned")
    return _loaded(skeleton, state)


def _loaded(skeleton: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    tensors = named_tensors(skeleton)
    persistent = skeleton.state_dict(keep_vars=True)
    aliases = names_by_tensor(tensors.items())
    unexpected = [k for k in state if k not in persistent]
    if unexpected:
        raise PruneError(
            f"load_pruned: the weights hold `{unexpected[0]}` ({len(unexpected)} such), which the pruned model does not "
            "have; are they another model's?"
        )
    for fqn, expected in persistent.items():
        given = state.get(fqn)
        if given is None:
            if not any(alias in state for alias in aliases.get(id(expected), [fqn])):
                raise PruneError(
                    f"load_pruned: the weights lack `{fqn}`; save the whole pruned state_dict (safetensors' save_model, or "
                    "torch.save(pruned.state_dict()))"
                )
            continue
        if tuple(given.shape) != tuple(expected.shape):
            raise PruneError(
                f"load_pruned: `{fqn}` is {list(given.shape)} in the weights, {list(expected.shape)} in the pruned model; "
                "are they the weights of another pruning (or of the unpruned model)?"
            )
    tied = [names for names in aliases.values() if len(names) > 1]
    skeleton.load_state_dict(dict(state), strict=False, assign=True)
    for names in tied:  # loading assigned each name its own tensor: tie them again
        source = next((n for n in names if n in state), names[0])
        value = _get(skeleton, source)
        for name in names:
            if name != source:
                _set(skeleton, name, value)
    empty = next((fqn for fqn, t in named_tensors(skeleton).items() if t.device.type == "meta"), None)
    if empty is not None:
        raise PruneError(
            f"load_pruned: `{empty}` is still on the meta device: the weights do not hold it (a buffer the model does not "
            "save); pass a function that builds the model instead of a model on the meta device, so buffers are built"
        )
    return skeleton


def _owner(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    owner, _, name = fqn.rpartition(".")
    return (model.get_submodule(owner) if owner else model), name


def _get(model: nn.Module, fqn: str) -> Tensor:
    module, name = _owner(model, fqn)
    value = module._parameters.get(name)
    return value if value is not None else module._buffers[name]  # type: ignore[return-value]  # a named tensor


def _set(model: nn.Module, fqn: str, value: Tensor) -> None:
    module, name = _owner(model, fqn)
    if name in module._parameters:
        module._parameters[name] = value  # type: ignore[assignment]  # a Parameter: its alias's
    else:
        module._buffers[name] = value
