"""Calibration statistics: what the calibration-aware criteria read, gathered by running the
model over a few batches (:func:`collect_statistics`), as a frozen record (:class:`Statistics`)
that can be saved and reused (:meth:`Statistics.save`, :meth:`Statistics.load`).

The model is never changed: no hook is registered on it. The layers' inputs are seen through a
``TorchFunctionMode`` that is active only while the batches run; a model in train mode runs
through ``torch.func.functional_call`` over copies of its buffers (what a train-mode BatchNorm
updates), and for the Taylor terms over detached views of its parameters, whose gradients are
returned by ``torch.autograd.grad`` (``.grad`` is never written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._errors import PruneError
from ..groups._records import ChannelGroup

Batch = Union[Tensor, Sequence[object], Mapping[str, object]]
"""One calibration batch: a tensor (``model(batch)``), a tuple / list of positional inputs
(``model(*batch)``) or a mapping of keyword inputs (``model(**batch)``)."""

Loss = Callable[[object, Batch], Tensor]
"""``loss(output, batch)``: the scalar loss of one batch, for the first-order Taylor terms."""


@dataclass(frozen=True)
class Moments:
    """Running sums over every input position a layer saw (every token, every pixel), per
    input channel, in float64: ``count`` positions, ``total`` = sum of x, ``squares`` = sum of
    x squared."""

    count: int
    total: Tensor
    squares: Tensor

    def mean(self) -> Tensor:
        """The mean input of each channel."""
        return self.total / max(self.count, 1)

    def variance(self) -> Tensor:
        """The unbiased variance of each channel's input over all positions (FLAP's fluctuation)."""
        if self.count < 2:
            return torch.zeros_like(self.total)
        return ((self.squares - self.total * self.total / self.count) / (self.count - 1)).clamp_min(0)

    def norm(self) -> Tensor:
        """The L2 norm of each channel's input over all positions (Wanda's ``||X_j||``)."""
        return self.squares.sqrt()

    def rms(self) -> Tensor:
        """The root mean square of each channel's input (an activation magnitude)."""
        return (self.squares / max(self.count, 1)).sqrt()


_FORMAT = "fprune.Statistics/1"
"""The ``format`` metadata of the files :meth:`Statistics.save` writes."""


@dataclass(frozen=True)
class Statistics:
    """What :func:`collect_statistics` saw.

    Attributes:
        inputs: per layer weight FQN (``"model.layers.0.mlp.down_proj.weight"``), the
            :class:`Moments` of that layer's input channels (a Linear's in-features, a conv's
            input channels, a HF Conv1D's rows), over all batches and all calls.
        first_order: per (parameter FQN, dim), the sum over the batches of
            ``parameter * grad`` summed over every other dim: the first-order Taylor term of
            each slice (empty unless a loss was given); a tied weight under every name.
        batches: how many batches were run (on all ranks together).
    """

    inputs: Mapping[str, Moments]
    first_order: Mapping[tuple[str, int], Tensor] = field(default_factory=dict)
    batches: int = 0

    def save(self, path: str | Path) -> None:
        """Write the statistics to a safetensors file (no pickle)."""
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        for fqn, moments in self.inputs.items():
            tensors[f"inputs/{fqn}/total"] = moments.total.contiguous()
            tensors[f"inputs/{fqn}/squares"] = moments.squares.contiguous()
            tensors[f"inputs/{fqn}/count"] = torch.tensor([moments.count], dtype=torch.int64)
        for (fqn, dim), value in self.first_order.items():
            tensors[f"first_order/{fqn}/{dim}"] = value.contiguous()
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}  # none shares memory
        save_file(tensors, str(path), metadata={"batches": str(self.batches), "format": _FORMAT})

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        """Statistics written by :meth:`save` (on the CPU).

        Raises:
            PruneError: the file is not one :meth:`save` wrote.
        """
        from safetensors import SafetensorError, safe_open

        inputs: dict[str, dict[str, Tensor]] = {}
        first_order: dict[tuple[str, int], Tensor] = {}
        try:
            opened = safe_open(str(path), framework="pt")
        except SafetensorError as error:
            raise PruneError(f"Statistics.load: {path} is not a safetensors file written by Statistics.save ({error})") from None
        with opened as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise PruneError(f"Statistics.load: {path} is not a file written by Statistics.save")
            for key in file.keys():
                kind, _, rest = key.partition("/")
                fqn, _, last = rest.rpartition("/")
                if kind == "inputs":
                    inputs.setdefault(fqn, {})[last] = file.get_tensor(key)
                else:
                    first_order[(fqn, int(last))] = file.get_tensor(key)
        moments = {fqn: Moments(int(v["count"].item()), v["total"], v["squares"]) for fqn, v in inputs.items()}
        return cls(moments, first_order, int(metadata.get("batches", "0")))


class _Layer(NamedTuple):
    """Where a layer call holds its input and weight: (position, keyword) of each; `conv`: the
    channels are dim 1 of a batched input (dim 0 of an unbatched one), else the last dim."""

    input: tuple[int, str]
    weight: tuple[int, str]
    conv: bool


_LAYERS: dict[object, _Layer] = {
    F.linear: _Layer((0, "input"), (1, "weight"), False),
    F.conv1d: _Layer((0, "input"), (1, "weight"), True),
    F.conv2d: _Layer((0, "input"), (1, "weight"), True),
    F.conv3d: _Layer((0, "input"), (1, "weight"), True),
    torch.addmm: _Layer((1, "mat1"), (2, "mat2"), False),  # HF Conv1D: addmm(bias, x, weight[in, out])
}
"""The layer calls whose input channels are counted."""


def _argument(args: Sequence[object], kwargs: Mapping[str, object], where: tuple[int, str]) -> object:
    return args[where[0]] if len(args) > where[0] else kwargs.get(where[1])


class _Sums:
    """Mutable float64 accumulators, private to one :func:`collect_statistics` call."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64, device=device)
        self.squares = torch.zeros(channels, dtype=torch.float64, device=device)


class _SeeInputs(TorchFunctionMode):
    """Adds each named layer's input to its sums, while active."""

    def __init__(self, names: Mapping[int, Sequence[str]], sums: dict[str, _Sums]) -> None:
        super().__init__()
        self.names = names
        self.sums = sums

    def __torch_function__(
        self, func: Callable[..., object], types: object, args: Sequence[object] = (), kwargs: Mapping[str, object] | None = None
    ) -> object:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)  # first: a call the layer refuses raises the model's own error
        layer = _LAYERS.get(func)
        if layer is not None:
            x, weight = _argument(args, kwargs, layer.input), _argument(args, kwargs, layer.weight)
            if isinstance(x, Tensor) and isinstance(weight, Tensor) and x.dim() >= 1:
                dim = x.dim() - weight.dim() + 1 if layer.conv else -1  # a conv weight: [out, in, *kernel]
                for fqn in self.names.get(id(weight), ()):  # every name of a tied weight
                    self._add(fqn, x, dim)
        return result

    def _add(self, fqn: str, x: Tensor, dim: int) -> None:
        with torch.no_grad():
            rows = x.detach().movedim(dim, -1)
            rows = rows.reshape(-1, rows.shape[-1]).to(torch.float64)
            sums = self.sums.get(fqn)
            if sums is None:
                sums = self.sums[fqn] = _Sums(rows.shape[1], rows.device)
            elif sums.total.shape[0] != rows.shape[1]:
                raise PruneError(
                    f"collect_statistics: `{fqn}` was called on inputs with {sums.total.shape[0]} and with "
                    f"{rows.shape[1]} channels; fprune cannot count one layer's input channels twice over"
                )
            sums.count += rows.shape[0]
            sums.total += rows.sum(0)
            sums.squares += (rows * rows).sum(0)


def _members(model: nn.Module, groups: Sequence[ChannelGroup] | None, min_dim: int) -> dict[str, Tensor]:
    """The parameters of at least `min_dim` dims that are group members (every parameter without
    groups), under every name of each (a tied weight has several)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    if groups is not None:
        wanted = {id(named[m.fqn]) for g in groups for m in g.members if m.fqn in named}
        named = {fqn: p for fqn, p in named.items() if id(p) in wanted}
    return {fqn: named[fqn] for fqn in sorted(named) if named[fqn].dim() >= min_dim}


def _aliases(tensors: Mapping[str, Tensor]) -> dict[int, list[str]]:
    """The names of each tensor, by id."""
    names: dict[int, list[str]] = {}
    for fqn, tensor in tensors.items():
        names.setdefault(id(tensor), []).append(fqn)
    return names


def _split(batch: Batch) -> tuple[tuple[object, ...], dict[str, object]]:
    """A batch as forward's (args, kwargs)."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    raise PruneError(
        f"collect_statistics: a batch must be a tensor, a tuple / list of inputs or a mapping of keyword inputs, "
        f"got {type(batch).__name__}"
    )


def _progress(batches: Iterable[Batch], progress: bool | None) -> Iterable[Batch]:
    """`batches` with a tqdm bar: on a terminal where `progress` is None, always if True, never if False."""
    if progress is False:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="fprune: calibrating", unit="batch", leave=False, disable=None if progress is None else False)


def collect_statistics(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    groups: Sequence[ChannelGroup] | None = None,
    loss: Loss | None = None,
    progress: bool | None = None,
) -> Statistics:
    """Run `model` over `batches` and return what the calibration criteria need.

    Args:
        model: any nn.Module (a Hugging Face model too); left exactly as it was (no hook,
            no ``.grad``, its buffers as they were: a train-mode BatchNorm updates copies of
            them), in its train / eval mode as it is: call ``model.eval()`` first to
            calibrate without dropout or batch statistics.
        batches: an iterable of :data:`Batch`; each is run once, without gradients unless
            `loss` is given.
        groups: the channel groups the statistics are for (from :func:`fprune.channel_groups`):
            only their members' layers are counted; None counts every Linear / conv / HF Conv1D
            weight.
        loss: ``loss(output, batch) -> scalar``; when given, the first-order Taylor terms
            (``first_order``) of every parameter that is a group member (biases and norm
            weights too; every parameter without groups) are gathered too, from the gradients
            of the loss taken with respect to detached views of the parameters.
        progress: a tqdm progress bar over the batches: None (default) shows it on a terminal
            only, True always, False never.

    When ``torch.distributed`` is initialised, the sums are all-reduced over the default
    process group, so every rank returns the statistics of all ranks' batches.

    Raises:
        PruneError: a batch of another type; no layer was called with a counted weight (the
            model does not use the groups' layers, or `groups` come from another model; or
            there were no batches); `loss` did not return a scalar tensor that depends on the
            parameters; with torch.distributed, the ranks saw different layers.
    """
    if not isinstance(model, nn.Module):
        raise PruneError(f"collect_statistics: expects an nn.Module, got {type(model).__name__}")
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise PruneError(
            f"collect_statistics: `batches` must be an iterable of batches (a list, a DataLoader, a generator), got "
            f"{type(batches).__name__}; wrap a single batch in a list"
        )
    names = _aliases(_members(model, groups, 2))  # the weights whose inputs are counted
    parameters = _members(model, groups, 1) if loss is not None else {}  # those with Taylor terms
    aliases = _aliases(parameters)
    dims = _taylor_dims(parameters, aliases, groups)
    training = any(m.training for m in model.modules())  # then a BatchNorm updates its buffers: copies of them
    buffers = {fqn: b.detach().clone() for fqn, b in model.named_buffers()} if training else {}
    sums: dict[str, _Sums] = {}
    first_order: dict[tuple[str, int], Tensor] = {}
    count = 0
    for batch in _progress(batches, progress):
        if loss is None:
            with torch.no_grad(), _SeeInputs(names, sums):
                args, kwargs = _split(batch)
                if buffers:
                    torch.func.functional_call(model, buffers, args, kwargs, strict=False)
                else:
                    model(*args, **kwargs)
        else:  # one detached view per tensor (functional_call ties its other names to it)
            views = [(parameters[fqns[0]].detach().requires_grad_(True), fqns) for fqns in aliases.values()]
            seen = {id(view): names[id(parameters[fqns[0]])] for view, fqns in views if id(parameters[fqns[0]]) in names}
            with torch.enable_grad(), _SeeInputs(seen, sums):
                args, kwargs = _split(batch)
                replaced = {**buffers, **{fqns[0]: view for view, fqns in views}}
                output = torch.func.functional_call(model, replaced, args, kwargs, strict=False)
                value = loss(output, batch)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise PruneError(
                    f"collect_statistics: `loss(output, batch)` must return a scalar tensor, got "
                    f"{f'shape {list(value.shape)}' if isinstance(value, Tensor) else type(value).__name__}"
                )
            if not value.requires_grad:
                raise PruneError("collect_statistics: `loss(output, batch)` does not depend on the model's parameters (no gradient)")
            grads: Sequence[Tensor | None] = torch.autograd.grad(value, [view for view, _ in views], allow_unused=True)
            with torch.no_grad():
                for (view, fqns), grad in zip(views, grads):
                    if grad is None:
                        continue
                    product = view.detach().to(torch.float64) * grad.to(torch.float64)
                    for fqn in fqns:
                        for dim in dims.get(fqn, ()):
                            other = [d for d in range(product.dim()) if d != dim]
                            term = product.sum(other) if other else product.clone()  # sum([]) would sum all
                            key = (fqn, dim)
                            first_order[key] = first_order[key] + term if key in first_order else term
        count += 1
    moments = {fqn: Moments(s.count, s.total, s.squares) for fqn, s in sums.items()}
    moments, first_order, count = _all_reduced(moments, first_order, count)
    if not moments:
        raise PruneError(
            "collect_statistics: no layer of the groups was called while the batches ran (or there were no batches); "
            "pass batches the model's forward takes, and groups found in this model"
        )
    return Statistics(moments, first_order, count)


def _taylor_dims(
    parameters: Mapping[str, Tensor], aliases: Mapping[int, Sequence[str]], groups: Sequence[ChannelGroup] | None
) -> dict[str, tuple[int, ...]]:
    """The dims whose slices get first-order terms, under every name of a tensor: its group
    members' dims, or without groups dims 0 and 1 (0 of a 1-D parameter)."""
    if groups is None:
        return {fqn: tuple(range(min(2, p.dim()))) for fqn, p in parameters.items()}
    by_id: dict[int, set[int]] = {}
    for group in groups:
        for member in group.members:
            if member.fqn in parameters:
                by_id.setdefault(id(parameters[member.fqn]), set()).add(member.dim)
    return {fqn: tuple(sorted(d)) for i, d in by_id.items() for fqn in aliases[i]}


def _all_reduced(
    moments: dict[str, Moments], first_order: dict[tuple[str, int], Tensor], count: int
) -> tuple[dict[str, Moments], dict[tuple[str, int], Tensor], int]:
    """The sums of all ranks, when torch.distributed is initialised (else as given)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return moments, first_order, count
    keys = (sorted(moments), sorted(first_order))
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, keys)
    if any(other != keys for other in gathered):
        raise PruneError(
            "collect_statistics: the ranks saw different layers (or different Taylor terms); every rank must run "
            "the same model on batches that reach the same layers"
        )
    device = next((m.total.device for m in moments.values()), torch.device("cpu"))
    counts = torch.tensor([count] + [moments[k].count for k in keys[0]], dtype=torch.float64, device=device)
    sums = [t for k in keys[0] for t in (moments[k].total, moments[k].squares)] + [first_order[k] for k in keys[1]]
    flat = [counts] + [t.clone() for t in sums]  # reduced in place: never twice through a shared tensor
    for tensor in flat:
        dist.all_reduce(tensor)
    reduced_counts = [int(round(c)) for c in counts.tolist()]
    pairs = iter(flat[1 : 1 + 2 * len(keys[0])])
    new_moments = {k: Moments(reduced_counts[1 + i], next(pairs), next(pairs)) for i, k in enumerate(keys[0])}
    return new_moments, {k: flat[1 + 2 * len(keys[0]) + i] for i, k in enumerate(keys[1])}, reduced_counts[0]

