"""The typed usage snippets run (mypy --strict checks them as part of the suite's type check)."""

from __future__ import annotations

from torch import nn

from .typing import usage


def test_typed_usage_snippet_runs_and_prunes() -> None:
    pruned = usage.run()
    assert isinstance(pruned, usage.Net)
    fc1 = pruned.fc1
    assert isinstance(fc1, nn.Linear) and fc1.out_features == 4
