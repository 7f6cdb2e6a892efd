"""A run SIGKILLed between two model calls resumes in a new process without asking the model again.

The child processes (``llm_crash_workflow.py``) answer model calls with a ``FakeProvider`` of their own,
so "how often was the model asked" is counted at the HTTP level, where litellm's real code ends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import llm_crash_workflow as child  # the script the child processes run, for its constants

from agentflow import AgentFlow, RunStatus

SCRIPT = Path(child.__file__)
RUN_ID = "llm-crash-run"


def _spawn(mode: str, db_url: str, run_id: str, calls: Path, *, stdin: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, db_url, run_id, str(calls)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _wait_for_marker(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    seen: list[str] = []
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # an upper bound, not a wait for time to pass
        line = proc.stdout.readline() if ready else ""
        if line.strip() == child.MARKER:
            return
        if not line:
            proc.kill()
            raise AssertionError(f"the child did not block after the first call: {seen!r} {proc.communicate()[1]}")
        seen.append(line)


def _calls(path: Path) -> dict[str, dict[str, Any]]:
    """The JSON line each child process appended, by mode."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    by_mode = {entry["mode"]: entry for entry in entries}
    assert len(by_mode) == len(entries), entries
    return by_mode


def test_sigkill_between_two_llm_calls_then_resume_does_not_repeat_the_first_call(db_url: str, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"

    # 1. The first process makes the first call, then blocks in the step before the second: SIGKILL it there.
    proc = _spawn("run", db_url, RUN_ID, calls, stdin=subprocess.PIPE)
    _wait_for_marker(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    killed = _calls(calls)["run"]
    assert len(killed["calls"]) == 1
    assert killed["calls"][0]["messages"] == [{"role": "user", "content": child.QUESTION}]
    assert killed["blocked_connections"] == []
    with AgentFlow(db_url, create=False) as app:
        run = app.get_run(RUN_ID)
        assert run.status == RunStatus.RUNNING
        assert [s.key for s in run.steps] == ["llm#0"]  # the first call is recorded; the pause step is not

    # 2. A new process resumes the run; its provider is scripted with the second reply only.
    resumed = _finish(_spawn("resume", db_url, RUN_ID, calls))

    resume = _calls(calls)["resume"]
    assert resume["blocked_connections"] == []
    assert len(resume["calls"]) == 1, "the resumed run asked the model more than once"
    assert resume["calls"][0]["messages"] == [
        {"role": "user", "content": child.QUESTION},
        {"role": "assistant", "content": child.FIRST_REPLY},  # served from the record, not asked again
        {"role": "user", "content": child.FOLLOW_UP},
    ]
    assert resumed["unexpected"] == 0
    assert resumed["status"] == "completed", resumed["error"]
    assert resumed["output"] == {"first": child.FIRST_REPLY, "second": child.SECOND_REPLY, "first_replayed": True}
    assert len(_calls(calls)["run"]["calls"]) == 1  # and the killed process was asked exactly once

    with AgentFlow(db_url, create=False) as app:
        assert [s.key for s in app.get_run(RUN_ID).steps] == ["llm#0", "pause#0", "llm#1"]
        assert app.verify(RUN_ID) is None

    # 3. The control: a process that does ask the model twice under the resume's script fails, so the
    # checks above would catch a resume that repeated the first call.
    fresh = _finish(_spawn("fresh", db_url, "llm-crash-control", calls))
    assert len(_calls(calls)["fresh"]["calls"]) == 2
    assert fresh["unexpected"] == 1
    assert fresh["status"] == "failed"
    assert "no scripted response left" in fresh["error"]["message"]
