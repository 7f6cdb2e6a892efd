"""Worker processes (``agentflow worker``) drain a queue together; one is SIGKILLed mid-run, others stop on
SIGTERM. Every run completes, every recorded step ran once, and the lease history shows that no two
workers held a run at once.

The workers are real child processes serving ``tests/queue_app.py``; they run on SQLite (one machine,
polling) and on Postgres (LISTEN/NOTIFY). Nothing here sleeps to let time pass: the tests read the
children's output through pipes, and poll the database only under a deadline that guards against a hang.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_app import QUEUE, expected_output, make_app

from agentflow import AgentFlow, RunStatus

APP = Path(__file__).with_name("queue_app.py")
LEASE = 3.0  # seconds: a killed worker's run is taken over within this
BOUND = 120.0  # seconds: a deadlock guard, never a wait for something to happen


def _worker(db_url: str, effects: Path, *options: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from agentflow._cli import main; main()", "worker", "--app", f"{APP}:app",
         "--queue", QUEUE, "--lease", str(LEASE), "--poll", "0.05", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AGENTFLOW_DATABASE_URL": db_url, "QUEUE_EFFECTS": str(effects), **env},
    )  # fmt: skip


def _read_until(proc: subprocess.Popen[str], stream: str, needle: str) -> str:
    """The first line of the child's stdout or stderr that contains ``needle`` (read through the pipe)."""
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], deadline - time.monotonic())
        line = pipe.readline() if ready else ""
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"the worker never said {needle!r}; stdout {out!r}, stderr {err[-2000:]!r}")


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, err[-3000:]
    return out


def _effects(path: Path) -> list[tuple[str, int, int]]:
    return [(run, int(i), int(pid)) for run, i, pid in (line.split() for line in path.read_text().splitlines())]


def _poll(check: object, what: str) -> None:
    """Poll the database until ``check()`` holds; the bound only guards against a hang."""
    deadline = time.monotonic() + BOUND
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def queued(db_url: str) -> Iterator[AgentFlow]:
    app = make_app(db_url)
    try:
        yield app
    finally:
        app.close()


def test_workers_drain_a_queue_and_a_sigkilled_worker_s_run_is_taken_over_with_each_step_run_once(
    db_url: str, queued: AgentFlow, tmp_path: Path
) -> None:
    runs, steps, block_at = 12, 6, 3
    effects = tmp_path / "effects.txt"
    ids = [queued.enqueue("chain", steps, queue=QUEUE, run_id=f"r{n:02d}").run_id for n in range(runs)]

    # 1. A worker that will die: it blocks inside step 3 of its first run, holding that run's lease.
    victim = _worker(db_url, effects, "--concurrency", "1", QUEUE_BLOCK_AT=str(block_at))
    blocked_run = _read_until(victim, "stdout", "blocked").split()[1]

    # 2. Two more workers drain the queue with it; once they are under way, the first one is SIGKILLed.
    survivors = [_worker(db_url, effects, "--concurrency", "3", "--drain") for _ in range(2)]
    _poll(lambda: any(r.status == RunStatus.COMPLETED for r in queued.list_runs()), "a survivor to complete a run")
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    for proc in survivors:
        _finish(proc)

    # Every run completed, with the output of an uninterrupted run.
    finished = {run_id: queued.get_run(run_id) for run_id in ids}
    assert {r.status for r in finished.values()} == {RunStatus.COMPLETED}
    assert all(run.output == expected_output(run_id, steps) for run_id, run in finished.items())

    # Each step ran once, except the one in flight in the killed worker: at-least-once, as for any crash.
    lines = _effects(effects)
    counts = Counter((run, i) for run, i, _ in lines)
    assert counts.pop((blocked_run, block_at)) == 2
    assert set(counts.values()) == {1} and len(counts) == runs * steps - 1

    # No two workers held a run at once: per run, each holder's steps come in one block, in the order of
    # the fencing tokens, and the run was claimed again only after the killed worker's lease ran out.
    holders: dict[str, list[int]] = defaultdict(list)
    for run, _, pid in lines:
        if not holders[run] or holders[run][-1] != pid:
            holders[run].append(pid)
    for run_id in ids:
        leases = queued.leases(run_id)
        assert [lease.token for lease in leases] == list(range(1, len(leases) + 1))
        assert finished[run_id].lease_token == len(leases)
        assert [int(lease.worker.split(":")[1]) for lease in leases] == holders[run_id]
        assert leases[-1].outcome == "completed" and finished[run_id].lease_expires_at is None
        if run_id == blocked_run:
            first, second = leases
            assert int(first.worker.split(":")[1]) == victim.pid
            assert first.released_at is None and first.outcome is None  # it died holding the lease
            assert second.claimed_at.timestamp() > killed_at  # taken over only once the dead lease expired
        else:
            assert len(leases) == 1
    assert queued.verify(blocked_run) is None  # its record is one hash chain across the two workers


def test_sigterm_lets_the_run_in_flight_end_and_claims_nothing_more(
    db_url: str, queued: AgentFlow, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    first = queued.enqueue("chain", 3, queue=QUEUE, run_id="first").run_id
    queued.enqueue("chain", 3, queue=QUEUE, run_id="second")
    worker = _worker(db_url, effects, "--grace", "600", QUEUE_BLOCK_AT="1", QUEUE_BLOCK_MODE="stdin")
    _read_until(worker, "stdout", "blocked")

    worker.send_signal(signal.SIGTERM)
    _read_until(worker, "stderr", "in flight get")  # it heard the signal and waits for the run
    assert worker.stdin is not None
    worker.stdin.write("go on\n")
    worker.stdin.flush()
    out = _finish(worker)

    assert "finished 1, released 0" in out
    done = queued.get_run(first)
    assert done.status == RunStatus.COMPLETED and done.output == expected_output(first, 3)
    assert [(lease.token, lease.outcome) for lease in queued.leases(first)] == [(1, "completed")]
    untouched = queued.get_run("second")
    assert (untouched.status, untouched.lease_token, queued.leases("second")) == (RunStatus.PENDING, 0, [])


def test_sigterm_past_the_grace_releases_the_run_at_once_to_another_worker(
    db_url: str, queued: AgentFlow, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    run_id = queued.enqueue("chain", 4, queue=QUEUE, run_id="held").run_id
    worker = _worker(db_url, effects, "--grace", "0", QUEUE_BLOCK_AT="2")
    _read_until(worker, "stdout", "blocked")

    worker.send_signal(signal.SIGTERM)
    assert "released 1" in _finish(worker)
    released = queued.get_run(run_id)
    assert released.status == RunStatus.PENDING and released.lease_expires_at is None
    assert released.lease_token == 2  # the release fences off anything the old holder still had going
    assert [s.key for s in released.steps] == ["work#0", "work#1"]

    # Another worker takes it at once (no lease to wait out) and serves the recorded steps.
    _finish(_worker(db_url, effects, "--drain"))
    done = queued.get_run(run_id)
    assert done.status == RunStatus.COMPLETED and done.output == expected_output(run_id, 4)
    assert [(lease.token, lease.outcome) for lease in queued.leases(run_id)] == [(1, "released"), (3, "completed")]
    assert Counter(i for _, i, _ in _effects(effects)) == {0: 1, 1: 1, 2: 2, 3: 1}  # 2 was in flight at the release
