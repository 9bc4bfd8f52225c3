"""python -m fprune: the demo prunes the reference MLP and reports the check."""

from __future__ import annotations

import subprocess
import sys

from fprune._demo import run_demo


def test_demo_reports_both_tables_and_the_equivalence() -> None:
    report = run_demo()
    assert "seq.0.weight    500x700           350000" in report
    assert "seq.0.weight    250x700           175000" in report
    assert report.count("total") == 2 and "1233500" in report and "396150" in report
    assert "pruned copy matches the masked original" in report


def test_python_dash_m_fprune_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "fprune"], capture_output=True, text=True, check=True, timeout=120)
    assert "396150" in result.stdout and "matches the masked original" in result.stdout
