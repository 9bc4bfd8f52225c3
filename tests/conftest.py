"""Test-suite options: ``--fuzz-long`` (or ``FPRUNE_FUZZ_LONG=1``) runs the pipeline fuzzer
(tests/pipeline/test_fuzz.py) with random seeds and thousands of models; the fuzzer's counts are
printed at the end of a run that used it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="fuzz fprune's pipelines with random seeds and thousands of generated models (also FPRUNE_FUZZ_LONG=1)",
    )


def fuzz_long_enabled(config: pytest.Config) -> bool:
    """True under ``--fuzz-long`` or a non-empty ``FPRUNE_FUZZ_LONG`` other than 0."""
    return bool(config.getoption("--fuzz-long")) or os.environ.get("FPRUNE_FUZZ_LONG", "") not in ("", "0")


@pytest.fixture
def fuzz_long(request: pytest.FixtureRequest) -> bool:
    """Whether the fuzzer runs in long mode."""
    return fuzz_long_enabled(request.config)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test (tiny tensors: on 2 busy cores, threads only
    contend, several times slower); the thread count is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    module = sys.modules.get("tests.pipeline.fuzz_pipelines")
    stats = getattr(module, "STATS", None)
    if stats is None or not stats.tried:
        return
    terminalreporter.write_sep("-", "fprune pipeline fuzzer")
    terminalreporter.write_line(stats.summary())
