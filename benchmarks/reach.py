"""Reach: how much of each vision family fprune prunes, beside Torch-Pruning (issue 13).

    python -m benchmarks.reach [--levels 0.3 0.5] [--zoo tests.zoo_vit ...] [--models vit ...]

Per model of the family zoos in ``tests/`` (``ZOOS``) and level: the fraction of parameters and
FLOPs that ``prune_channels(model, level, example_inputs=...)`` keeps (classifier outputs kept),
whether the copy equals the masked original (float64, ``masked_parameters``), the fraction of
parameters in prunable groups, what ``norms="renormalize"`` keeps (and how many of its groups are
not output-exact), the first blockers (as ``explain`` names them), and, if ``torch_pruning`` is
importable (``pip install --no-deps torch-pruning==1.6.1``), what its MagnitudePruner (L2, same
ratio per layer, classifier ignored) keeps, or how it fails (raises, or returns a copy that fails
on its first forward). Printed as a markdown table.
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
from fprune.groups import NormMode

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
    try:
        with torch.no_grad():
            model(x)
    except Exception as error:  # noqa: BLE001 - a copy that fails on its first forward
        return f"broken copy ({type(error).__name__})"
    return model


def _blockers(groups: tuple[fprune.ChannelGroup, ...]) -> str:
    reasons = Counter(g.blockers[0].reason.split(";")[0][:70] for g in groups if not g.prunable and not g.reaches_output)
    return "; ".join(f"{n}x {r}" for r, n in reasons.most_common(2)) or "none"


ZOOS = ("tests.vision_zoo", "tests.zoo_grouped", "tests.zoo_cnn_layout", "tests.zoo_convnext", "tests.zoo_vit", "tests.zoo_llama")
"""The families measured by default (issue 13)."""


def _pruned(model: nn.Module, x: Tensor, level: float, norms: NormMode) -> tuple[nn.Module, tuple[fprune.ChannelGroup, ...], bool]:
    """The copy pruned at `level`, its groups, and whether it equals the masked model."""
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,), norms=norms)
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        exact = torch.allclose(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)), rtol=1e-9, atol=1e-10)
    return pruned, groups, exact


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reach", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--zoo", nargs="+", default=list(ZOOS), help="modules whose ZOO dict (name -> builder) to measure")
    parser.add_argument("--models", nargs="*", default=None, help="only these names")
    args = parser.parse_args()
    chosen = {
        name: build
        for module in args.zoo
        for name, build in importlib.import_module(module).ZOO.items()
        if not args.models or name in args.models
    }
    print(
        "| model | level | params kept | FLOPs kept | exact | params in prunable groups | "
        'kept with norms="renormalize" | TP params kept | first blockers |'
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build in chosen.items():
        for level in args.levels:
            model, x = build()
            model, x = model.double(), (x.double() if x.is_floating_point() else x)
            pruned, groups, exact = _pruned(model, x, level, "block")
            in_groups = {m.fqn for g in groups if g.prunable for m in g.members}
            prunable_share = sum(p.numel() for n, p in model.named_parameters() if n in in_groups) / parameters(model)
            renormalized, norm_groups, _ = _pruned(model, x, level, "renormalize")
            inexact = sum(1 for g in norm_groups if g.prunable and not g.exact)
            norm_kept = f"{parameters(renormalized) / parameters(model):.3f}" + (f" ({inexact} inexact groups)" if inexact else "")
            model_tp, x_tp = build()
            theirs = _torch_pruning(model_tp, x_tp, level)  # a fresh model: Torch-Pruning prunes in place
            tp_kept = theirs if isinstance(theirs, str) else f"{parameters(theirs) / parameters(model):.3f}"
            print(
                f"| {name} | {level} | {parameters(pruned) / parameters(model):.3f} | {count_flops(pruned, x) / count_flops(model, x):.3f} | "
                f"{'yes' if exact else 'NO'} | {prunable_share:.2f} | {norm_kept} | {tp_kept} | {_blockers(groups)} |"
            )


if __name__ == "__main__":
    main()
