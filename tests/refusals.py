"""One helper the test modules share: the message of an expected PruneError."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import fprune


def refusal(call: Callable[[], object], *words: str) -> str:
    """The PruneError message of `call`, after checking it contains every one of `words`."""
    with pytest.raises(fprune.PruneError) as error:
        call()
    message = str(error.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"message lacks {missing}: {message}"
    return message
