"""The exactness check of the Hugging Face tests: a tiny random float64 model pruned through
its torch.export graph, compared with the masked model, its config round-tripped through
``save_pretrained`` / ``from_pretrained``, the original untouched."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from transformers import PretrainedConfig

import fprune
from fprune.groups import ChannelGroup


ModelT = TypeVar("ModelT", bound=nn.Module)


def tiny(model: ModelT) -> ModelT:
    """`model` in float64, in eval mode."""
    model = model.double()
    nn.Module.eval(model)
    return model


def config(model: nn.Module) -> PretrainedConfig:
    """The model's transformers config."""
    found = getattr(model, "config")
    assert isinstance(found, PretrainedConfig)
    return found


def logits(output: object) -> Tensor:
    """The main tensor of a transformers output (logits, or the last hidden state)."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    assert isinstance(output, Tensor), type(output)
    return output


def exported_groups(model: nn.Module, inputs: tuple[object, ...], kwargs: Mapping[str, object], norms: fprune.groups.NormMode = "block") -> tuple[ChannelGroup, ...]:
    program = torch.export.export(model, inputs, kwargs=dict(kwargs), strict=False)
    return fprune.channel_groups(program, norms=norms)


def prune_hf_exactly(
    model: ModelT,
    inputs: tuple[object, ...],
    kwargs: Mapping[str, object],
    level: float,
    *,
    tolerance: float = 1e-10,
    norms: fprune.groups.NormMode = "block",
) -> tuple[ModelT, tuple[ChannelGroup, ...], dict[str, Tensor]]:
    """`model` (float64, eval) pruned at `level` through its exported graph; checks that the copy
    computes what the masked model computes (within `tolerance`: HF RMSNorms compute in float32,
    so those models need about 1e-6) and that `model` is unchanged."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = config(model).to_dict()
    groups = exported_groups(model, inputs, kwargs, norms)
    masks = fprune.group_masks(model, groups, level)
    assert masks, fprune.explain(groups)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = logits(functional_call(model, fprune.masked_parameters(model, masks, groups), inputs, dict(kwargs)))
        got = logits(pruned(*inputs, **kwargs))
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original changed"
    assert config(model).to_dict() == config_before, "the original's config changed"
    return pruned, groups, masks


def round_trip(pruned: nn.Module, inputs: tuple[object, ...], kwargs: Mapping[str, object]) -> nn.Module:
    """`pruned` saved with ``fprune.hf.save_pretrained`` and loaded back with its class's
    ``from_pretrained``: the reloaded model must hold bit-identical tensors under the same names
    and compute exactly what `pruned` computes.

    ``from_pretrained`` may leave its tensors where it read them, at addresses that are not
    64-byte aligned, and the CPU matmul kernels then round the last bit differently (4e-16);
    the outputs are compared with the reloaded tensors copied to fresh memory, as the weights
    were already compared bit for bit."""
    with tempfile.TemporaryDirectory() as path:
        fprune.hf.save_pretrained(pruned, path)
        reloaded = type(pruned).from_pretrained(path, dtype=torch.float64).eval()  # type: ignore[attr-defined]
    assert isinstance(reloaded, nn.Module)
    mine, theirs = pruned.state_dict(), reloaded.state_dict()
    assert set(mine) == set(theirs), set(mine) ^ set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), [k for k in mine if not torch.equal(mine[k], theirs[k])]
    with torch.no_grad():
        for tensor in [*reloaded.parameters(), *reloaded.buffers()]:
            tensor.data = tensor.data.clone()  # aligned memory: the same kernels as `pruned`'s
        torch.testing.assert_close(logits(reloaded(*inputs, **kwargs)), logits(pruned(*inputs, **kwargs)), rtol=0, atol=0)
    return reloaded

