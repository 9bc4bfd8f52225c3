"""How a strictly typed user subclasses and drives fprune.sparsifier.

`mypy --strict` checks this file with no ignores; tests/sparsifier/test_sparsifier.py runs it.
"""

from __future__ import annotations

from typing import Any, assert_type

import torch
from torch import Tensor, nn

import fprune
from fprune.sparsifier import (
    BaseStructuredSparsifier,
    FPGMPruner,
    SaliencyPruner,
    masked_weight_and_mask,
    sparsity_level,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


class TorchAOStylePruner(BaseStructuredSparsifier):
    """torch.ao's README pruner with the annotations --strict asks for: `**kwargs: Any`."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        weights = getattr(module, tensor_name)
        mask = getattr(module.parametrizations, tensor_name)[0].mask
        saliency = -weights.norm(dim=tuple(range(1, weights.dim())), p=1)
        num_to_pick = int(len(mask) * kwargs["sparsity_level"])
        prune = saliency.topk(num_to_pick).indices
        mask.data[prune] = False


class NarrowingPruner(BaseStructuredSparsifier):
    """`**kwargs: object` as the base declares it, narrowed: no Any anywhere."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        weight, mask = masked_weight_and_mask(module, tensor_name)
        assert_type(weight, Tensor)
        level = kwargs.get("sparsity_level")
        if not isinstance(level, float):
            level = sparsity_level(kwargs)  # raises PruneError naming the tensor if it is missing
        mask &= fprune.saliency_mask(weight, level, p=2.0)


def run() -> tuple[nn.Module, nn.Module, nn.Module]:
    """Each pruner through the whole workflow; returns the three pruned models."""
    torch.manual_seed(0)
    config: list[dict[str, object]] = [{"tensor_fqn": "fc1.weight"}, {"tensor_fqn": "fc2.weight", "prune_bias": False}]

    ao_style = TorchAOStylePruner({"sparsity_level": 0.5}, patterns=fprune.default_patterns())
    ao_style.prepare(Net(), config)
    ao_style.enable_mask_update = True
    ao_style.step()
    assert_type(ao_style.state, dict[str, dict[str, Tensor]])
    assert_type(ao_style.groups, list[dict[str, object]])
    assert_type(ao_style.model, nn.Module)

    narrowing = NarrowingPruner({"sparsity_level": 0.25})
    narrowing.prepare(Net(), None)
    narrowing.step()

    fpgm = FPGMPruner(0.5, dist=lambda rows: torch.cdist(rows, rows, p=1.0))
    fpgm.prepare(Net(), [{"tensor_fqn": "fc2.weight"}])
    fpgm.step()

    builtin: BaseStructuredSparsifier = SaliencyPruner({"sparsity_level": 0.5})
    try:
        builtin.prune()
    except fprune.PruneError as error:
        assert_type(error, fprune.PruneError)

    pruned = ao_style.prune()
    assert_type(pruned, nn.Module)
    return pruned, narrowing.prune(), fpgm.prune()
