"""Every example runs offline and says what a person wants to read."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_crash_and_resume_example_shows_completed_steps_served_from_the_record(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "crash_and_resume.py"), "--db", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "child process ended by signal 9" in out
    assert out.count("served from the record") == 3
    assert "status: completed" in out
    assert "steps executed this time: 0" in out
