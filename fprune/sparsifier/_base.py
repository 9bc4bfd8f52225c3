"""torch.ao's ``prepare`` / ``step`` / ``prune`` workflow as a thin, stateful facade over the core.

The facade holds what is stateful: the prepared model, its masks (``FakeStructuredSparsity``
parametrizations, as in torch.ao) and the config groups. Everything else is the functional core:
``masked_parameters`` decides at ``prepare`` which tensors each mask zeroes (so the masked model
*is* fprune's masked model), and ``prune`` runs ``match_patterns`` + ``apply_prune`` on an
unparametrized view of the prepared model, returning a new model and leaving the prepared one as
it was.
"""

from __future__ import annotations

import abc
import copy
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from .._apply import describe_unshrunk, masked_parameters_for, prune_reporting_unshrunk
from .._errors import PruneError, prefixed
from .._util.checks import parametrized_module, trace
from .._util.copy import copy_module
from ..patterns._defaults import default_patterns
from ..patterns._match import match_patterns
from ..patterns._records import Match, Pattern, PruneFunction

# config=None prunes every child of exactly these types, as torch.ao does
_DEFAULT_CONFIG_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.LSTM)
# filled in by prepare() from `tensor_fqn`; a config entry may give them only if they agree
_DERIVED_KEYS = ("module", "module_fqn", "tensor_name", "tensor_fqn")
_UNSUPPORTED_KEYS = {
    "mask": "prepare() attaches an all-True mask; set entries after prepare through "
    "`pruner.state[tensor_fqn]['mask']`",
    "parametrization": "prepare() always attaches fprune.sparsifier.FakeStructuredSparsity",
}


def _mask_rows(mask: Tensor, x: Tensor, what: str) -> Tensor:
    """`x` with the rows (dim 0) where `mask` is False zeroed; a new tensor."""
    if mask.shape[0] != x.shape[0]:
        raise PruneError(f"{what}: the mask has {mask.shape[0]} entries, expected {x.shape[0]} (the tensor's dim 0)")
    return mask.reshape((-1,) + (1,) * (x.dim() - 1)) * x


class FakeStructuredSparsity(nn.Module):
    """The parametrization ``prepare`` attaches to each configured tensor: ``mask`` rows times `x`.

    As in torch.ao, ``getattr(module.parametrizations, tensor_name)[0]`` is this module, and an
    ``update_mask`` removes rows by setting entries of ``mask`` to False in place.

    Attributes:
        mask: 1-D ``torch.bool`` buffer over the tensor's dim 0 (True = row kept), all True
            after ``prepare``. It is the same tensor object as ``sparsifier.state[fqn]["mask"]``,
            and the tensors pruned along with those rows (the bias, a following BatchNorm's
            affine entries, ...) are masked by it too. Unlike torch.ao's, it is saved in the
            model's ``state_dict``.
    """

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            got = f"dtype {mask.dtype}, shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise PruneError(f"FakeStructuredSparsity: `mask` must be a 1-D torch.bool tensor (True = keep the row), got {got}")
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        """`x` with the rows where ``mask`` is False zeroed: a new tensor; `x` is unchanged."""
        return _mask_rows(self.mask, x, "FakeStructuredSparsity")


class _FollowMask(nn.Module):
    """Masks a tensor pruned along with another tensor's rows, by that tensor's mask.

    It reads the mask of `source` at every call (no copy, so ``model.to(device)`` and in-place
    updates are always seen). With `units`, the tensor has one entry per LSTM hidden unit (a
    LayerNorm after the LSTM) and takes the unit mask from the first gate of the packed mask,
    as ``fprune.masked_parameters`` does.
    """

    def __init__(self, source: FakeStructuredSparsity, units: bool) -> None:
        super().__init__()
        self._source = (source,)  # a tuple: not registered as a submodule, not in state_dict
        self.units = units

    @property
    def mask(self) -> Tensor:
        """The keep-mask over this tensor's dim 0, derived from the source's mask."""
        mask = self._source[0].mask
        return mask.reshape(4, -1)[0] if self.units else mask

    def forward(self, x: Tensor) -> Tensor:
        return _mask_rows(self.mask, x, "FakeStructuredSparsity: a tensor masked with its producer's rows")


@dataclass(frozen=True)
class _Entry:
    """One configured tensor, as prepare() resolved it.

    Attributes:
        tensor_fqn: the tensor's FQN, e.g. ``"seq.0.weight"``.
        module: the module holding it.
        tensor_name: its name in `module`.
        rows: the tensor's dim 0, the mask's length.
        prune_bias: the config's ``prune_bias`` (default True).
        parametrization: the FakeStructuredSparsity holding its mask.
    """

    tensor_fqn: str
    module: nn.Module
    tensor_name: str
    rows: int
    prune_bias: bool
    parametrization: FakeStructuredSparsity


@dataclass(frozen=True)
class _Prepared:
    """Everything prepare() set up, replaced as a whole.

    Attributes:
        model: the prepared model (parametrized in place).
        entries: the configured tensors, in config order.
        layouts: the parameter order of every module prepare() parametrized, by module FQN,
            so that views and squashed modules list their parameters as the original did.
        parametrized: every (module FQN, tensor name) prepare() parametrized.
    """

    model: nn.Module
    entries: tuple[_Entry, ...]
    layouts: Mapping[str, tuple[str, ...]]
    parametrized: tuple[tuple[str, str], ...]


class BaseStructuredSparsifier(abc.ABC):
    """torch.ao's structured-pruning workflow (``prepare`` / ``step`` / ``prune``) over fprune.

    Subclass it and implement :meth:`update_mask`, as with
    ``torch.ao.pruning._experimental.pruner.BaseStructuredSparsifier``::

        pruner = MyPruner({"sparsity_level": 0.5}, patterns=fprune.default_patterns())
        pruner.prepare(model, [{"tensor_fqn": "seq.0.weight"}])   # attaches the masks
        pruner.step()                                             # update_mask per tensor
        pruned = pruner.prune()                                   # a new, smaller model

    Args:
        defaults: config keys for every entry that lacks them (e.g. ``{"prune_bias": True}``).
        patterns: the pattern dict handed to :func:`fprune.match_patterns`; None means
            :func:`fprune.default_patterns`. Kept by reference, as torch.ao does.

    Attributes:
        defaults: a copy of `defaults`.
        patterns: the patterns ``prune`` matches.
        state: ``state[tensor_fqn]["mask"]`` is the mask buffer of the tensor's
            FakeStructuredSparsity (the same tensor object); subclasses may store more per tensor.
        groups: one dict per config entry, in config order: the defaults, the entry's keys,
            and ``module``, ``module_fqn``, ``tensor_name``, ``tensor_fqn``. ``step`` reads them
            at every call, so a scheduler may change e.g. ``sparsity_level`` between steps.
        enable_mask_update: while False, ``step`` does nothing (True at first).
    """

    def __init__(
        self, defaults: Mapping[str, object] | None = None, patterns: Mapping[Pattern, PruneFunction] | None = None
    ) -> None:
        if defaults is not None and not isinstance(defaults, Mapping):
            raise PruneError(f"{type(self).__name__}: `defaults` must be a dict of config keys, got {type(defaults).__name__}")
        self.defaults: dict[str, object] = dict(defaults or {})
        self.patterns: Mapping[Pattern, PruneFunction] = default_patterns() if patterns is None else patterns
        self.state: dict[str, dict[str, Tensor]] = {}
        self.groups: list[dict[str, object]] = []
        self.enable_mask_update = True
        self._prepared: _Prepared | None = None
        self._squashed = False

    # ------------------------------------------------------------------------------------------
    # the user's part
    # ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: object) -> None:
        """Set entries of the tensor's mask to False (in place); called by :meth:`step`.

        The mask is ``getattr(module.parametrizations, tensor_name)[0].mask`` and the masked
        tensor is ``getattr(module, tensor_name)``. `kwargs` holds the group's other keys:
        ``tensor_fqn``, ``module_fqn`` and every config key (``sparsity_level``,
        ``prune_bias``, ...).

        Typing: the config's values can be anything, so `kwargs` is declared ``object``. An
        override may declare ``**kwargs: Any`` (torch.ao's own style: values are used
        unchecked) or ``**kwargs: object`` and narrow with ``isinstance``; both type check
        under ``mypy --strict``. An override that names a key as its own parameter
        (``sparsity_level: float``) does not, since a config can hold any value.
        """

    # ------------------------------------------------------------------------------------------
    # the workflow
    # ------------------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The model given to :meth:`prepare`, parametrized in place. Raises PruneError before."""
        return self._require_prepared("model").model

    def prepare(self, model: nn.Module, config: Sequence[Mapping[str, object]] | None) -> None:
        """Attach an all-True mask to every configured tensor of `model`, **in place**.

        Args:
            model: an ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace, without
                parametrizations.
            config: one dict per tensor; ``tensor_fqn`` (e.g. ``"seq.0.weight"``) is required,
                every other key reaches :meth:`update_mask` (``defaults`` fill in missing
                ones), and ``prune_bias`` (default True) also says whether pruned rows take
                their bias with them. None means one entry per child module of exact type
                Linear / Conv2d (its ``weight``) or LSTM (``weight_ih_l*`` and
                ``weight_hh_l*`` of every layer), in torch.ao's order.

        Each tensor gets a :class:`FakeStructuredSparsity`. The tensors that pruning its rows
        also removes are masked by the same mask: with ``prune_bias``, the bias and the
        affine entries of a BatchNorm (or an LSTM chain's LayerNorm) on those channels; for
        an LSTM, the layer's other packed weight and biases. These are exactly the tensors
        :func:`fprune.masked_parameters` zeroes, so the prepared model computes what
        :meth:`prune`'s result computes. Parameters keep their identity (an optimizer
        built before ``prepare`` still trains them).

        Raises:
            PruneError, before `model` is changed: a config entry without ``tensor_fqn``, an
                FQN that names no parameter, a tensor with fewer than 2 dims, a tensor no
                pattern prunes (the message says why, e.g. "feeds a residual add"), an
                untraceable or already parametrized model, or a second ``prepare``.
        """
        if self._prepared is not None:
            raise PruneError(
                "prepare(): already called on this sparsifier; create a new sparsifier for another model "
                "(or call squash_mask() and prepare a fresh one)"
            )
        if not isinstance(model, nn.Module):
            raise PruneError(f"prepare(): expects an nn.Module, got {type(model).__name__}")
        already = parametrized_module(model)
        if already is not None:
            raise PruneError(
                f"prepare(): module `{already}` already carries parametrizations; "
                "remove them first (is the model prepared by another sparsifier?)"
            )
        if config is None:
            config = _default_config(model)
        if isinstance(config, (str, Mapping)) or not isinstance(config, Sequence):
            raise PruneError(
                f"prepare(): `config` must be a list of dicts such as [{{'tensor_fqn': 'seq.0.weight'}}], "
                f"got {type(config).__name__}"
            )
        groups = [self._group(model, index, entry) for index, entry in enumerate(config)]
        fqns = [str(group["tensor_fqn"]) for group in groups]
        twice = sorted({fqn for fqn in fqns if fqns.count(fqn) > 1})
        if twice:
            raise PruneError(f"prepare(): `{twice[0]}` appears in more than one config entry; give each tensor once")
        prune_bias = {fqn: bool(group.get("prune_bias", True)) for fqn, group in zip(fqns, groups)}
        matches = _matches(trace(model, "prepare()"), self.patterns, "prepare()")
        zeroed = _zeroed_tensors(model, matches, prune_bias)
        params = dict(model.named_parameters(remove_duplicate=False))  # before parametrizations hide them

        layouts: dict[str, tuple[str, ...]] = {}
        parametrized: list[tuple[str, str]] = []

        def register(tensor_fqn: str, parametrization: nn.Module) -> None:
            module_fqn, _, name = tensor_fqn.rpartition(".")
            module = model.get_submodule(module_fqn)
            layouts.setdefault(module_fqn, tuple(module._parameters))
            parametrize.register_parametrization(module, name, parametrization)
            if (module_fqn, name) not in parametrized:
                parametrized.append((module_fqn, name))

        entries: list[_Entry] = []
        for fqn, group in zip(fqns, groups):  # every configured tensor's own mask comes first: [0]
            weight = params[fqn]
            mask = FakeStructuredSparsity(torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device))
            register(fqn, mask)
            module = model.get_submodule(fqn.rpartition(".")[0])
            entries.append(_Entry(fqn, module, fqn.rpartition(".")[2], weight.shape[0], prune_bias[fqn], mask))
            self.state.setdefault(fqn, {})["mask"] = mask.mask
        for entry in entries:
            lstm = isinstance(entry.module, nn.LSTM)
            for other in zeroed[entry.tensor_fqn]:
                units = lstm and params[other].shape[0] * 4 == entry.rows
                register(other, _FollowMask(entry.parametrization, units))
        self.groups = groups
        self._prepared = _Prepared(model, tuple(entries), layouts, tuple(parametrized))

    def step(self) -> None:
        """Call :meth:`update_mask` for every group, under ``torch.no_grad()``.

        Does nothing while ``enable_mask_update`` is False. Each call gets ``module`` and
        ``tensor_name`` and, as keywords, the group's other keys (read from ``self.groups``
        at this call). Raises PruneError before :meth:`prepare`, after :meth:`squash_mask`,
        when an ``update_mask`` raises one (the message then names the tensor) or leaves a
        mask that is not a 1-D bool tensor of the tensor's row count.
        """
        prepared = self._require_prepared("step()")
        if self._squashed:
            raise PruneError("step(): called after squash_mask(): the masks are no longer attached to the model")
        if not self.enable_mask_update:
            return
        with torch.no_grad():
            for entry, group in zip(prepared.entries, self.groups):
                self.state.setdefault(entry.tensor_fqn, {})["mask"] = entry.parametrization.mask
                kwargs = {key: value for key, value in group.items() if key not in ("module", "tensor_name")}
                try:
                    self.update_mask(module=entry.module, tensor_name=entry.tensor_name, **kwargs)
                except PruneError as error:
                    raise PruneError(f"step(): update_mask for `{entry.tensor_fqn}`: {error}") from None
                mask = entry.parametrization.mask
                self.state[entry.tensor_fqn]["mask"] = mask
                if mask.dtype != torch.bool or tuple(mask.shape) != (entry.rows,):
                    raise PruneError(
                        f"step(): update_mask left the mask of `{entry.tensor_fqn}` with dtype {mask.dtype} and "
                        f"shape {tuple(mask.shape)}; expected torch.bool of shape ({entry.rows},): set its "
                        "entries in place (mask.data[rows] = False)"
                    )

    def prune(self) -> nn.Module:
        """A new, physically pruned copy of the prepared model; the prepared model is unchanged.

        ``prune`` builds a view of ``self.model`` without the masks' parametrizations (the
        original tensors, shared, not copied), traces it with ``torch.fx``, runs
        :func:`fprune.match_patterns` with ``self.patterns``, and returns
        :func:`fprune.apply_prune` of the view with the current masks, honouring each
        tensor's ``prune_bias``. The result is a model of the original class with smaller
        modules, no parametrizations, and no tensor shared with ``self.model``. It computes
        what the prepared (masked) model computes, with the removed output channels
        dropped where the last layer is pruned.

        ``self.model`` is left exactly as it was: parametrized, with the same masks and
        parameters, so training, ``step`` and ``prune`` may go on. (torch.ao instead prunes
        ``self.model`` in place and returns a GraphModule that shares its submodules.) It may
        be called after training steps: caches of computed (masked) tensors, such as an
        LSTM's ``_flat_weights``, are copied as values.

        A tensor whose removed channels still emit a constant that no bias can reproduce
        (with ``prune_bias=False``, into a zero-padded conv or a padded average pool, or an
        LSTM keeping its biases) is left full size, as torch.ao does, with its removed rows
        zeroed: the result is still exact (``apply_prune(..., unfoldable="keep")``). One
        ``UserWarning`` then names those tensors; their masks stay as they are.

        Raises:
            PruneError: before :meth:`prepare`, or when the masks cannot be pruned exactly
                (an all-False mask, an LSTM mask differing between its gates, ...); the
                message names the tensor.
        """
        prepared = self._require_prepared("prune()")
        view = _unmasked_view(prepared)
        matches = _matches(trace(view, "prune()"), self.patterns, "prune()")
        masks = {entry.tensor_fqn: entry.parametrization.mask for entry in prepared.entries}
        prune_bias = {entry.tensor_fqn: entry.prune_bias for entry in prepared.entries}
        try:
            pruned, unshrunk = prune_reporting_unshrunk(
                view, masks, matches, prune_bias=prune_bias, unfoldable="keep", caller="prune()"
            )
        except PruneError as error:
            raise prefixed("prune()", error) from None
        if unshrunk:
            warnings.warn(
                f"prune(): left {len(unshrunk)} tensor(s) unshrunk, their removed rows zeroed instead of cut "
                "(as torch.ao does before a padded conv): "
                + describe_unshrunk(unshrunk, prune_bias, "set prune_bias=True in their config entries"),
                UserWarning,
                stacklevel=2,
            )
        return pruned

    def squash_mask(
        self,
        params_to_keep: Sequence[str] | None = None,
        params_to_keep_per_layer: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Remove the masks' parametrizations from ``self.model``, keeping the masked values.

        As torch.ao's ``squash_mask``: every parametrized tensor becomes a plain parameter (the
        same ``nn.Parameter`` object) holding its masked value, so removed rows, and the
        entries masked with them, are zeros. Parameters are listed in their original order.
        `params_to_keep` (config keys for every module) and `params_to_keep_per_layer`
        (by module FQN) are stored as a ``sparse_params`` dict on the module, as in torch.ao.
        Afterwards :meth:`prune` still works (from the kept masks) and :meth:`step` raises.
        """
        prepared = self._require_prepared("squash_mask()")
        if not self._squashed:
            for module_fqn, name in prepared.parametrized:
                module = prepared.model.get_submodule(module_fqn)
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            for module_fqn, layout in prepared.layouts.items():
                _restore_order(prepared.model.get_submodule(module_fqn), layout)
            self._squashed = True
        for group in self.groups:
            keys = list(params_to_keep or ()) + list((params_to_keep_per_layer or {}).get(str(group["module_fqn"]), ()))
            missing = [key for key in keys if key not in group]
            if missing:
                raise PruneError(f"squash_mask(): the config of `{group['tensor_fqn']}` has no key {missing[0]!r}")
            if keys:
                module = prepared.model.get_submodule(str(group["module_fqn"]))
                setattr(module, "sparse_params", {key: group[key] for key in keys})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.groups):
            lines.append(f"\tGroup {index}")
            lines.append(f"\t    module: {group['module']}")
            lines += [f"\t    {key}: {group[key]}" for key in sorted(group) if key != "module"]
        return "\n".join([*lines, ")"])

    # ------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------

    def _require_prepared(self, what: str) -> _Prepared:
        if self._prepared is None:
            raise PruneError(f"{what}: called before prepare(model, config); call prepare first")
        return self._prepared

    def _group(self, model: nn.Module, index: int, entry: object) -> dict[str, object]:
        """The group dict of config entry `index`: defaults, the entry, then the derived keys."""
        if not isinstance(entry, Mapping):
            raise PruneError(
                f"prepare(): config entry {index} is a {type(entry).__name__}; expected a dict such as "
                "{'tensor_fqn': 'seq.0.weight'}"
            )
        group: dict[str, object] = copy.deepcopy(self.defaults)
        group.update(entry)
        fqn = group.get("tensor_fqn")
        if not isinstance(fqn, str):
            raise PruneError(
                f"prepare(): config entry {index} has no `tensor_fqn` (got {fqn!r}); it names the tensor "
                "to prune, e.g. {'tensor_fqn': 'seq.0.weight'}"
            )
        for key, why in _UNSUPPORTED_KEYS.items():
            if key in group:
                raise PruneError(f"prepare(): config entry for `{fqn}` has the key {key!r}, which fprune does not take: {why}")
        module_fqn, _, name = fqn.rpartition(".")
        tensor = _find_parameter(model, fqn)
        if tensor.dim() < 2:
            raise PruneError(
                f"prepare(): `{fqn}` has {tensor.dim()} dim(s) (shape {tuple(tensor.shape)}); structured "
                "pruning masks the rows of a producer's 2+-dim weight (its bias is masked with it)"
            )
        derived: dict[str, object] = {
            "module": model.get_submodule(module_fqn),
            "module_fqn": module_fqn,
            "tensor_name": name,
            "tensor_fqn": fqn,
        }
        for key in _DERIVED_KEYS:
            if key in entry and not (entry[key] is derived[key] or entry[key] == derived[key]):
                raise PruneError(f"prepare(): config entry for `{fqn}` gives {key}={entry[key]!r}, which disagrees with its tensor_fqn")
        if not isinstance(group.get("prune_bias", True), bool):
            raise PruneError(f"prepare(): `prune_bias` for `{fqn}` must be True or False, got {group['prune_bias']!r}")
        group.update(derived)
        return group


def _find_parameter(model: nn.Module, fqn: str) -> nn.Parameter:
    params = dict(model.named_parameters(remove_duplicate=False))
    if fqn in params:
        return params[fqn]
    name = fqn.rpartition(".")[2]
    close = [other for other in params if other.rpartition(".")[2] == name][:3]
    hint = f"; parameters named `{name}`: {', '.join(close)}" if close else ""
    raise PruneError(f"prepare(): `tensor_fqn` `{fqn}` names no parameter of the model{hint}")


def _default_config(model: nn.Module) -> list[dict[str, object]]:
    """torch.ao's ``make_config_from_model``: children of exact type Linear/Conv2d/LSTM.

    The traversal order is torch.ao's (a stack of containers). An LSTM, which torch.ao names
    ``lstm.weight`` (a tensor that does not exist), gets its per-layer packed weights instead.
    """
    names = {id(module): fqn for fqn, module in model.named_modules()}
    config: list[dict[str, object]] = []
    stack = [model]
    while stack:
        for child in stack.pop().children():
            if type(child) in _DEFAULT_CONFIG_TYPES:
                fqn = names[id(child)]
                prefix = f"{fqn}." if fqn else ""
                if isinstance(child, nn.LSTM):
                    layers = range(child.num_layers)
                    config += [{"tensor_fqn": f"{prefix}weight_{kind}_l{layer}"} for layer in layers for kind in ("ih", "hh")]
                else:
                    config.append({"tensor_fqn": f"{prefix}weight"})
            else:
                stack.append(child)
    return config


def _matches(gm: fx.GraphModule, patterns: Mapping[Pattern, PruneFunction], caller: str) -> tuple[Match, ...]:
    """``match_patterns(gm, patterns)``, a malformed pattern refused by `caller`."""
    try:
        return match_patterns(gm, patterns)
    except PruneError as error:
        raise prefixed(caller, error) from None


def _zeroed_tensors(model: nn.Module, matches: Sequence[Match], prune_bias: Mapping[str, bool]) -> dict[str, list[str]]:
    """For each configured tensor, the *other* parameters its mask zeroes, as the core says.

    ``masked_parameters`` with an all-True mask returns new tensors exactly where that mask
    applies, so the facade never restates which tensors go with a row. This also checks,
    before anything is changed, that a pattern covers each tensor (the core's message says
    why not), and that the tensors one match prunes share one ``prune_bias``.
    """
    for match in matches:
        configured = [fqn for fqn in match.mask_fqns if fqn in prune_bias]
        if len({prune_bias[fqn] for fqn in configured}) > 1:
            raise PruneError(
                f"prepare(): {' and '.join(f'`{fqn}`' for fqn in configured)} are pruned together (chain "
                f"{' -> '.join(match.nodes)}) but their configs give different `prune_bias`; give them the same"
            )
    params = dict(model.named_parameters(remove_duplicate=False))
    zeroed: dict[str, list[str]] = {}
    for fqn, bias in prune_bias.items():
        keep = {fqn: torch.ones(params[fqn].shape[0], dtype=torch.bool, device=params[fqn].device)}
        try:
            with torch.no_grad():
                masked = masked_parameters_for(model, keep, matches, prune_bias=bias, caller="prepare()")
        except PruneError as error:
            raise prefixed("prepare()", error) from None
        zeroed[fqn] = [name for name, tensor in masked.items() if tensor is not params[name] and name != fqn]
    return zeroed


def _unmasked_view(prepared: _Prepared) -> nn.Module:
    """The prepared model without the masks' parametrizations; it shares every tensor.

    A deep copy of the module tree in which every parameter and buffer is the original
    object, so nothing is copied but modules; in it, each parametrized module is turned back
    into its own class with its original parameters, in their original order. An RNN's weight
    cache (``_flat_weights``), which after a forward holds the masked weights as computed
    tensors, is pointed back at the original parameters.
    """
    model = prepared.model
    memo: dict[int, object] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    caches = (t for m in model.modules() if isinstance(m, nn.RNNBase) for t in m._flat_weights if t is not None)
    memo.update((id(t), t) for t in caches)  # shared, not copied: re-pointed at the parameters below
    view = copy_module(model, memo)
    for fqn, module in view.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        original_class = parametrize.type_before_parametrizations(module)
        lists = module._modules.pop("parametrizations")
        assert isinstance(lists, nn.ModuleDict)
        for name, plist in lists.items():
            assert isinstance(plist, parametrize.ParametrizationList)
            if not all(isinstance(p, (FakeStructuredSparsity, _FollowMask)) for p in plist):
                raise PruneError(
                    f"prune(): `{fqn}.{name}` carries a parametrization that is not the sparsifier's mask; "
                    "remove it first so fprune sees the real tensor"
                )
            original = plist.original
            assert isinstance(original, nn.Parameter)
            module._parameters[name] = original
        module.__class__ = original_class
        _restore_order(module, prepared.layouts.get(fqn, ()))
        if isinstance(module, nn.RNNBase):  # its weight cache held the masked (computed) weights
            module._init_flat_weights()
    return view


def _restore_order(module: nn.Module, layout: Sequence[str]) -> None:
    """Reorder `module`'s parameters as `layout` lists them (names not in it stay last)."""
    params = module._parameters
    ordered = {name: params[name] for name in layout if name in params}
    ordered.update(params)
    params.clear()
    params.update(ordered)


def masked_weight_and_mask(module: nn.Module, tensor_name: str) -> tuple[Tensor, Tensor]:
    """The masked tensor ``getattr(module, tensor_name)`` and its FakeStructuredSparsity mask.

    For an ``update_mask``: score the masked tensor (rows removed so far are zero, so masks
    only accumulate, as in torch.ao) and clear entries of the mask in place. Raises
    PruneError if the tensor carries no FakeStructuredSparsity (it was not prepared).
    """
    lists = getattr(module, "parametrizations", None)
    plist = lists[tensor_name] if isinstance(lists, nn.ModuleDict) and tensor_name in lists else None
    first = plist[0] if isinstance(plist, nn.ModuleList) and len(plist) else None
    if not isinstance(first, FakeStructuredSparsity):
        raise PruneError(
            f"masked_weight_and_mask: `{tensor_name}` of {type(module).__name__} has no FakeStructuredSparsity mask; "
            "was it prepared?"
        )
    tensor = getattr(module, tensor_name)
    assert isinstance(tensor, Tensor)
    return tensor, first.mask


def sparsity_level(kwargs: Mapping[str, object]) -> float:
    """The ``sparsity_level`` config key of an ``update_mask``'s kwargs, as a float.

    Raises PruneError, naming the tensor, if it is missing or not a number (torch.ao raises
    a bare KeyError).
    """
    level = kwargs.get("sparsity_level")
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        got = "no `sparsity_level`" if level is None else f"`sparsity_level`={level!r}, not a number"
        raise PruneError(
            f"sparsity_level: the config of `{kwargs.get('tensor_fqn')}` has {got}; give it in the config entry or the "
            "defaults, e.g. {'sparsity_level': 0.5}"
        )
    return float(level)
