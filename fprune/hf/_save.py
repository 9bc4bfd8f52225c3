"""Saving a pruned Hugging Face model: only a model its config rebuilds."""

from __future__ import annotations

import os

from torch import nn

from .._errors import PruneError
from ._config import PER_LAYER_WIDTHS, built_shapes, config_problems, is_hf_model, shapes_of


def save_pretrained(model: nn.Module, path: str | os.PathLike[str], **kwargs: object) -> None:
    """``model.save_pretrained(path, **kwargs)``, after checking that ``from_pretrained`` will
    rebuild it: its class, built from its ``config``, must have exactly its shapes.

    ``apply_prune`` sets the pruned copy's config to the sizes it was pruned to; where one
    config value cannot hold them (layers pruned to different widths where the config holds one
    width for all, or a size the model derives from others, as BERT's head size
    ``hidden_size // num_attention_heads``), saving would lose them, and this refuses. A config
    with one entry per layer (Gemma3n's ``intermediate_size`` list) holds per-layer widths.

    Biases that bias compensation (``apply_prune(..., compensate=)``) added to layers built
    without one are rebuilt where a config flag turns them on (``mlp_bias``, ``attention_bias``:
    apply sets it); any other such bias is refused too.

    Raises:
        PruneError: `model` is not a ``transformers.PreTrainedModel``, or its config does not
            rebuild it (the message names the config field that cannot hold per-layer widths,
            the tensors that would reload with other shapes, or the added biases it would drop).
    """
    if not is_hf_model(model):
        raise PruneError(f"save_pretrained: expects a transformers PreTrainedModel, got {type(model).__name__}")
    config = getattr(model, "config")
    built = built_shapes(model, config)
    have = shapes_of(model)
    if built is None:
        raise PruneError(f"save_pretrained: {type(model).__name__} cannot be built from its own config; it would not reload")
    wrong = [k for k in sorted(set(built) | set(have)) if built.get(k) != have.get(k)]
    added = [k for k in wrong if k not in built and k.endswith(".bias")]
    if added:
        shown = ", ".join(f"`{k}`" for k in added[:4])
        raise PruneError(
            f"save_pretrained: this {type(model).__name__} has {len(added)} bias tensor(s) its config does not build "
            f"({shown}{', ...' if len(added) > 4 else ''}): bias compensation (apply_prune(..., compensate=...)) "
            "added them to layers built without a bias, and no flag of the config rebuilds them, so "
            "from_pretrained would drop them. Prune without `compensate`, or "
            "save its weights with safetensors and its plan (fprune.make_plan, or fprune.plan.plan_channels for prune_channels), and reload it with fprune.load_pruned"
        )
    if wrong:
        shown = ", ".join(f"`{k}` {have.get(k)} would reload as {built.get(k)}" for k in wrong[:4])
        tensors = f"{len(wrong)} tensors: {shown}{', ...' if len(wrong) > 4 else ''}"
        problems = config_problems(model)
        widths = {name: why for name, why in problems.items() if why.startswith(PER_LAYER_WIDTHS)}
        if widths:
            held = ", ".join(f"`{name}` = {getattr(config, name, None)!r}" for name in widths)
            raise PruneError(
                f"save_pretrained: {'; '.join(widths.values())}. Saved, its config would lose the per-layer widths: "
                f"from_pretrained would build every layer with {held} and could not load the pruned weights "
                f"({tensors}). Only a config with one entry per layer (Gemma3n's `intermediate_size` list) holds "
                "them; prune every layer alike (group_masks without global_ranking keeps the same fraction of "
                "each), or save its weights with safetensors and its plan (fprune.make_plan, or fprune.plan.plan_channels for prune_channels), and reload it with fprune.load_pruned"
            )
        raise PruneError(
            f"save_pretrained: the config of this {type(model).__name__} does not describe its pruned shapes "
            f"({tensors}): saved, it would reload different. "
            "Its layers were pruned to different widths (prune every layer alike: group_masks without "
            "global_ranking keeps the same fraction of each), or to a size the class derives from others "
            "(BERT / ViT / GPT-2 derive the head size from hidden_size // num_attention_heads); for such a model, "
            "save its weights with safetensors and its plan (fprune.make_plan, or fprune.plan.plan_channels for prune_channels), and reload it with fprune.load_pruned"
        )
    getattr(model, "save_pretrained")(path, **kwargs)
