"""What the calibration tests share: running a batch, the layers' inputs seen by forward hooks
(the reference the statistics are checked against), batches, tiny HF Llamas and their loss."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fprune.calibrate import Batch


def run(model: nn.Module, batch: Batch) -> object:
    """`model` on one batch, as collect_statistics calls it."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch)


def layer_inputs(model: nn.Module, modules: Sequence[str], batches: Sequence[Batch]) -> dict[str, Tensor]:
    """Per module name, every input row it saw (``[positions, channels]``, float64), from
    forward pre-hooks registered on a copy of `model`: a conv's channels are dim 1 of a
    batched input, 0 of an unbatched one, anything else's the last dim."""
    model = copy.deepcopy(model)
    rows: dict[str, list[Tensor]] = {name: [] for name in modules}

    def hook(name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def see(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0]
            assert isinstance(x, Tensor)
            if isinstance(module, nn.modules.conv._ConvNd):
                dim = 1 if x.dim() == module.weight.dim() else 0
            else:
                dim = x.dim() - 1
            rows[name].append(x.detach().movedim(dim, -1).reshape(-1, x.shape[dim]).to(torch.float64))

        return see

    for name in modules:
        model.get_submodule(name).register_forward_pre_hook(hook(name))
    with torch.no_grad():
        for batch in batches:
            run(model, batch)
    return {name: torch.cat(r) for name, r in rows.items()}


def float_batches() -> list[Batch]:
    """Two float64 batches of 6 features, one of them 3-D."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(2, 3, 6, generator=g, dtype=torch.float64)]


def token_ids(seed: int, shape: tuple[int, int] = (2, 7)) -> Tensor:
    """Token ids below 64."""
    return torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(seed))


def llama(tie: bool = False, layers: int = 2) -> nn.Module:
    """A tiny HF Llama in float64, eval mode (vocabulary 64, hidden 32, 4 heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    model = LlamaForCausalLM(config).double()
    nn.Module.eval(model)
    return model


def next_token_loss(output: object, batch: Batch) -> Tensor:
    """Cross-entropy of each next token, for a batch ``{"input_ids": ids, ...}``."""
    logits = getattr(output, "logits")
    assert isinstance(logits, Tensor) and isinstance(batch, Mapping)
    tokens = batch["input_ids"]
    assert isinstance(tokens, Tensor)
    loss: Tensor = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return loss
