"""What ``apply_prune(..., compensate=statistics)`` adds to the biases: bias compensation as in
FLAP (An et al. 2024). Each pruned group's removed channels are replaced, where a layer reads
them, by their mean input over the calibration batches, a constant that the layer's bias takes:
``bias[o] += sum over removed c of mean[c] * sum over the kernel of W[o, c, ...]``."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.conv import _ConvNd

from .._errors import PruneError
from .._util.checks import names_by_tensor
from .._util.tensor_ops import Compensate, MeanTerm, TensorOp, Zeros
from ._records import ChannelGroup, ChannelSlice
from ._slices import removed_positions, tensor_named

if TYPE_CHECKING:
    from ..calibrate._statistics import Statistics


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's transposed Linear: weight
    [in, out]); transformers is never imported here: a model holding one has imported it."""
    utils = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(utils, "Conv1D", None) if utils is not None else None
    return isinstance(cls, type) and isinstance(module, cls)


def _zero_padded(conv: _ConvNd) -> bool:
    """Whether the conv pads its input with zeros somewhere (it then sees zeros at its borders,
    not the mean). Reflect / replicate / circular padding repeats the input's own values, which
    on a constant channel are that constant."""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding != "valid" and any(d * (k - 1) > 0 for k, d in zip(conv.kernel_size, conv.dilation))
    return any(p != 0 for p in conv.padding)


def _layer(model: nn.Module, member: ChannelSlice) -> tuple[nn.Module, int]:
    """The module whose ``weight`` the consumer member is, and the weight dim of its outputs;
    a PruneError where its bias cannot take a constant input exactly."""
    owner, _, name = member.fqn.rpartition(".")
    try:
        module = model.get_submodule(owner) if owner else model
    except AttributeError:
        module = None
    what = type(module).__name__ if module is not None else "a tensor outside any module"
    if module is None or name != "weight":
        where = f"`{member.fqn}` ({what})"
    else:
        where = f"`{owner}` ({what})"
    escape = (
        "prune without `compensate`, or leave this group out of the masks (group_masks(..., ignore=[...]) with one of "
        "its tensors)"
    )
    if module is not None and name == "weight":
        if isinstance(module, nn.Linear) and member.dim == 1:
            return module, 0
        if _is_hf_conv1d(module) and member.dim == 0:
            return module, 1
        if isinstance(module, _CONVS) and member.dim == 1:
            if module.groups != 1:
                raise PruneError(
                    f"compensate: {where} is a grouped conv (groups={module.groups}), whose bias compensation fprune "
                    f"does not do; {escape}"
                )
            if _zero_padded(module):
                raise PruneError(
                    f"compensate: {where} pads its input with zeros (padding={module.padding}), so at its borders it "
                    f"reads zeros, not the removed channels' means, and no bias makes up for them exactly; {escape}"
                )
            return module, 0
    raise PruneError(
        f"compensate: {where} reads removed channels (dim {member.dim}), but only a Linear, a Hugging Face Conv1D or "
        f"a Conv1d / Conv2d / Conv3d with groups=1 takes their means into its bias; {escape}"
    )


def compensation_ops(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    keeps: Mapping[int, Tensor],
    tensors: Mapping[str, Tensor],
    statistics: Statistics,
) -> tuple[dict[str, list[TensorOp]], frozenset[str]]:
    """What makes the new bias of every layer that reads a pruned group's removed channels (a
    consumer member), as ops (:class:`~fprune._util.tensor_ops.Compensate`, after a
    :class:`~fprune._util.tensor_ops.Zeros` for a bias the layer lacks), and the FQNs of the new
    biases. The ops add the removed channels' mean contribution: ``bias[o] + sum over removed c of mean[c] *
    W[o, c, ...]`` summed over the kernel (HF Conv1D: ``W[c, o]``), computed in float64 from
    ``statistics.inputs[weight FQN].mean()``, then cast to the bias's dtype. A layer without a
    bias gets a new one of zeros plus the contribution (in `created`). Nothing is changed in
    place.

    With the removed channels replaced by their means where each consumer reads them, the
    original model computes what the pruned copy with these biases computes.

    Raises:
        PruneError: a consumer of a pruned group that is not a Linear, HF Conv1D or conv
            with groups=1 and no zero padding; one without statistics, or whose statistics
            count other channels than its weight reads; a weight or bias that is one tensor
            under two names (tied) and would take two compensations.
    """
    terms: dict[str, list[MeanTerm]] = {}
    created: set[str] = set()
    layers: dict[str, tuple[nn.Module, int]] = {}
    with torch.no_grad():
        for index, keep in keeps.items():
            if bool(keep.all()):
                continue
            group = groups[index]
            for member in group.members:
                if member.role != "consumer":
                    continue
                removed = removed_positions(tensor_named(tensors, member.fqn).shape[member.dim], keep, [member])
                if not bool(removed.any()):
                    continue
                if member.fqn not in layers:
                    layers[member.fqn] = _layer(model, member)
                module, rows = layers[member.fqn]
                weight = tensor_named(tensors, member.fqn)
                moments = statistics.inputs.get(member.fqn)
                if moments is None:
                    raise PruneError(
                        f"compensate: the statistics have no inputs of `{member.fqn}`, which reads channels the masks "
                        "remove; run collect_statistics with these groups over batches that reach it"
                    )
                mean = moments.mean()
                if mean.shape != (weight.shape[member.dim],):
                    raise PruneError(
                        f"compensate: the statistics of `{member.fqn}` count {tuple(mean.shape)} input channels, but the "
                        f"weight reads {weight.shape[member.dim]} (dim {member.dim}); collect the statistics on this "
                        "model, with these groups"
                    )
                at = removed.nonzero().squeeze(1)
                means = mean.to(dtype=torch.float64, device="cpu")[at.cpu()]
                owner = member.fqn.rpartition(".")[0]
                bias = f"{owner}.bias" if owner else "bias"
                if getattr(module, "bias", None) is None:
                    _check_called(model, owner)
                    created.add(bias)
                term = MeanTerm(member.fqn, member.dim, tuple(at.tolist()), tuple(means.tolist()), rows)
                terms.setdefault(bias, []).append(term)
    _check_ties(tensors, layers, terms)
    ops: dict[str, list[TensorOp]] = {}
    for bias, parts in terms.items():
        if bias in created:
            layer = bias.removesuffix("bias") + "weight"
            size = tensor_named(tensors, layer).shape[parts[0].rows]
            ops[bias] = [Zeros((size,), layer), Compensate(tuple(parts), replace=True)]
        else:
            ops[bias] = [Compensate(tuple(parts), replace=False)]
    return ops, frozenset(created)


def _check_called(model: nn.Module, owner: str) -> None:
    """PruneError where `model` is a GraphModule whose graph does not call the module `owner`
    (it reads its weight as an attribute): a bias added to the module would not be read."""
    if not isinstance(model, fx.GraphModule):
        return
    if not any(node.op == "call_module" and node.target == owner for node in model.graph.nodes):
        raise PruneError(
            f"compensate: the graph of this GraphModule does not call `{owner}` as a module (it reads its weight "
            "directly), so a bias added to it would not be used; prune the original model, or prune without `compensate`"
        )


def _check_ties(tensors: Mapping[str, Tensor], layers: Mapping[str, tuple[nn.Module, int]], totals: Mapping[str, object]) -> None:
    """PruneError where two compensated layers share a weight or a bias (one tensor, two names):
    each name would take its own compensation, which would untie them."""
    names = names_by_tensor(tensors.items())
    for kind, fqns in (("weight", layers), ("bias", [b for b in totals if b in tensors])):
        seen: dict[int, str] = {}
        for fqn in fqns:
            first = seen.setdefault(id(tensors[fqn]), fqn)
            if first != fqn:
                raise PruneError(
                    f"compensate: `{fqn}` and `{first}` are one {kind} (tied) of two layers that take the removed "
                    f"channels' means into their biases; untie them first (aliases: {', '.join(names[id(tensors[fqn])])})"
                )
