"""The reference model and the demo that ``python -m fprune`` runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._apply import apply_prune, masked_parameters
from ._masks import saliency_mask
from .patterns._defaults import default_patterns
from .patterns._match import match_patterns


class ReferenceMLP(nn.Module):
    """The 700-500-800-600-4 MLP of torch.ao's pruning README (1,233,500 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(700, 500, bias=True),
            nn.ReLU(),
            nn.Linear(500, 800, bias=False),
            nn.ReLU(),
            nn.Linear(800, 600, bias=True),
            nn.ReLU(),
        )
        self.linear = nn.Linear(600, 4, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.linear(self.seq(x))
        return out


def parameter_table(model: nn.Module) -> str:
    """One line per parameter (FQN, shape, count) and the total, as text."""
    lines = [f"{'parameter':<16}{'shape':<14}{'count':>10}"]
    total = 0
    for fqn, param in model.named_parameters():
        total += param.numel()
        lines.append(f"{fqn:<16}{'x'.join(map(str, param.shape)):<14}{param.numel():>10}")
    lines.append(f"{'total':<30}{total:>10}")
    return "\n".join(lines)


def run_demo(level: float = 0.5, seed: int = 0) -> str:
    """Prune the reference MLP at `level` and report tables and the equivalence check."""
    torch.manual_seed(seed)
    model = ReferenceMLP()
    gm = torch.fx.symbolic_trace(model)
    masks = {fqn: saliency_mask(w, level) for fqn, w in model.named_parameters() if fqn.endswith("weight")}
    matches = match_patterns(gm, default_patterns())
    pruned = apply_prune(model, masks, matches)

    x = torch.randn(16, 700)
    with torch.no_grad():
        expected = functional_call(model, masked_parameters(model, masks, matches), (x,))
        got = pruned(x)
    kept = expected[:, masks["linear.weight"]]
    error = float((kept - got).abs().max())
    verdict = "matches" if torch.allclose(kept, got, rtol=1e-5, atol=1e-6) else "DOES NOT match"
    return "\n".join(
        [
            f"fprune demo: saliency_mask at level {level} on every weight of the reference MLP",
            "",
            "before:",
            parameter_table(model),
            "",
            "after:",
            parameter_table(pruned),
            "",
            f"pruned copy {verdict} the masked original on random input (max abs error {error:.2e})",
        ]
    )
