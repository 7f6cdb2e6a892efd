"""The CLI and queued runs: ``agentflow runs`` shows each run's queue and worker, ``agentflow show`` its
queue, worker, lease and lease history; ``agentflow worker`` refuses an ``--app`` that is no AgentFlow.

(``agentflow worker`` itself runs as a process in test_workers.py.)
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from agentflow import AgentFlow, Context, FakeClock
from agentflow._cli import cli


def invoke(*args: str, columns: int = 200) -> Result:
    runner = CliRunner(env={"COLUMNS": str(columns), "FORCE_COLOR": None, "NO_COLOR": "1"})
    return runner.invoke(cli, list(args))


async def double(n: int) -> int:
    return 2 * n


def test_runs_and_show_give_the_queue_the_worker_and_the_lease_of_queued_runs(db_url: str) -> None:
    flow = AgentFlow(db_url, clock=FakeClock())

    @flow.workflow(name="job")
    async def job(ctx: Context, n: int) -> int:
        return await ctx.step("double", double, n)

    flow.run(job, 1, run_id="local")  # not queued
    flow.enqueue(job, 2, queue="billing", run_id="done", priority=3, dedup_id="invoice-9")
    report = flow.work("billing", drain=True, poll=0.01, worker_id="host-a:17:abc123")
    flow.enqueue(job, 3, queue="billing", run_id="waiting-for-a-worker")
    flow.close()
    assert report.finished == 1

    listing = invoke("runs", "--db", db_url)
    assert listing.exit_code == 0, listing.output
    header = next(line for line in listing.output.splitlines() if "workflow" in line)
    assert "queue" in header and "worker" in header
    done = next(line for line in listing.output.splitlines() if line.lstrip().startswith("done "))
    assert "billing p3" in done and "host-a:17:abc123" in done
    local = next(line for line in listing.output.splitlines() if line.lstrip().startswith("local "))
    assert "billing" not in local

    shown = invoke("show", "done", "--db", db_url)
    assert shown.exit_code == 0, shown.output
    assert "billing (priority 3), dedup id invoice-9" in shown.output
    assert "host-a:17:abc123" in shown.output
    assert "token 1, not held" in shown.output
    history = next(line for line in shown.output.splitlines() if line.strip().startswith("1 "))
    assert "host-a:17:abc123" in history and "completed" in history

    pending = invoke("show", "waiting-for-a-worker", "--db", db_url)
    assert "never claimed" in pending.output and "leases" not in pending.output
    assert "queue" not in (invoke("show", "local", "--db", db_url).output)


def test_worker_refuses_an_app_ref_that_is_not_an_agentflow(tmp_path: Path) -> None:
    module = tmp_path / "not_an_app.py"
    module.write_text("app = 42\n")
    result = invoke("worker", "--app", f"{module}:app", "--db", str(tmp_path / "db.sqlite"))
    assert result.exit_code == 1
    assert "not an AgentFlow" in result.output
