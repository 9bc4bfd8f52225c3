"""What `pip install -e .` brings: the first `python -m fprune` on a clean machine is quiet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_numpy_is_a_dependency() -> None:
    """torch warns "Failed to initialize NumPy" at import when NumPy is absent; fprune installs it."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.split(";")[0].strip().startswith("numpy") for d in project["dependencies"])


def test_the_demo_runs_without_a_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "fprune"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "matches the masked original" in result.stdout


def test_every_subpackage_is_in_the_distribution() -> None:
    """`fprune` is a tree of packages: the setuptools configuration must find every one of them
    (with ``packages = ["fprune"]``, an install would ship the top level only)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    packages = [".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fprune").rglob("__init__.py")]
    assert {"fprune", "fprune.patterns", "fprune.groups", "fprune.sparsifier", "fprune._util"} <= set(packages)
    for package in packages:
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), package
    assert setuptools["package-data"]["fprune"] == ["py.typed"]
