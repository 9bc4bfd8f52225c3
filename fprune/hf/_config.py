"""The config of a pruned Hugging Face model: the sizes that rebuild its shapes, solved from the
shapes themselves, and checked by building the model class from it on the meta device."""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn

from .._errors import PruneError

SIZE_FIELDS: tuple[str, ...] = ("hidden_size", "intermediate_size", "n_inner", "num_key_value_heads", "num_attention_heads")
"""Config sizes pruning can change, in the order they are solved (hidden size first: the others'
shapes may be products with it)."""

EPS_FIELDS: tuple[str, ...] = ("rms_norm_eps",)
"""Config eps of exact RMSNorms, rescaled with the hidden size."""


class Config(Protocol):
    """What fprune uses of a ``transformers.PretrainedConfig``."""

    def to_dict(self) -> dict[str, object]: ...


def is_hf_model(model: nn.Module) -> bool:
    """Whether `model` is a ``transformers.PreTrainedModel`` (transformers is never imported here:
    a model of it means it already is)."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None) if transformers is not None else None
    return isinstance(base, type) and isinstance(model, base)


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter and persistent buffer, by its state-dict key."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items() if isinstance(value, Tensor)}


def built_shapes(model: nn.Module, config: object) -> dict[str, tuple[int, ...]] | None:
    """The shapes of ``type(model)(config)``, built on the meta device (nothing allocated); None
    if the class refuses the config."""
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception:  # noqa: BLE001 - a config the class cannot take (e.g. hidden % heads != 0)
        return None
    return shapes_of(fresh)


def _explicit(model: nn.Module, config: object) -> object:
    """`config` with the sizes it leaves to defaults written out: ``head_dim`` (else
    ``hidden_size // num_attention_heads``, which pruning would change) where the model's
    attention has one, ``n_inner`` (GPT-2: else ``4 * n_embd``)."""
    config = copy.deepcopy(config)
    head_dims = {v for m in model.modules() for k, v in vars(m).items() if k in ("head_dim", "attention_head_size") and isinstance(v, int)}
    if getattr(config, "head_dim", None) is None and len(head_dims) == 1:
        setattr(config, "head_dim", head_dims.pop())
    if hasattr(config, "n_inner") and getattr(config, "n_inner") is None:
        setattr(config, "n_inner", 4 * int(getattr(config, "hidden_size")))
    return config


def solve_config(model: nn.Module, pruned: nn.Module) -> tuple[object, dict[str, str]]:
    """The pruned copy's config: every size field set to the value that builds the pruned
    shapes, where one value does; and the fields no single value builds, with why (widths that
    differ between layers, or a size the config cannot express).

    Each field is solved by building the model class on the meta device with that field moved
    (+1, else doubled) and reading the dims that move with it alone: ``size = k * value + b``.
    The config found is checked by building the class from it: it must give the pruned shapes.
    """
    base = _explicit(model, getattr(pruned, "config"))
    now = built_shapes(model, base)
    if now != shapes_of(model):
        return base, {"config": "the model class does not rebuild the original shapes from its config"}
    moves: dict[str, tuple[int, int, set[tuple[str, int, int]]]] = {}  # field -> (value, step, (key, dim, moved size))
    for name in SIZE_FIELDS:
        value = getattr(base, name, None)
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        for step in (1, value):
            trial = copy.deepcopy(base)
            setattr(trial, name, value + step)
            moved = built_shapes(model, trial)
            if moved is not None and moved.keys() == now.keys():
                moves[name] = (value, step, {
                    (key, d, b) for key, shape in now.items() for d, (a, b) in enumerate(zip(shape, moved[key])) if a != b
                })  # fmt: skip
                break
    target = shapes_of(pruned)
    problems: dict[str, str] = {}
    for name, (value, step, dims) in moves.items():
        others = {(key, d) for other, (_, _, moved_dims) in moves.items() if other != name for key, d, _ in moved_dims}
        found: set[int] = set()
        for key, dim, moved_size in dims:
            if (key, dim) in others:
                continue
            size = now[key][dim]
            k, rest = divmod(moved_size - size, step)
            offset = size - k * value
            want = target.get(key, now[key])[dim] - offset
            found.add(want // k if not rest and k > 0 and want > 0 and want % k == 0 else -1)
        if len(found) == 1 and -1 not in found:
            setattr(base, name, found.pop())
        elif found:
            problems[name] = "the pruned copy's layers have different widths, which one config value cannot hold"
    if not problems and built_shapes(model, base) != target:
        problems["shapes"] = "the config cannot express the pruned shapes (a size the model derives from others)"
    return base, problems


def updated_config(model: nn.Module, pruned: nn.Module, eps: Mapping[float, float]) -> tuple[object, dict[str, str]]:
    """:func:`solve_config`, with the config's RMSNorm eps moved as the pruned norms' (`eps`:
    old value -> new value, one for every norm that changed)."""
    config, problems = solve_config(model, pruned)
    for name in EPS_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, float) and value in eps:
            setattr(config, name, eps[value])
    return config, problems


def check_config(caller: str, problems: Mapping[str, str]) -> None:
    if problems:
        what = "; ".join(f"`{k}`: {v}" for k, v in problems.items())
        raise PruneError(
            f"{caller}: the pruned model's config cannot describe it ({what}); saved, it would reload with other "
            "shapes. Prune every layer alike (group_masks without global_ranking keeps the same width in each) "
            "or keep the model as a Python object (torch.save of the module)"
        )


def update_hf_config(model: nn.Module, pruned: nn.Module, eps: Mapping[float, float]) -> dict[str, str]:
    """Set the pruned copy's own config (every module of the copy shares it) to the sizes that
    rebuild it, and make what the class derives from them agree (Gemma's embedding scale
    ``sqrt(hidden_size)``: folded into the embedding weights). Returns the fields left as they
    were, with why (:func:`fprune.hf.save_pretrained` refuses to save those)."""
    solved, problems = updated_config(model, pruned, eps)
    config = getattr(pruned, "config")
    for name in (*SIZE_FIELDS, "head_dim", *EPS_FIELDS):
        if name in problems or not hasattr(solved, name):
            continue
        value = getattr(solved, name)
        if getattr(config, name, None) != value:
            setattr(config, name, value)
    if not problems:
        _fold_embed_scale(pruned, config)
    return problems


def _fold_embed_scale(pruned: nn.Module, config: object) -> None:
    """An embedding scaled by ``sqrt(hidden_size)`` at build time (Gemma's ``embed_scale``) gets
    the value the pruned config gives, its weight scaled by old / new: the output stays."""
    try:
        with torch.device("meta"):
            fresh = type(pruned)(config)
    except Exception:  # noqa: BLE001 - the caller's round-trip check reports it
        return
    fresh_modules = dict(fresh.named_modules())
    for name, module in pruned.named_modules():
        other = fresh_modules.get(name)
        old = getattr(module, "scalar_embed_scale", None)
        new = getattr(other, "scalar_embed_scale", None)
        if not isinstance(old, float) or not isinstance(new, float) or old == new or not isinstance(module, nn.Embedding):
            continue
        with torch.no_grad():
            module.weight = nn.Parameter(module.weight * (old / new), requires_grad=module.weight.requires_grad)
        setattr(module, "scalar_embed_scale", new)
        buffer = getattr(module, "embed_scale", None)
        if isinstance(buffer, Tensor):
            module.embed_scale = torch.tensor(new, dtype=buffer.dtype, device=buffer.device)
