"""Typed, immutable records shared by matching and pruning."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, Union

from torch import Tensor, nn

from .._errors import PruneError
from .._ops import OpKey


@dataclass(frozen=True)
class Attr:
    """A model attribute (an ``fx`` ``get_attr`` node) passed to a :class:`Call`.

    Attributes:
        fqn: the attribute's fully qualified name in the model, e.g. ``"act.weight"``.
    """

    fqn: str


@dataclass(frozen=True)
class Call:
    """A function or method applied to the chain's tensor, with the node's other arguments.

    ``Call(F.leaky_relu, (0.5,))(x)`` computes ``F.leaky_relu(x, 0.5)``; a method name as
    `target` calls ``x.target(*args, **kwargs)``. Arguments that are model attributes are
    given as :class:`Attr` in a match record and as tensors once resolved for a prune function.

    Attributes:
        target: the function (``F.relu``, ``torch.flatten``, ...) or method name (``"relu"``).
        args: the positional arguments after the chain's tensor.
        kwargs: the keyword arguments, as sorted ``(name, value)`` pairs.
    """

    target: Callable[..., object] | str
    args: tuple[object, ...] = ()
    kwargs: tuple[tuple[str, object], ...] = ()

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the call to `x` (``x`` is left unchanged unless the call itself is in place)."""
        kwargs = dict(self.kwargs)
        if isinstance(self.target, str):
            out = getattr(x, self.target)(*self.args, **kwargs)
        else:
            out = self.target(x, *self.args, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"{self.name} returned {type(out).__name__}, expected a Tensor")
        return out

    @property
    def name(self) -> str:
        """A readable name: ``"torch.nn.functional.relu"``, ``"x.relu"`` or ``"operator.getitem"``."""
        if isinstance(self.target, str):
            return f"x.{self.target}"
        module = getattr(self.target, "__module__", None) or ""
        qualname = getattr(self.target, "__qualname__", None) or repr(self.target)
        if self.target is operator.getitem:
            return "operator.getitem"
        return f"{module}.{qualname}" if module else qualname


@dataclass(frozen=True)
class Output:
    """The graph's output: the chain's tensor is returned from ``forward``."""


OUTPUT = Output()
"""The one :class:`Output` instance; a prune function receives it for an ``"output"`` node."""


@dataclass(frozen=True)
class ModuleOp:
    """A submodule called on the chain's tensor.

    Attributes:
        fqn: the module's fully qualified name in the model, e.g. ``"seq.0"``.
        type: the module's class, e.g. ``nn.Linear``.
    """

    fqn: str
    type: type[nn.Module]


MatchedOp: TypeAlias = Union[ModuleOp, Call, Output]
"""One matched node, as a match record holds it (by name, not by object)."""

Op: TypeAlias = Union[nn.Module, Call, Output]
"""One matched node, as a prune function receives it: the module itself, a call, or the output."""

PatternElement: TypeAlias = OpKey
"""A module class (exact type), a function (``F.relu``), or a string: a method name
(``"relu"`` for ``x.relu()``) or ``"output"`` for the graph's output."""


@dataclass(frozen=True, init=False, repr=False)
class ZeroOrMore:
    """A pattern element that stands for a run of zero or more consecutive ops, each of which
    matches one of `elements`.

    ``(nn.Conv2d, ZeroOrMore(nn.ReLU, nn.MaxPool2d), nn.Conv2d)`` matches conv -> conv,
    conv -> relu -> conv, conv -> maxpool -> relu -> relu -> conv, and so on. It is hashable and
    immutable, so it sits in a pattern tuple like any other element; two runs of the same
    elements are equal, whatever their order or `name`. The shipped runs are
    ``fprune.patterns.PASS_THROUGH_LINEAR`` / ``_1D`` / ``_2D`` / ``_3D`` / ``_FLAT``.

    Attributes:
        elements: what each op of the run may be: module classes (exact type), functions or
            method names, as in a tuple pattern; never ``"output"`` or another run.
        name: a short name for messages and ``repr`` (``"pass-through 2d"``); not compared.

    Raises PruneError for an empty run, or ``"output"`` or a nested run among `elements`.
    """

    elements: frozenset[PatternElement]
    name: str = field(default="", compare=False)

    def __init__(self, *elements: PatternElement, name: str = "") -> None:
        if not elements:
            raise PruneError("ZeroOrMore: give at least one element, e.g. ZeroOrMore(nn.ReLU, nn.MaxPool2d)")
        for element in elements:
            if isinstance(element, ZeroOrMore) or element == "output":
                raise PruneError(
                    f"ZeroOrMore: {element!r} cannot be repeated inside a run; put it in the pattern "
                    "after the run instead, e.g. (nn.Linear, ZeroOrMore(nn.ReLU), 'output')"
                )
        object.__setattr__(self, "elements", frozenset(elements))
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        if self.name:
            return f"ZeroOrMore({self.name})"
        names = sorted(repr(e) if isinstance(e, str) else getattr(e, "__name__", repr(e)) for e in self.elements)
        return f"ZeroOrMore({', '.join(names)})"


Pattern: TypeAlias = tuple[Union[PatternElement, ZeroOrMore], ...]
"""A chain of elements, producer first: ``(nn.Linear, nn.ReLU, nn.Linear)``; an element may
also be a :class:`ZeroOrMore` run: ``(nn.Linear, ZeroOrMore(nn.ReLU, nn.Dropout), nn.Linear)``."""


class PruneFunction(Protocol):
    """Shrinks the modules of one matched chain; pure.

    Args:
        ops: the matched modules / calls / output, producer first, in pattern order.
        keep: keep-masks of the producer's tensors by tensor name (``"weight"`` for a
            Linear or Conv2d; ``"weight_ih_l0"``, ``"weight_hh_l0"``, ... for an LSTM).
        prune_bias: whether the removed channels' bias goes with them (True) or its constant
            contribution is folded into the consumer's bias (False).

    Returns:
        One entry per op: the replacement module, or None where the op is left as it is.
        The modules in `ops` are never modified.
    """

    def __call__(
        self, ops: Sequence[Op], keep: Mapping[str, Tensor], *, prune_bias: bool
    ) -> tuple[nn.Module | None, ...]: ...


@dataclass(frozen=True)
class Match:
    """One occurrence of a pattern in a traced graph.

    Attributes:
        pattern: the pattern key that matched (the longest one at this producer; among
            those that match the same nodes, the most specific, see ``match_patterns``).
        nodes: the ``fx`` node names, producer first.
        ops: what each node is: a module (by FQN), a call (function / method with its
            arguments) or the output.
        prune_fn: the prune function the pattern maps to.
        weight_fqn: the producer's weight FQN, the key of its keep-mask (``"seq.0.weight"``).
        mask_fqns: every tensor FQN whose keep-mask this match applies (for an LSTM, each
            layer's ``weight_ih_l*`` and ``weight_hh_l*``; otherwise just `weight_fqn`).
    """

    pattern: Pattern
    nodes: tuple[str, ...]
    ops: tuple[MatchedOp, ...]
    prune_fn: PruneFunction
    weight_fqn: str
    mask_fqns: tuple[str, ...]

    @property
    def module_fqns(self) -> tuple[str, ...]:
        """FQNs of the matched modules, in chain order."""
        return tuple(op.fqn for op in self.ops if isinstance(op, ModuleOp))
