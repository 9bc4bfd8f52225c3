"""The one exception family fprune raises for bad input."""

from __future__ import annotations

from typing import TypeVar


class PruneError(ValueError):
    """Raised when fprune is given input it cannot prune correctly.

    The message names the tensor FQN or graph node at fault and says what to do instead.
    fprune never returns a silently wrong model: where an exact result is impossible, it raises.
    """


PruneErrorT = TypeVar("PruneErrorT", bound=PruneError)


def prefixed(function: str, error: PruneErrorT) -> PruneErrorT:
    """`error` with its message starting with ``"{function}: "``, for a public function
    re-raising what the code it calls refused: `error` itself if it already does, else an
    error of the same class (subclass attributes, e.g. ``UnfoldableConstant.reason``, and
    traceback kept) whose message is `function`, ``": "``, then `error`'s message."""
    message = str(error)
    if message.startswith(f"{function}:"):
        return error
    cls = type(error)
    new = cls.__new__(cls)
    new.args = (f"{function}: {message}",)
    new.__dict__.update(error.__dict__)
    return new.with_traceback(error.__traceback__)
