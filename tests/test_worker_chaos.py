"""A short worker chaos session (``worker_chaos.py``): real worker processes drain a queue while the ones
holding runs are SIGKILLed (or now and then SIGTERMed) and replaced, on SQLite and (when
``AGENTFLOW_TEST_POSTGRES_URL`` is set) on Postgres. The runs make steps, payments and model calls (litellm
to a fake provider in each worker) and wait for an event the harness sends. Kills come after a number of
executions, not after a time. ``python tests/worker_chaos.py`` runs longer sessions (the checks are listed
there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from worker_chaos import Session, run_session

POSTGRES_URL = os.environ.get("AGENTFLOW_TEST_POSTGRES_URL")


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_workers_killed_while_they_hold_runs_leave_every_run_completed_once(where: str, tmp_path: Path) -> None:
    if where == "postgres" and not POSTGRES_URL:
        pytest.skip("AGENTFLOW_TEST_POSTGRES_URL is not set")
    session = Session(runs=16, kills=8, lines=25, terms=0.25, seed=7)
    report = run_session(session, tmp_path, POSTGRES_URL if where == "postgres" else None)
    shown = "\n".join(f"{kind}: {msg}" for kind, msg in report.failures[:10])
    assert not report.failures, f"{len(report.failures)} failures ({session.describe()}):\n{shown}"
    assert report.kills and report.taken_over >= 1, "no run was taken over from a killed worker"
    calls = session.rounds * (session.width + 2) + 1  # steps, a payment and a model call a round; the nap's step
    assert report.executions >= session.runs * calls  # every call ran
