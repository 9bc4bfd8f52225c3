"""What ``apply_prune`` does for :class:`~fprune.groups.BiasFold`: removed channels that hold a
known constant where a layer reads them have their contribution added to that layer's bias."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._errors import PruneError
from .._util.tensor_ops import Fold, TensorOp
from ._records import ChannelGroup
from ._slices import removed_positions


def fold_ops(
    groups: Sequence[ChannelGroup],
    keeps: Mapping[int, Tensor],
    tensors: Mapping[str, Tensor],
    caller: str,
) -> dict[str, list[TensorOp]]:
    """What makes the new (unsliced) bias of every layer that a pruned group's folds name, as
    :class:`~fprune._util.tensor_ops.Fold` ops per bias, in the order they add: the bias plus,
    for each fold, ``value`` times the sum of the weight's removed columns over every dim but
    the output rows (dim 0; dim 1 of HF's Conv1D): a Linear's removed inputs, a conv's removed
    inputs over its kernel. The masked model computes exactly that from the removed channels,
    which hold ``value`` at every position the layer reads."""
    new: dict[str, list[TensorOp]] = {}
    done: dict[int, str] = {}
    with torch.no_grad():
        for index, keep in keeps.items():
            if bool(keep.all()):
                continue
            group = groups[index]
            for fold in group.folds:
                weight, bias = tensors.get(fold.weight), tensors.get(fold.bias)
                if weight is None or bias is None:
                    raise PruneError(
                        f"{caller}: `{fold.weight}` or `{fold.bias}`, which a constant folds into, is not in the model"
                    )
                key = id(weight)
                if done.setdefault(key, fold.weight) != fold.weight:
                    raise PruneError(
                        f"{caller}: `{fold.weight}` and `{done[key]}` are one tensor (tied weights) that a constant folds into "
                        "twice; untie them first"
                    )
                readers = [m for m in group.members if m.role == "consumer" and m.fqn == fold.weight and m.dim == fold.dim]
                removed = removed_positions(weight.shape[fold.dim], keep, readers)
                rows = 1 if fold.dim == 0 else 0  # the output dim: 0, but 1 in a Conv1D (a transposed Linear)
                indices = tuple(removed.nonzero().squeeze(1).tolist())
                new.setdefault(fold.bias, []).append(Fold(fold.weight, fold.dim, indices, float(fold.value), rows))
    return new
