"""The config of a pruned Hugging Face model: the sizes that rebuild its shapes, solved from the
shapes themselves, and checked by building the model class from it on the meta device."""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._util.tensor_ops import Full, Scale, TensorOp, Zeros, scaled


SIZE_FIELDS: tuple[str, ...] = ("hidden_size", "intermediate_size", "n_inner", "num_key_value_heads", "num_attention_heads")
"""Config sizes pruning can change, in the order they are solved (hidden size first: the others'
shapes may be products with it)."""

EPS_FIELDS: tuple[str, ...] = ("rms_norm_eps",)
"""Config eps of exact RMSNorms, rescaled with the hidden size."""


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


Field = tuple[str, int | None]
"""A size the config holds: a field's name, and for a per-layer list (Gemma3n's
``intermediate_size``) the layer's index in it, else None."""

_Moves = Mapping[Field, tuple[int, int, set[tuple[str, int, int]]]]
"""Each size field -> (its value, the step it was moved by, the dims that moved: (key, dim,
size when moved))."""


PER_LAYER_WIDTHS = "the pruned copy's layers have different widths"
"""How a problem of :func:`solve_sizes` starts where each layer has one width, but not all the
same, for a field the config holds one value of."""


def _layer_widths(model: nn.Module, config: object, found: Mapping[tuple[str, int], int]) -> dict[int, int] | None:
    """Layer index -> the one value its dims need (`found`: (key, dim) -> value), where every dim
    is in a layer (a child of a module list of ``num_hidden_layers`` modules), the dims of each
    layer agree, and not all layers do; else None (a size the model derives from others)."""
    layers = getattr(config, "num_hidden_layers", None)
    prefixes = [f"{n}." for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    widths: dict[int, set[int]] = {}
    for (key, _), value in found.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        index = key[len(prefix):].split(".", 1)[0] if prefix is not None else ""
        if value < 0 or not index.isdigit():
            return None
        widths.setdefault(int(index), set()).add(value)
    if any(len(w) != 1 for w in widths.values()) or len({w for ws in widths.values() for w in ws}) < 2:
        return None
    return {i: next(iter(w)) for i, w in sorted(widths.items())}


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_values(config: object) -> dict[Field, int]:
    """The sizes of `config` to solve, in :data:`SIZE_FIELDS` order: each int field, and each entry
    of a field that holds one int per layer (a list or tuple of ``num_hidden_layers`` entries)."""
    layers = getattr(config, "num_hidden_layers", None)
    found: dict[Field, int] = {}
    for name in SIZE_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and _is_size(value):
            found[(name, None)] = value
        elif isinstance(value, (list, tuple)) and _is_size(layers) and len(value) == layers and all(_is_size(v) for v in value):
            found.update({(name, index): int(entry) for index, entry in enumerate(value)})
    return found


def _get(config: object, field: Field) -> int:
    name, index = field
    value = getattr(config, name)
    return int(value if index is None else value[index])


def _set(config: object, field: Field, size: int) -> None:
    """Set one size of `config` (a per-layer entry: the field replaced by a new list / tuple)."""
    name, index = field
    if index is None:
        setattr(config, name, size)
        return
    entries = list(getattr(config, name))
    entries[index] = size
    setattr(config, name, tuple(entries) if isinstance(getattr(config, name), tuple) else entries)


def _moves(model: nn.Module, base: object, now: Mapping[str, tuple[int, ...]]) -> dict[Field, tuple[int, int, set[tuple[str, int, int]]]]:
    """Each size of `base` moved alone (+1, else doubled) on a meta build of the model class, and
    the dims that moved with it."""
    moves: dict[Field, tuple[int, int, set[tuple[str, int, int]]]] = {}
    for field, value in size_values(base).items():
        for step in (1, value):
            trial = copy.deepcopy(base)
            _set(trial, field, value + step)
            moved = built_shapes(model, trial)
            if moved is not None and moved.keys() == now.keys():
                moves[field] = (value, step, {
                    (key, d, b) for key, shape in now.items() for d, (a, b) in enumerate(zip(shape, moved[key])) if a != b
                })  # fmt: skip
                break
    return moves


def solve_sizes(model: nn.Module, base: object, target: Mapping[str, tuple[int, ...]]) -> tuple[object, dict[str, str]]:
    """`base` (a copy) with every size set to the value that builds the shapes `target` where one
    value does; and the fields no value builds, with why. The model class (``type(model)``) must
    build shapes from `base`; a size is solved from the dims that move with it alone:
    ``size = k * value + b``, a per-layer entry from its layer's dims. The config found is
    checked by building the class from it: it must give `target`."""
    base = copy.deepcopy(base)
    now = built_shapes(model, base)
    if now is None:
        return base, {"config": "the model class cannot be built from its config"}
    moves = _moves(model, base, now)
    problems: dict[str, str] = {}
    for field, (value, step, dims) in moves.items():
        others = {(key, d) for other, (_, _, moved_dims) in moves.items() if other != field for key, d, _ in moved_dims}
        found: dict[tuple[str, int], int] = {}  # (key, dim) -> the value it needs, -1: none
        for key, dim, moved_size in dims:
            if (key, dim) in others:
                continue
            size = now[key][dim]
            k, rest = divmod(moved_size - size, step)
            offset = size - k * value
            want = target.get(key, now[key])[dim] - offset
            found[(key, dim)] = want // k if not rest and k > 0 and want > 0 and want % k == 0 else -1
        values = set(found.values())
        if len(values) == 1 and -1 not in values:
            _set(base, field, values.pop())
        elif values:
            name, index = field
            widths = _layer_widths(model, base, found) if index is None else None
            problems[name] = (
                f"{PER_LAYER_WIDTHS} ({', '.join(f'layer {i}: {w}' for i, w in widths.items())}), and "
                f"{type(base).__name__} holds one `{name}` for all of them"
                if widths is not None
                else f"the pruned dims that follow {f'`{name}`' if index is None else f'layer {index} of `{name}`'} "
                "give no one value of it"
            )
    if not problems:  # a field with no dim of its own (Phi-3's kv heads, only in the fused qkv_proj)
        _solve_shared(base, moves, now, target)
    if not problems and built_shapes(model, base) != dict(target):
        problems["shapes"] = "the config cannot express the pruned shapes (a size the model derives from others)"
    return base, problems


def solve_config(model: nn.Module, pruned: nn.Module) -> tuple[object, dict[str, str]]:
    """The pruned copy's config: every size field set to the value that builds the pruned
    shapes, where one value does (a per-layer list, as Gemma3n's ``intermediate_size``, entry by
    entry); and the fields no value builds, with why (widths that differ between layers where
    the config holds one value, or a size the config cannot express). See :func:`solve_sizes`."""
    base = _explicit(model, getattr(pruned, "config"))
    if built_shapes(model, base) != shapes_of(model):
        return base, {"config": "the model class does not rebuild the original shapes from its config"}
    return solve_sizes(model, base, shapes_of(pruned))


def config_problems(model: nn.Module) -> dict[str, str]:
    """Why the config of `model` (a pruned copy) does not build its shapes, by field: the
    fields :func:`solve_sizes` finds no value of from its shapes (empty: none found)."""
    config = getattr(model, "config", None)
    return solve_sizes(model, _explicit(model, config), shapes_of(model))[1] if config is not None else {}


def _solve_shared(
    base: object,
    moves: _Moves,
    now: Mapping[str, tuple[int, ...]],
    target: Mapping[str, tuple[int, ...]],
) -> None:
    """Set each field that every dim it moves shares with other fields (Phi-3's
    ``num_key_value_heads``: ``qkv_proj`` is ``(heads + 2 * kv_heads) * head_dim``) from those dims,
    taking the others' changes out as measured (``k * value`` each). Only a value every such dim
    agrees on is set; the caller checks the config by building the class from it."""
    for field, (value, step, dims) in moves.items():
        if _get(base, field) != value:
            continue  # solved from a dim of its own
        found: set[int] = set()
        for key, dim, moved_size in dims:
            rest = target.get(key, now[key])[dim] - now[key][dim]
            for other, (other_value, other_step, other_dims) in moves.items():
                moved = next((m for k, d, m in other_dims if (k, d) == (key, dim)), None)
                if other != field and moved is not None:
                    rest -= (moved - now[key][dim]) // other_step * (_get(base, other) - other_value)
            k, remainder = divmod(moved_size - now[key][dim], step)
            found.add(value + rest // k if not remainder and k > 0 and rest % k == 0 else -1)
        if len(found) == 1 and (solved := found.pop()) > 0:
            _set(base, field, solved)


def updated_config(model: nn.Module, pruned: nn.Module, eps: Mapping[float, float]) -> tuple[object, dict[str, str]]:
    """:func:`solve_config`, with the config's RMSNorm eps moved as the pruned norms' (`eps`:
    old value -> new value, one for every norm that changed)."""
    config, problems = solve_config(model, pruned)
    for name in EPS_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, float) and value in eps:
            setattr(config, name, eps[value])
    return config, problems


def update_hf_config(
    model: nn.Module, pruned: nn.Module, eps: Mapping[float, float], recorded: dict[str, list[TensorOp]] | None = None
) -> dict[str, str]:
    """Set the pruned copy's own config (every module of the copy shares it) to the sizes that
    rebuild it, and make what the class derives from them agree (Gemma's embedding scale
    ``sqrt(hidden_size)``: folded into the embedding weights; what that does to a tensor is
    appended to `recorded`, by FQN, where given). Returns the fields left as they were, with
    why (:func:`fprune.hf.save_pretrained` refuses to save those)."""
    sync_head_attributes(model, pruned)
    solved, problems = updated_config(model, pruned, eps)
    config = getattr(pruned, "config")
    for name in (*SIZE_FIELDS, "head_dim", *EPS_FIELDS):
        if name in problems or not hasattr(solved, name):
            continue
        value = getattr(solved, name)
        if getattr(config, name, None) != value:
            setattr(config, name, value)
    if not problems:
        _fold_embed_scale(pruned, config, recorded)
    return problems


_HEAD_COUNTS = ("num_attention_heads", "num_heads")
_HEAD_SIZES = ("attention_head_size", "head_dim", "head_size")
_HEAD_WIDTHS = ("all_head_size",)
_QUERIES = ("query", "q_proj", "q")


def _int_attribute(module: nn.Module, names: tuple[str, ...]) -> tuple[str, int] | None:
    for name in names:
        value = vars(module).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return name, value
    return None


def sync_head_attributes(model: nn.Module, pruned: nn.Module) -> None:
    """The head counts an attention module of the pruned copy keeps as attributes, set to the
    heads its query projection (a Linear child ``query`` / ``q_proj`` / ``q``) has now: BERT's
    ``num_attention_heads`` and ``all_head_size``, ViT's ``num_attention_heads``, where forward
    splits heads with -1 and never reads them (nothing in the graph records them). The head
    size must be unchanged. Apply's re-export check then confirms that forward computes what
    it did but for the sizes pruning changes."""
    originals = dict(model.named_modules())
    for name, module in pruned.named_modules():
        original = originals.get(name)
        count = _int_attribute(original, _HEAD_COUNTS) if original is not None else None
        size = _int_attribute(original, _HEAD_SIZES) if original is not None else None
        queries = [q for q in _QUERIES if isinstance(getattr(module, q, None), nn.Linear)]
        if original is None or count is None or size is None or len(queries) != 1 or size[1] <= 0:
            continue
        query, before = getattr(module, queries[0]), getattr(original, queries[0])
        width = count[1] * size[1]
        if not isinstance(before, nn.Linear) or before.out_features != width or vars(module).get(size[0]) != size[1]:
            continue
        now = query.out_features
        if now == width or now % size[1]:
            continue
        setattr(module, count[0], now // size[1])
        for attribute in _HEAD_WIDTHS:
            if vars(original).get(attribute) == width:
                setattr(module, attribute, now)


def _names_of(model: nn.Module, tensor: Tensor) -> list[str]:
    """Every FQN under which `model` holds `tensor` (tied names included)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, t in named if t is tensor]


def _record(recorded: dict[str, list[TensorOp]] | None, names: list[str], op: TensorOp) -> None:
    if recorded is not None:
        for name in names:
            recorded.setdefault(name, []).append(op)


def _fold_embed_scale(pruned: nn.Module, config: object, recorded: dict[str, list[TensorOp]] | None = None) -> None:
    """An embedding scaled by ``sqrt(hidden_size)`` at build time (Gemma's ``embed_scale``) gets
    the value the pruned config gives, its weight scaled by old / new: the output stays.

    A weight tied to the LM head (Gemma's ``tie_word_embeddings``) stays tied: the head's logits
    would be old / new times larger, so the decoder's final norm, whose output the head reads,
    is made to output new / old times as much (:func:`_scaled_norm_weight`). Where that norm is
    not found, nothing is folded (the copy stays right; saved, it would reload different)."""
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
        weight = module.weight
        sharing = [(m, k) for m in pruned.modules() for k, p in vars(m)["_parameters"].items() if p is weight]
        final_norm: tuple[nn.Module, nn.Parameter, Tensor, float] | None = None
        if len(sharing) > 1:  # tied: only to the LM head, whose input the final norm makes
            head, get_decoder = getattr(pruned, "get_output_embeddings", lambda: None)(), getattr(pruned, "get_decoder", None)
            norm = getattr(get_decoder(), "norm", None) if callable(get_decoder) else None
            rescaled = _scaled_norm_weight(norm, new / old) if isinstance(norm, nn.Module) else None
            if not (isinstance(head, nn.Linear) and {id(m) for m, _ in sharing} == {id(module), id(head)} and rescaled is not None):
                continue
            assert isinstance(norm, nn.Module) and isinstance(norm.weight, nn.Parameter) and rescaled is not None
            final_norm = norm, norm.weight, *rescaled
        _record(recorded, _names_of(pruned, weight), Scale(old / new))
        with torch.no_grad():
            folded = nn.Parameter(scaled(weight, old / new, None), requires_grad=weight.requires_grad)
        for owner, key in sharing:
            setattr(owner, key, folded)
        if final_norm is not None:
            norm, parameter, weights, offset = final_norm
            _record(recorded, _names_of(pruned, parameter), Scale(new / old, offset))
            norm.weight = nn.Parameter(weights, requires_grad=parameter.requires_grad)
        setattr(module, "scalar_embed_scale", new)
        buffer = getattr(module, "embed_scale", None)
        if isinstance(buffer, Tensor):
            _record(recorded, _names_of(pruned, buffer), Full(new))
            module.embed_scale = torch.full_like(buffer, new)


def _scaled_norm_weight(norm: nn.Module, factor: float) -> tuple[Tensor, float] | None:
    """The weight that makes the RMSNorm `norm` output `factor` times what it outputs, and the
    `c` it multiplies by ``c + weight`` with (0, or Gemma's 1), found by running it on ones
    with the weights 0 and 1; the weight is ``(c + weight) * factor - c``, checked on a random
    input. None for a norm that does not scale so."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or weight.is_meta:
        return None
    probe = torch.ones(2, weight.shape[0], dtype=weight.dtype, device=weight.device)
    check = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0), dtype=weight.dtype).to(weight.device)
    try:
        with torch.no_grad():
            zero, one = (functional_call(norm, {"weight": torch.full_like(weight, v)}, (probe,)) for v in (0.0, 1.0))
            offsets = zero / (one - zero)
            offset = float(offsets.flatten()[0])
            if not torch.isfinite(offsets).all() or not torch.allclose(offsets, torch.full_like(offsets, offset)):
                return None
            weights = scaled(weight, factor, offset)
            expected = norm(check) * factor
            got = functional_call(norm, {"weight": weights}, (check,))
    except Exception:  # noqa: BLE001 - a module that is not such a norm
        return None
    if not isinstance(got, Tensor) or not isinstance(expected, Tensor) or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        return None
    return weights.detach(), offset



def rebuild_added_biases(pruned: nn.Module, recorded: dict[str, list[TensorOp]] | None = None) -> tuple[str, ...]:
    """Make the pruned copy's config rebuild the biases bias compensation added (Llama's
    ``down_proj`` / ``o_proj`` built without one: ``mlp_bias`` / ``attention_bias`` False).

    Where the class built from the config lacks some of the copy's ``.bias`` tensors, each
    boolean config flag whose name ends in ``bias`` and is False is turned on alone (the class
    built on meta): the flags that build some of the missing biases are chosen, and if the
    class built with all of them has exactly the copy's shapes but for biases the copy lacks
    (the flag's other layers: ``gate_proj`` / ``up_proj``, ``q/k/v_proj``), those flags are set
    and those layers get biases of zeros (exact: they add nothing). Otherwise nothing changes,
    and :func:`fprune.hf.save_pretrained` refuses the copy. Returns the flags set; the zero
    biases are appended to `recorded` (by FQN) where given."""
    config = getattr(pruned, "config")
    built = built_shapes(pruned, config)
    have = shapes_of(pruned)
    if built is None:
        return ()
    missing = {k for k in have if k not in built}
    if not missing or any(not k.endswith(".bias") for k in missing):
        return ()
    chosen: list[str] = []
    for name, value in sorted(vars(config).items()):
        if not name.endswith("bias") or value is not False:
            continue
        trial = copy.deepcopy(config)
        setattr(trial, name, True)
        shapes = built_shapes(pruned, trial)
        if shapes is not None and missing & (shapes.keys() - built.keys()):
            chosen.append(name)
    if not chosen:
        return ()
    trial = copy.deepcopy(config)
    for name in chosen:
        setattr(trial, name, True)
    target = built_shapes(pruned, trial)
    if target is None or any(target.get(k) != shape for k, shape in have.items()):
        return ()
    zeros = {k: shape for k, shape in target.items() if k not in have}
    modules = dict(pruned.named_modules())
    for key in zeros:
        module = modules.get(key.rpartition(".")[0])
        if not key.endswith(".bias") or module is None or getattr(module, "bias", None) is not None:
            return ()
        if not isinstance(getattr(module, "weight", None), Tensor):
            return ()
    for name in chosen:
        setattr(config, name, True)
    for key, shape in zeros.items():
        module = modules[key.rpartition(".")[0]]
        weight = getattr(module, "weight")
        assert isinstance(weight, Tensor)
        zero = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        module.bias = nn.Parameter(zero, requires_grad=weight.requires_grad)
        _record(recorded, [key], Zeros(tuple(shape), f"{key.removesuffix('bias')}weight"))
    return tuple(chosen)
