"""The one exception family fprune raises for bad input."""

from __future__ import annotations

__all__ = ["PruneError"]


class PruneError(ValueError):
    """Raised when fprune is given input it cannot prune correctly.

    The message names the tensor FQN or graph node at fault and says what to do instead.
    fprune never returns a silently wrong model: where an exact result is impossible, it raises.
    """
