"""A run SIGKILLed in a child process resumes in another process: completed steps never run twice."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from agentflow import AgentFlow, RunStatus

SCRIPT = Path(__file__).with_name("crash_workflow.py")
STEPS = 40
KILL_AT = 23


def _child(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def _effects(path: Path) -> Counter[int]:
    return Counter(int(line) for line in path.read_text().split())


def test_sigkill_mid_run_then_resume_in_a_new_process_runs_completed_steps_once(db_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"

    # 1. Start the run in a child process and SIGKILL it inside step KILL_AT.
    proc = _child("run", db_url, "crash-run", str(effects), str(STEPS), str(KILL_AT), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)  # an upper bound, not a wait for time to pass
    line = proc.stdout.readline() if ready else ""
    if line.strip() != f"blocked {KILL_AT}":
        proc.kill()
        raise AssertionError(f"child did not reach step {KILL_AT}: {line!r} {proc.communicate()[1]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with AgentFlow(db_url, create=False) as app:
        killed = app.get_run("crash-run")
        recorded_before = [(s.key, s.seq, s.output, s.fingerprint) for s in killed.steps]
    assert killed.status == RunStatus.RUNNING
    assert [k for k, *_ in recorded_before] == ["uuid#0"] + [f"work#{i}" for i in range(KILL_AT)]
    assert _effects(effects) == Counter(range(KILL_AT + 1))  # step KILL_AT ran, but was not recorded

    # 2. Resume in a new process.
    resumed = _finish(_child("resume", db_url, "crash-run", str(effects), str(STEPS)))

    # 3. An uninterrupted run of the same workflow, for comparison.
    clean_effects = tmp_path / "clean.txt"
    clean = _finish(_child("run", db_url, "clean-run", str(clean_effects), str(STEPS), "-1"))

    counts = _effects(effects)
    assert all(counts[i] == 1 for i in range(KILL_AT)), "a step completed before the kill ran again"
    assert counts[KILL_AT] == 2  # in flight at the kill: at-least-once, as for any unrecorded step
    assert all(counts[i] == 1 for i in range(KILL_AT + 1, STEPS))
    assert _effects(clean_effects) == Counter(range(STEPS))
    assert resumed["status"] == clean["status"] == "completed"
    assert resumed["output"] == clean["output"]

    with AgentFlow(db_url, create=False) as app:
        after = app.get_run("crash-run")
        recorded_after = [(s.key, s.seq, s.output, s.fingerprint) for s in after.steps]
        assert app.verify("crash-run") is None
    assert recorded_after[: len(recorded_before)] == recorded_before  # nothing recorded was lost or changed
    assert [k for k, *_ in recorded_after] == ["uuid#0"] + [f"work#{i}" for i in range(STEPS)]


PAYMENTS = Path(__file__).with_name("payments_crash_workflow.py")


def test_gathered_payments_in_flight_at_a_sigkill_are_made_again_under_their_own_keys(
    db_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    proc = subprocess.Popen(
        [sys.executable, str(PAYMENTS), "run", db_url, "pay-run", str(ledger)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)  # an upper bound, not a wait for time to pass
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "in flight":
        proc.kill()
        raise AssertionError(f"the payments did not start: {line!r} {proc.communicate()[1]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    made = dict(entry.split() for entry in ledger.read_text().splitlines())
    assert sorted(made.values()) == ["10", "20"]  # both payments went through; neither was recorded

    resumed = subprocess.run(
        [sys.executable, str(PAYMENTS), "resume", db_url, "pay-run", str(ledger)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {
        "status": "completed",
        "output": ["A paid 10", "B paid 20"],
    }
    again = [entry.split() for entry in ledger.read_text().splitlines()[2:]]
    # A reached the engine first on resume; each payment still went out under the key it was made with.
    assert sorted(amount for _, amount in again) == ["10", "20"]
    assert all(made[key] == amount for key, amount in again), again
