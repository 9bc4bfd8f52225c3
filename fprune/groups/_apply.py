"""Physical pruning by channel groups: the kept indices of every tensor (checked against
ties), the sliced copy with its modules resized, and the masked parameters groups stand for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .._errors import PruneError
from .._util.checks import named_tensors, names_by_tensor
from .._util.copy import copy_module
from .._util.gather import take
from .._util.tensor_ops import Take, TensorOp, run_ops
from ._compensate import compensation_ops
from ._fold import fold_ops
from ..hf._config import is_hf_model, rebuild_added_biases, update_hf_config
from ._export import export_check
from ._heads import update_head_counts
from ._mha import HeadPrunedMultiheadAttention
from ._records import ChannelGroup
from ._rescale import rescaled_weights, update_norms
from ._slices import (
    channel_index,
    covers,
    producer_member,
    put_slice,
    take_slice,
    tensor_named,
)
from ._verify import check_pruned

if TYPE_CHECKING:
    from ..calibrate._statistics import Statistics

ModelT = TypeVar("ModelT", bound=nn.Module)


def group_keeps(groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[int, Tensor]:
    """Each masked group's keep vector over its channels (by index in `groups`), checked.

    A group is decided by the masks of its producers together: each mask decides the channels
    its weight's rows hold (all of them, or a concat branch's part), and masks that decide a
    channel twice must agree.
    """
    where: dict[str, int] = {}
    for index, group in enumerate(groups):
        for producer in group.producers:
            where[producer] = index
    partial: dict[int, tuple[Tensor, Tensor, list[str]]] = {}  # keep, decided, masks given
    for fqn, mask in masks.items():
        found = where.get(fqn)
        if found is None:
            roles = [(m.role, i) for i, g in enumerate(groups) for m in g.members if m.fqn == fqn]
            if roles:
                owners = sorted({p for _, i in roles for p in groups[i].producers})
                raise PruneError(
                    f"mask for `{fqn}`: it is not a producer of a group; key the mask by a producer "
                    f"weight of its group ({', '.join(owners) or 'the group has none'})"
                )
            raise PruneError(f"mask for `{fqn}`: no channel group has it as a producer")
        index = found
        group = groups[index]
        if not group.prunable:
            reasons = "; ".join(f"`{b.node}`: {b.reason}" for b in group.blockers) or "it has no producer"
            raise PruneError(f"mask for `{fqn}`: its channel group cannot be pruned: {reasons}")
        member = producer_member(group, fqn)
        values = take_slice(mask, member.positions)
        if index not in partial:
            partial[index] = (
                torch.ones(group.size, dtype=torch.bool, device=mask.device),
                torch.zeros(group.size, dtype=torch.bool, device=mask.device),
                [],
            )
        keep, known, given = partial[index]
        if not given and covers(member.channels, group.size):  # each channel once, in order
            keep.copy_(values)
            known.fill_(True)
        else:
            channels = channel_index(member.channels, mask.device)
            if bool((known[channels] & (keep[channels] != values)).any()):
                raise PruneError(
                    f"masks for `{fqn}` and `{given[0]}` disagree, but they prune one channel group; give one of them"
                )
            keep[channels] = values
            known[channels] = True
            if not bool((keep[channels] == values).all()):
                raise PruneError(f"mask for `{fqn}`: rows that are one channel of the group disagree")
        given.append(fqn)
    keeps: dict[int, Tensor] = {}
    for index, (keep, known, given) in partial.items():
        group = groups[index]
        named = ", ".join(f"`{g}`" for g in given)
        for unit in group.units:
            u = torch.tensor(unit, device=keep.device)
            unit_values = keep[u][known[u]]
            if unit_values.numel() and not bool((unit_values == unit_values[0]).all()):
                shown = ", ".join(map(str, unit[:8])) + (", ..." if len(unit) > 8 else "")
                raise PruneError(
                    f"mask for {named} removes part of a unit (an attention head, or one in-group position of a "
                    f"grouped conv): its {len(unit)} channels (group channels {shown}) are kept or removed only "
                    "together: keep or remove all rows of the unit"
                )
            if unit_values.numel():
                keep[u] = unit_values[0]
                known[u] = True
        if not bool(known.all()):
            others = [p for p in group.producers if p not in given]
            raise PruneError(
                f"mask for {named} does not decide every channel of its group (its rows hold only part of it, "
                f"e.g. one branch of a concat); add masks for other producers of the group: {', '.join(others)}"
            )
        if not bool(keep.any()):
            raise PruneError(f"mask for {named} removes every channel of its group; keep at least one")
        for literal in group.literals:  # a head count or a slice end (`x[:, :k]`) must stay positive
            if not bool(keep[torch.tensor(literal.heads, device=keep.device)].any()):
                raise PruneError(
                    f"mask for {named} removes every channel that the number {literal.value} at `{literal.node}` counts "
                    "(heads in a view, or the end of a slice such as x[:, :k]), which would leave none there; keep at least one of them"
                )
        for producer in group.producers:
            member = producer_member(group, producer)
            if not bool(take_slice(keep, member.channels).any()):
                raise PruneError(
                    f"mask for {named} removes every channel that `{producer}` produces (its part of the group, "
                    "e.g. one branch of a concat), which would leave a layer with no outputs; keep at least one of them"
                )
        keeps[index] = keep
    return keeps


def kept_indices(
    groups: Sequence[ChannelGroup], keeps: Mapping[int, Tensor], tensors: Mapping[str, Tensor]
) -> dict[str, dict[int, Tensor]]:
    """Per tensor FQN and dim, the indices the pruned tensor keeps (only where some go).

    Slices cut alike (a layer's rows, its bias and the next BatchNorm's four vectors) share
    one index tensor: on a small model the int64 indices would otherwise rival the pruned
    vectors they select."""
    cuts: dict[str, dict[int, list[tuple[int, Sequence[int], Sequence[int]]]]] = {}
    for index, keep in keeps.items():
        if bool(keep.all()):
            continue
        for member in groups[index].members:
            cuts.setdefault(member.fqn, {}).setdefault(member.dim, []).append((index, member.positions, member.channels))
    shared: dict[tuple[object, ...], Tensor] = {}
    kept: dict[str, dict[int, Tensor]] = {}
    for fqn, dims in cuts.items():
        tensor = tensor_named(tensors, fqn)
        for dim, parts in dims.items():
            key = (tensor.shape[dim], *((i, _hashable(p), _hashable(c)) for i, p, c in parts))
            found = shared.get(key)
            if found is None:
                vector = torch.ones(tensor.shape[dim], dtype=torch.bool, device=keeps[parts[0][0]].device)
                for i, positions, channels in parts:
                    put_slice(vector, positions, take_slice(keeps[i], channels))
                found = shared[key] = vector.nonzero().squeeze(1)
            kept.setdefault(fqn, {})[dim] = found
    return kept


def _hashable(index: Sequence[int]) -> object:
    return index if isinstance(index, (range, tuple)) else tuple(index)


def _check_ties(tensors: Mapping[str, Tensor], kept: Mapping[str, Mapping[int, Tensor]]) -> None:
    """PruneError unless every name of a tied tensor is sliced alike (channel_groups unites
    such names' channels, so this holds for its groups; groups from elsewhere may break it)."""
    names = names_by_tensor(tensors.items())
    for fqn, index in kept.items():
        for alias in names[id(tensors[fqn])]:
            other = kept.get(alias, {})
            if alias != fqn and (other.keys() != index.keys() or not all(torch.equal(other[d], index[d]) for d in index)):
                raise PruneError(
                    f"`{fqn}` and `{alias}` are one tensor (tied weights), but the masks slice them differently, "
                    "which would untie them; find the groups with channel_groups on this model, or untie them first"
                )


def _resize(module: nn.Module, tensors: Mapping[str, Tensor]) -> dict[str, object]:
    """New size attributes of a module of a known type, from its new tensors."""
    weight = tensors.get("weight")
    if isinstance(module, nn.Linear) and weight is not None:
        return {"in_features": weight.shape[1], "out_features": weight.shape[0]}
    if isinstance(module, _ConvNd) and weight is not None:
        if module.transposed:
            return {"in_channels": weight.shape[0], "out_channels": weight.shape[1] * module.groups}
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return {"in_channels": weight.shape[0], "out_channels": weight.shape[0], "groups": weight.shape[0]}
        return {"in_channels": weight.shape[1] * module.groups, "out_channels": weight.shape[0]}
    if isinstance(module, _BatchNorm):
        stat = tensors.get("running_mean", weight)
        return {"num_features": stat.shape[0]} if stat is not None else {}
    if isinstance(module, nn.PReLU) and weight is not None:
        return {"num_parameters": weight.shape[0]}
    if isinstance(module, nn.Embedding) and weight is not None:
        return {"embedding_dim": weight.shape[1]}
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:  # Hugging Face's (GPT-2): weight [nx, nf]
        return {"nx": weight.shape[0], "nf": weight.shape[1]}
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and weight is not None:  # norms over the channels (_norms.py)
        return {"normalized_shape": (weight.shape[0],)}
    if isinstance(module, nn.GroupNorm) and weight is not None:
        per_channel = module.num_groups == module.num_channels  # stays one channel per group
        return {"num_channels": weight.shape[0], **({"num_groups": weight.shape[0]} if per_channel else {})}
    if isinstance(module, _InstanceNorm) and weight is not None:
        return {"num_features": weight.shape[0]}
    if isinstance(module, nn.LSTM):
        sizes = set()
        for layer in range(module.num_layers):
            hh = tensors.get(f"weight_hh_l{layer}", getattr(module, f"weight_hh_l{layer}"))
            sizes.add(hh.shape[1])
        if len(sizes) > 1:
            raise PruneError(
                f"nn.LSTM has one hidden_size for all layers, but the masks keep {sorted(sizes)} units in its layers; "
                "keep the same number of units in every layer"
            )
        ih = tensors.get("weight_ih_l0", getattr(module, "weight_ih_l0"))
        return {"hidden_size": sizes.pop(), "input_size": ih.shape[1]}
    return {}


def _resize_attention(module: nn.MultiheadAttention) -> None:
    """A pruned nn.MultiheadAttention (of the copy) becomes a HeadPrunedMultiheadAttention."""
    rows = module.in_proj_weight
    assert rows is not None
    module.__class__ = HeadPrunedMultiheadAttention
    module.num_heads = rows.shape[0] // 3 // module.head_dim
    module.embed_dim = module.out_proj.out_features
    module.kdim = module.vdim = rows.shape[1]


def apply_groups(
    model: ModelT,
    groups: Sequence[ChannelGroup],
    masks: Mapping[str, Tensor],
    caller: str,
    compensate: Statistics | None = None,
    recorded: dict[str, list[TensorOp]] | None = None,
) -> ModelT:
    """The physically pruned copy for group masks (see :func:`fprune.apply_prune`); `caller`
    names the public function in error messages. With `compensate`, the removed channels'
    mean contributions go into their consumers' biases (:func:`compensation_ops`); biases a
    layer did not have are added to the copy's modules last, after the checks of its sizes.
    Where `recorded` is given, what is done to each tensor (by FQN, the copy's new tensors
    included) is appended to it as ops that :func:`~fprune._util.tensor_ops.run_ops` replays
    bit for bit on the model's tensors (``fprune.make_plan``)."""
    keeps = group_keeps(groups, masks)
    tensors = named_tensors(model)
    new_tensors: dict[str, Tensor] = {}
    kept = kept_indices(groups, keeps, tensors)
    _check_ties(tensors, kept)
    lookup = tensors.__getitem__
    if compensate is None:  # constants removed channels hold, into the next biases
        changes = fold_ops(groups, keeps, tensors, caller)
        created: frozenset[str] = frozenset()
    else:  # every consumer of a pruned group reads its removed channels' means, not a fold's constant
        changes, created = compensation_ops(model, groups, keeps, tensors, compensate)
    folded = {k: run_ops(tensors[k], v, lookup) for k, v in changes.items() if k not in created}
    added: dict[str, Tensor] = {}
    for fqn in sorted(created):  # a Linear's / conv's outputs: its weight's dim 0
        rows = kept.get(f"{fqn.removesuffix('bias')}weight", {}).get(0)
        ops = [*changes[fqn], *([Take(((0, tuple(rows.tolist())),))] if rows is not None else [])]
        added[fqn] = run_ops(None, ops, lookup)
        _record(recorded, fqn, ops)
    for fqn, steps in changes.items():
        if fqn not in created:
            _record(recorded, fqn, steps)
    with torch.no_grad():
        for fqn in list(kept):
            if recorded is not None:
                recorded.setdefault(fqn, []).append(Take(tuple((d, tuple(i.tolist())) for d, i in sorted(kept[fqn].items()))))
            new_tensors[fqn] = take(folded.pop(fqn, tensors[fqn]).detach(), kept.pop(fqn))  # indices go when done
    new_tensors.update(folded)  # folded biases of layers whose own channels all stay
    new_tensors, norms, scales = rescaled_weights(groups, new_tensors)  # exact RMSNorms: weight * sqrt(size / kept)
    for fqn, scale in scales.items():
        _record(recorded, fqn, [scale])
    memo: dict[int, object] = {}
    for fqn, value in new_tensors.items():
        old = tensors[fqn]
        memo[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    pruned = copy_module(model, memo)
    by_module: dict[str, dict[str, Tensor]] = {}
    for fqn, value in new_tensors.items():
        owner, _, name = fqn.rpartition(".")
        by_module.setdefault(owner, {})[name] = value
    resized: set[str] = set()  # modules whose size attributes come from their tensors: not searched for literals
    for owner, changed in by_module.items():
        module = pruned.get_submodule(owner) if owner else pruned
        for key, attribute in _resize(model.get_submodule(owner) if owner else model, changed).items():
            setattr(module, key, attribute)
            resized.add(owner)
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    for fqn, module in pruned.named_modules():
        if isinstance(module, nn.MultiheadAttention) and any(k == fqn or k.startswith(f"{fqn}.") for k in by_module):
            _resize_attention(module)
    updates = {
        (literal.node, literal.index): (literal, sum(bool(keeps[index][c]) for c in literal.heads) * literal.factor)
        for index in keeps
        for literal in groups[index].literals
    }
    updates = {key: value for key, value in updates.items() if value[1] != value[0].value}
    shapes = next((g.example_shapes for g in groups if g.example_shapes is not None), None)
    if is_hf_model(pruned):  # its config says the new sizes (forward may read them; save_pretrained writes them)
        moved = {r.eps: r.eps * r.size / kept for r, kept in norms.items() if r.eps is not None and kept != r.size}
        update_hf_config(model, pruned, moved, recorded)
    exported = any(g.graph == "export" for g in groups) and not isinstance(pruned, fx.GraphModule)
    if exported:
        # the numbers of an exported graph may come from attributes or from shapes: export the copy to see;
        # that export also runs the copy's forward on the example shapes, the safety net below
        eps = update_norms(pruned, norms, new_tensors, caller, check=False)
        sizes = {k: v[1] for k, v in updates.items()}
        original = next((g.exported for g in groups if g.exported is not None), None)
        check = export_check(model, pruned, shapes, {**sizes, **eps}, caller, original)
        update_head_counts(model, pruned, sizes, [v[0] for v in updates.values() if v[0].module not in resized], caller, verify=check)
    else:
        if updates:
            update_head_counts(model, pruned, {k: v[1] for k, v in updates.items()}, [v[0] for v in updates.values()], caller)
        update_norms(pruned, norms, new_tensors, caller)  # their eps * size / kept; F.layer_norm sizes in a GraphModule
    if shapes is not None and not exported:  # the safety net: the copy runs once on meta tensors of the example shapes

        cut = [index for index, keep in keeps.items() if not bool(keep.all())]
        if cut:
            check_pruned(caller, model, pruned, groups, cut, shapes)
    if added:
        _add_biases(pruned, added)
        if is_hf_model(pruned):  # a config flag (Llama's mlp_bias) that rebuilds them, where one does
            rebuild_added_biases(pruned, recorded)
    return pruned


def _record(recorded: dict[str, list[TensorOp]] | None, fqn: str, ops: Sequence[TensorOp]) -> None:
    if recorded is not None:
        recorded.setdefault(fqn, []).extend(ops)


def _add_biases(pruned: nn.Module, added: Mapping[str, Tensor]) -> None:
    """The new biases of bias compensation, as parameters of the copy's Linears / convs
    (``requires_grad`` like their weight's)."""
    for fqn, value in added.items():
        owner = fqn.rpartition(".")[0]
        module = pruned.get_submodule(owner) if owner else pruned
        weight = getattr(module, "weight")
        assert isinstance(weight, Tensor) and getattr(module, "bias", None) is None
        module.bias = nn.Parameter(value, requires_grad=weight.requires_grad)


def masked_group_parameters(model: nn.Module, groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every parameter, with the groups' removed producer rows and carrier entries zeroed."""
    keeps = group_keeps(groups, masks)
    params: dict[str, Tensor] = dict(model.named_parameters())
    for index, keep in keeps.items():
        for member in groups[index].members:
            if member.role == "consumer" or member.fqn not in params:
                continue
            tensor = params[member.fqn]
            factor = torch.ones(tensor.shape[member.dim], dtype=tensor.dtype, device=keep.device)
            put_slice(factor, member.positions, take_slice(keep, member.channels).to(tensor.dtype))
            shape = [1] * tensor.dim()
            shape[member.dim] = -1
            params[member.fqn] = tensor * factor.to(tensor.device).reshape(shape)
    return params
