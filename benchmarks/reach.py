"""Reach: how much of each vision family fprune prunes, beside Torch-Pruning (issue 13).

    python -m benchmarks.reach [--levels 0.3 0.5]

Per model of ``tests/vision_zoo.py`` and level: the fraction of parameters and FLOPs that
``prune_channels(model, level, example_inputs=...)`` keeps (classifier outputs kept), whether the
copy equals the masked original (float64, ``masked_parameters``), the fraction of parameters in
prunable groups, the first blockers (as ``explain`` names them), and, if ``torch_pruning`` is
importable (``pip install --no-deps torch-pruning==1.6.1``), what its MagnitudePruner (L2, same
ratio per layer, classifier ignored) keeps. Printed as markdown tables.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from tests.vision_zoo import VISION_ZOO

from .cases import parameters
from .latency import count_flops


def _classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _torch_pruning(model: nn.Module, x: Tensor, level: float) -> nn.Module | str:
    try:
        tp: Any = importlib.import_module("torch_pruning")  # untyped
    except ImportError:
        return "not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MagnitudePruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=level, ignored_layers=[_classifier(model)]
            )
            pruner.step()
    except Exception as error:  # noqa: BLE001 - reported in the table
        return f"fails ({type(error).__name__})"
    return model


def _blockers(groups: tuple[fprune.ChannelGroup, ...]) -> str:
    reasons = Counter(g.blockers[0].reason.split(";")[0][:70] for g in groups if not g.prunable and not g.reaches_output)
    return "; ".join(f"{n}x {r}" for r, n in reasons.most_common(2)) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reach", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5])
    args = parser.parse_args()
    print("| model | level | fprune params kept | fprune FLOPs kept | exact | params in prunable groups | TP params kept | first blockers |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build in VISION_ZOO.items():
        for level in args.levels:
            model, x = build()
            model, x = model.double(), x.double()
            groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
            masks = fprune.group_masks(model, groups, level)
            pruned = fprune.apply_prune(model, masks, groups)
            with torch.no_grad():
                exact = torch.allclose(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)), rtol=1e-9, atol=1e-10)
            in_groups = {m.fqn for g in groups if g.prunable for m in g.members}
            prunable_share = sum(p.numel() for n, p in model.named_parameters() if n in in_groups) / parameters(model)
            theirs = _torch_pruning(*build(), level)  # a fresh model: Torch-Pruning prunes in place
            tp_kept = theirs if isinstance(theirs, str) else f"{parameters(theirs) / parameters(model):.3f}"
            print(
                f"| {name} | {level} | {parameters(pruned) / parameters(model):.3f} | {count_flops(pruned, x) / count_flops(model, x):.3f} | "
                f"{'yes' if exact else 'NO'} | {prunable_share:.2f} | {tp_kept} | {_blockers(groups)} |"
            )


if __name__ == "__main__":
    main()
