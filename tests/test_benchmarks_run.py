"""Every benchmark still runs to its report, at a size that takes seconds: a change to an internal type or
API that a benchmark uses (``StepRecord`` turned into a named tuple, say) breaks it here, not on the day
someone measures. The figures at this size mean nothing and are not looked at; only that the script ran
to its end (exit 0 for PASS or a plain report, 1 for FAIL) without an exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
POSTGRES_URL = os.environ.get("AGENTFLOW_TEST_POSTGRES_URL")

SMALL: dict[str, list[str]] = {
    "conversation_storage": ["--turns", "20"],
    "evals": ["--runs", "20", "--rounds", "1"],
    "import_time": ["--runs", "2"],
    "llm_overhead": ["--calls", "5", "--rounds", "1", "--lengths", "3"],
    "replay": ["--steps", "100", "--rounds", "1"],
    "step_overhead": ["--steps", "200", "--repeats", "1", "--no-postgres"],
    "waits": ["--runs", "20"],
    "workers": ["--runs", "4", "--steps", "1", "--concurrency", "2"],
}
NEEDS_POSTGRES = {"workers"}


def test_every_benchmark_has_a_small_size_here() -> None:
    assert sorted(path.stem for path in BENCHMARKS.glob("*.py")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_benchmark_runs_to_its_report(name: str, tmp_path: Path) -> None:
    if name in NEEDS_POSTGRES and not POSTGRES_URL:
        pytest.skip("AGENTFLOW_TEST_POSTGRES_URL is not set")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *SMALL[name]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert done.stdout.strip(), "it printed no report"
