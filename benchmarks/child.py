"""Running one measurement in a fresh Python process, with its result as JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    """A measurement process exited with an error (the message ends with its stderr)."""


def run_child(module: str, *args: str, env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Run ``python -m benchmarks.<module> ARGS`` from the repository root; its last stdout line, parsed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-12:]
        raise ChildFailed(f"`python -m benchmarks.{module} {' '.join(args)}` exited with {done.returncode}:\n" + "\n".join(tail))
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def emit(result: Mapping[str, object]) -> None:
    """Print a child's result for :func:`run_child`."""
    print(json.dumps(result), flush=True)
