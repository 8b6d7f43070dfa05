"""`python -m evalexec demo` runs end to end and prints its summary line."""

from __future__ import annotations

import re
import subprocess
import sys

DEMO_ARGS = ("demo", "--inputs", "50", "--rpm", "6000", "--latency", "0.02")


def test_the_demo_runs_and_prints_its_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evalexec", *DEMO_ARGS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "demo: 50/50 rows judged" in result.stdout
    summary = re.compile(
        r"^evalexec: \d+ completed, \d+ completed with retries, 0 failed, 0 did not run; "
        r"\d+ retries; \d+\.\d s$",
        re.MULTILINE,
    )
    assert summary.search(result.stderr), result.stderr
