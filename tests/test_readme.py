"""Every code block in README.md runs as written; its set-up commands are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_python_blocks_run_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md block {index}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(f"README python block {index} failed: {error!r}\n{block}") from error
    assert "feeds a residual add" in capsys.readouterr().out


def test_readme_setup_is_two_commands_pinning_torch() -> None:
    commands = [line for block in _blocks("bash") for line in block.strip().splitlines()]
    assert commands == [
        "pip install torch==2.13.0 -e . && python -m fprune",
        "pip install torch==2.13.0 -e '.[dev,hf,plot]' && python -m pytest -q && mypy --strict",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "mypy --strict" in ci and "torch==2.13.0" in ci
