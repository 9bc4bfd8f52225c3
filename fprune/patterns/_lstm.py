"""The LSTM chains: an LSTM's hidden units, pruned from its gates' rows and its consumer's
columns (the last layer's output feeding a Linear, optionally through a LayerNorm)."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._errors import PruneError, prefixed
from ._functions import (
    UnfoldableConstant,
    check_mask,
    expect_ops,
    param_of,
    rebuild_module,
    take_dim,
)
from ._records import Call, Op


def _lstm_unit_masks(lstm: nn.LSTM, keep: Mapping[str, Tensor]) -> list[Tensor]:
    hidden = lstm.hidden_size
    allowed = {f"weight_{kind}_l{layer}" for layer in range(lstm.num_layers) for kind in ("ih", "hh")}
    unknown = sorted(set(keep) - allowed)
    if unknown:
        raise PruneError(f"an nn.LSTM producer takes keep-masks named weight_ih_l*/weight_hh_l*, got {unknown}")
    units: list[Tensor] = []
    for layer in range(lstm.num_layers):
        found: list[tuple[str, Tensor]] = [
            (name, keep[name]) for name in (f"weight_ih_l{layer}", f"weight_hh_l{layer}") if name in keep
        ]
        unit: Tensor | None = None
        for name, mask in found:
            check_mask(mask, 4 * hidden, f"LSTM {name}")
            gates = mask.reshape(4, hidden)
            if not bool((gates == gates[0]).all()):
                raise PruneError(
                    f"keep-mask for LSTM {name} differs between its 4 gates; a hidden unit must be "
                    "kept or removed in all gates at once (use fprune.lstm_saliency_mask)"
                )
            if unit is not None and not torch.equal(unit, gates[0]):
                raise PruneError(
                    f"keep-masks for LSTM weight_ih_l{layer} and weight_hh_l{layer} keep different "
                    "hidden units; give one of them, or the same mask for both"
                )
            unit = gates[0]
        device = getattr(lstm, "weight_ih_l0").device
        units.append(unit if unit is not None else torch.ones(hidden, dtype=torch.bool, device=device))
    counts = {int(u.sum()) for u in units}
    if len(counts) > 1:
        raise PruneError(
            "nn.LSTM has one hidden_size for all layers: the keep-masks of its layers must keep "
            f"the same number of units, got {[int(u.sum()) for u in units]}"
        )
    return units


def prune_lstm_output_layernorm_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.LSTM, getitem, nn.LayerNorm, nn.Linear)``: remove hidden units; pure.

    Each layer's units are removed in all 4 gates (rows of ``weight_ih``/``weight_hh`` and the
    biases), the columns of the next layer's ``weight_ih`` (or of the Linear) and the matching
    ``weight_hh`` columns; the LayerNorm's affine entries and ``normalized_shape`` shrink too.
    Note: a LayerNorm then normalizes over the kept units only, so this pattern (unlike all
    others) does not reproduce the masked model's outputs exactly.
    """
    try:
        expect_ops(ops, (nn.LSTM, Call, nn.LayerNorm, nn.Linear), "prune_lstm_output_layernorm_linear")
        return _prune_lstm(ops, keep, prune_bias)
    except PruneError as error:
        raise prefixed("prune_lstm_output_layernorm_linear", error) from None


def prune_lstm_output_linear(ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool) -> tuple[nn.Module | None, ...]:
    """``(nn.LSTM, getitem, nn.Linear)``: remove hidden units of every layer; pure.

    Output-preserving: a removed unit's gates see zero weights and bias, so its state stays 0.
    """
    try:
        expect_ops(ops, (nn.LSTM, Call, nn.Linear), "prune_lstm_output_linear")
        return _prune_lstm(ops, keep, prune_bias)
    except PruneError as error:
        raise prefixed("prune_lstm_output_linear", error) from None


def _prune_lstm(ops: Sequence[Op], keep: Mapping[str, Tensor], prune_bias: bool) -> tuple[nn.Module | None, ...]:
    lstm, getitem, linear = ops[0], ops[1], ops[-1]
    assert isinstance(lstm, nn.LSTM) and isinstance(getitem, Call) and isinstance(linear, nn.Linear)
    if getitem.target is not operator.getitem or getitem.args != (0,):
        raise PruneError(f"an LSTM chain must take the LSTM's output (getitem 0), got {getitem.name}{getitem.args}")
    if lstm.bidirectional or lstm.proj_size:
        raise PruneError("bidirectional LSTMs and LSTMs with proj_size are not supported yet")
    units = _lstm_unit_masks(lstm, keep)
    kept = int(units[0].sum())
    tensors: dict[str, Tensor] = {}
    for layer, unit in enumerate(units):
        rows = unit.repeat(4)
        w_ih = getattr(lstm, f"weight_ih_l{layer}")
        w_ih = take_dim(w_ih, rows, 0)
        if layer:
            w_ih = take_dim(w_ih, units[layer - 1], 1)
        tensors[f"weight_ih_l{layer}"] = w_ih
        tensors[f"weight_hh_l{layer}"] = take_dim(take_dim(getattr(lstm, f"weight_hh_l{layer}"), rows, 0), unit, 1)
        if lstm.bias:
            for kind in ("ih", "hh"):
                bias = getattr(lstm, f"bias_{kind}_l{layer}")
                if not prune_bias and bool((bias.detach()[~rows] != 0).any()):
                    raise UnfoldableConstant(
                        f"LSTM bias_{kind}_l{layer} is non-zero on removed units: with prune_bias=False "
                        "their state keeps changing over time, which no bias can reproduce; use "
                        "prune_bias=True",
                        "LSTM biases kept on removed units",
                    )
                tensors[f"bias_{kind}_l{layer}"] = take_dim(bias, rows, 0)
    new_lstm = rebuild_module(lstm, tensors, hidden_size=kept)
    new_lstm._init_flat_weights()
    last = units[-1]
    if linear.in_features != lstm.hidden_size:
        raise PruneError(f"Linear after the LSTM has in_features={linear.in_features}, expected {lstm.hidden_size}")
    out: list[nn.Module | None] = [new_lstm, None]
    if len(ops) == 4:
        norm = ops[2]
        assert isinstance(norm, nn.LayerNorm)
        if tuple(norm.normalized_shape) != (lstm.hidden_size,):
            raise PruneError(
                f"LayerNorm normalized_shape={tuple(norm.normalized_shape)} must be "
                f"({lstm.hidden_size},) to follow the LSTM's hidden units"
            )
        norm_tensors = {n: take_dim(t, last, 0) for n in ("weight", "bias") if (t := param_of(norm, n)) is not None}
        out.append(rebuild_module(norm, norm_tensors, normalized_shape=(kept,)))
    out.append(rebuild_module(linear, {"weight": take_dim(linear.weight, last, 1)}, in_features=kept))
    return tuple(out)
