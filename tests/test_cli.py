"""The ``agentflow`` command: ``runs`` lists runs, ``show`` shows one run and its steps.

Runs are made with a fake clock, so times and durations in the output are known exactly. Every test that
takes ``recorded`` runs on SQLite and, when ``AGENTFLOW_TEST_POSTGRES_URL`` is set, on Postgres.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agentflow import AgentFlow, Context, FakeClock, RetryPolicy
from agentflow._cli import cli
from agentflow._store import RunRecord

T0 = 1_700_000_000.0
LONG_ID = "ok-new-0123456789abcdef0123456789"  # 33 characters: a table must not break it
DECLINED = "card declined: [bold]limit[/bold] reached"  # rich markup in user text must print verbatim


def invoke(*args: str, columns: int = 200) -> Result:
    runner = CliRunner(env={"COLUMNS": str(columns), "FORCE_COLOR": None, "NO_COLOR": "1"})
    return runner.invoke(cli, list(args))


def panel_field(label: str, output: str) -> str | None:
    """The value shown for ``label`` in the run's header panel, None if it is not there."""
    for line in output.splitlines():
        inner = line.strip().strip("│").strip()
        if inner.startswith(label + "  "):
            return inner[len(label) :].strip()
    return None


def line_with(text: str, output: str) -> str:
    """The one line of ``output`` that contains ``text``."""
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, f"{text!r} is on {len(lines)} lines of:\n{output}"
    return lines[0]


@pytest.fixture
def recorded(db_url: str) -> str:
    """A database holding four runs, oldest first: ok-old, bad-1 (a failed step), LONG_ID, stuck-1 (running).

    Every ``fetch`` takes 0.2 s; ``charge`` fails twice, 0.5 s each with 1 s of backoff between.
    """
    clock = FakeClock(start=T0)
    flow = AgentFlow(db_url, clock=clock)

    async def fetch(n: int) -> dict[str, Any]:
        clock.advance(0.2)
        return {"n": n, "items": list(range(n))}

    async def charge(amount: int) -> str:
        clock.advance(0.5)
        raise ValueError(DECLINED)

    @flow.workflow(name="pipeline")
    async def pipeline(ctx: Context, n: int) -> str:
        data = await ctx.step("fetch", fetch, n)
        return f"{len(data['items'])} items"

    @flow.workflow(name="checkout")
    async def checkout(ctx: Context, amount: int) -> str:
        await ctx.step("fetch", fetch, 2)
        return await ctx.step("charge", charge, amount, retry=RetryPolicy(max_attempts=2, delay=1.0))

    try:
        assert flow.run(pipeline, 3, run_id="ok-old").status == "completed"
        clock.advance(60)
        assert flow.run(checkout, 42, run_id="bad-1").status == "failed"
        clock.advance(60)
        assert flow.run(pipeline, 5, run_id=LONG_ID).status == "completed"
        clock.advance(60)
        now = clock.time()
        args = '{"args": [1], "kwargs": {}}'
        unfinished = RunRecord("stuck-1", "pipeline", "running", args, created_at=now, updated_at=now)
        assert flow._store.insert_run(unfinished)
    finally:
        flow.close()
    return db_url


# -- runs -------------------------------------------------------------------------------------------------


def test_runs_lists_every_run_newest_first(recorded: str) -> None:
    result = invoke("runs", "--db", recorded)

    assert result.exit_code == 0, result.output
    out = result.stdout
    positions = [out.index(run_id) for run_id in ("stuck-1", LONG_ID, "bad-1", "ok-old")]
    assert positions == sorted(positions)


def test_runs_shows_workflow_status_local_created_time_and_duration(recorded: str) -> None:
    out = invoke("runs", "--db", recorded).stdout

    header = line_with("workflow", out)
    assert header.split() == ["id", "workflow", "status", "created", "duration", "error"]
    old = line_with("ok-old", out)
    assert "pipeline" in old
    assert "completed" in old
    assert datetime.fromtimestamp(T0).strftime("%Y-%m-%d %H:%M:%S") in old  # local time, not UTC
    assert "200 ms" in old  # updated - created: one fetch
    assert line_with("stuck-1", out).split()[2] == "running"


def test_runs_duration_of_failed_run_counts_retries_and_backoff(recorded: str) -> None:
    bad = line_with("bad-1", invoke("runs", "--db", recorded).stdout)

    assert "2.2 s" in bad  # fetch 0.2 + charge 0.5 + backoff 1 + charge 0.5


def test_runs_shows_error_summary_only_for_failed_runs(recorded: str) -> None:
    out = invoke("runs", "--db", recorded).stdout

    assert "StepFailed: step 'charge#0' failed after 2 attempts" in line_with("bad-1", out)
    assert "Error" not in line_with("ok-old", out)
    assert "Error" not in line_with("stuck-1", out)


def test_runs_filters_by_status(recorded: str) -> None:
    failed = invoke("runs", "--db", recorded, "--status", "failed")
    several = invoke("runs", "--db", recorded, "--status", "completed", "--status", "running")
    comma = invoke("runs", "--db", recorded, "--status", "failed,running")

    assert failed.exit_code == several.exit_code == comma.exit_code == 0
    assert "bad-1" in failed.stdout
    assert not any(run_id in failed.stdout for run_id in ("ok-old", LONG_ID, "stuck-1"))
    assert all(run_id in several.stdout for run_id in ("ok-old", LONG_ID, "stuck-1"))
    assert "bad-1" not in several.stdout
    assert "bad-1" in comma.stdout and "stuck-1" in comma.stdout
    assert "ok-old" not in comma.stdout


def test_runs_filters_by_workflow(recorded: str) -> None:
    out = invoke("runs", "--db", recorded, "--workflow", "checkout").stdout

    assert "bad-1" in out
    assert not any(run_id in out for run_id in ("ok-old", LONG_ID, "stuck-1"))


def test_runs_limit_keeps_the_newest_and_says_there_may_be_more(recorded: str) -> None:
    result = invoke("runs", "--db", recorded, "--limit", "2")

    assert result.exit_code == 0
    assert "stuck-1" in result.stdout and LONG_ID in result.stdout
    assert "bad-1" not in result.stdout and "ok-old" not in result.stdout
    assert "--limit" in result.stdout


def test_runs_limit_must_be_positive(recorded: str) -> None:
    result = invoke("runs", "--db", recorded, "--limit", "0")

    assert result.exit_code == 2  # a usage error, from the option's range
    assert "ok-old" not in result.stdout


def test_runs_without_a_match_says_no_runs_with_the_filters_and_exits_0(recorded: str) -> None:
    result = invoke("runs", "--db", recorded, "--status", "pending", "--workflow", "checkout")

    assert result.exit_code == 0
    assert result.stdout.strip() == "no runs with status pending and workflow 'checkout'"


def test_runs_on_an_empty_database_says_no_runs(db_url: str) -> None:
    AgentFlow(db_url).close()  # an agentflow database without runs

    result = invoke("runs", "--db", db_url)

    assert result.exit_code == 0
    assert result.stdout.strip() == "no runs"


def test_runs_unknown_status_prints_the_message_and_exits_1(recorded: str) -> None:
    result = invoke("runs", "--db", recorded, "--status", "done")

    assert result.exit_code == 1
    assert "unknown run status 'done'; use one of pending, running, waiting, paused, completed, failed, cancelled" in (
        result.stderr
    )
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_runs_in_folder_without_database_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTFLOW_DATABASE_URL", raising=False)

    runs = invoke("runs")
    show = invoke("show", "some-run")

    for result in (runs, show):
        assert result.exit_code == 1
        assert "no agentflow database at .agentflow/agentflow.db" in result.stderr
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_db_defaults_to_the_agentflow_database_url_variable(recorded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_DATABASE_URL", recorded)

    result = invoke("runs", "--status", "failed")

    assert result.exit_code == 0
    assert "bad-1" in result.stdout


def test_a_file_that_is_not_an_agentflow_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database " * 100)

    result = invoke("runs", "--db", str(path))

    assert result.exit_code == 1
    assert "is not an agentflow database" in result.stderr
    assert "Traceback" not in result.output
    assert path.read_bytes() == b"these are my notes, not a database " * 100


# -- show -------------------------------------------------------------------------------------------------


def test_show_header_has_status_times_code_version_usage_input_and_output(recorded: str) -> None:
    with AgentFlow(recorded, create=False) as flow:
        code_version = flow.get_run("ok-old").code_version
    assert code_version

    result = invoke("show", "ok-old", "--db", recorded)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "run ok-old" in out
    assert panel_field("workflow", out) == "pipeline"
    assert panel_field("status", out) == "completed"
    assert panel_field("created", out) == datetime.fromtimestamp(T0).strftime("%Y-%m-%d %H:%M:%S")
    assert str(panel_field("updated", out)).endswith("(took 200 ms)")
    assert panel_field("code version", out) == code_version
    assert str(panel_field("usage", out)).startswith("0 tokens")
    assert panel_field("input", out) == '{"args": [3], "kwargs": {}}'
    assert panel_field("output", out) == '"3 items"'
    assert panel_field("error", out) is None


def test_show_lists_steps_with_status_and_error(recorded: str) -> None:
    result = invoke("show", "bad-1", "--db", recorded)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert line_with("kind", out).split() == [
        "seq",
        "key",
        "kind",
        "status",
        "attempts",
        "started",
        "duration",
        "output",
        "/",
        "error",
    ]
    fetch = line_with("fetch#0", out)
    assert fetch.split()[:5] == ["0", "fetch#0", "step", "completed", "1"]
    assert '{"n": 2, "items": [0, 1]}' in fetch
    charge = line_with("charge#0 ", out)
    assert charge.split()[:5] == ["1", "charge#0", "step", "failed", "2"]
    assert f"ValueError: {DECLINED}" in charge  # type and message, the markup printed as it is


def test_show_times_steps_from_the_first_steps_start_in_milliseconds(recorded: str) -> None:
    out = invoke("show", "bad-1", "--db", recorded).stdout

    assert "+0.000s" in line_with("fetch#0", out)
    assert "200 ms" in line_with("fetch#0", out)
    charge = line_with("charge#0 ", out)
    assert "+0.200s" in charge
    assert "2,000 ms" in charge  # two attempts of 0.5 s and 1 s of backoff


def test_show_failed_run_shows_its_error_instead_of_output(recorded: str) -> None:
    out = invoke("show", "bad-1", "--db", recorded).stdout

    assert panel_field("status", out) == "failed"
    assert panel_field("error", out) == f"StepFailed: step 'charge#0' failed after 2 attempts: ValueError: {DECLINED}"
    assert panel_field("output", out) is None


def test_show_traceback_prints_the_recorded_tracebacks(recorded: str) -> None:
    plain = invoke("show", "bad-1", "--db", recorded).stdout
    result = invoke("show", "bad-1", "--traceback", "--db", recorded)

    assert "Traceback (most recent call last)" not in plain
    assert "--traceback" in plain  # says how to see them
    assert result.exit_code == 0
    out = result.stdout
    step_tb = out.index("traceback of step charge#0")
    run_tb = out.index("traceback of run bad-1")
    assert step_tb < run_tb
    assert "raise ValueError(DECLINED)" in out[step_tb:run_tb]  # the source line, from this file
    assert "agentflow.errors.StepFailed" in out[run_tb:]


def test_show_traceback_of_a_run_without_failures_says_there_are_none(recorded: str) -> None:
    out = invoke("show", "ok-old", "-t", "--db", recorded).stdout

    assert "no tracebacks recorded" in out
    assert "Traceback" not in out


def test_show_unfinished_run_without_steps(recorded: str) -> None:
    result = invoke("show", "stuck-1", "--db", recorded)

    assert result.exit_code == 0
    assert panel_field("status", result.stdout) == "running"
    assert "no steps recorded" in result.stdout
    assert "took" not in result.stdout


def test_show_unknown_run_exits_1_with_message(recorded: str) -> None:
    result = invoke("show", "nope", "--db", recorded)

    assert result.exit_code == 1
    assert "no run with id 'nope'; `agentflow runs` lists the runs in this database" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_show_truncates_long_output_and_step_previews(db_url: str) -> None:
    with AgentFlow(db_url, clock=FakeClock()) as flow:

        async def blob() -> str:
            return "x" * 5000

        @flow.workflow(name="big")
        async def big(ctx: Context) -> str:
            return await ctx.step("blob", blob)

        flow.run(big, run_id="big-1")

    out = invoke("show", "big-1", "--db", db_url, columns=1000).stdout

    assert "x" * 400 in str(panel_field("output", out))  # the header shows a good part of it
    assert "x" * 1000 not in out
    assert "x" * 80 not in line_with("blob#0", out)  # the step's preview is short
    assert "…" in line_with("blob#0", out)


def test_show_output_is_json(db_url: str) -> None:
    with AgentFlow(db_url, clock=FakeClock()) as flow:

        @flow.workflow(name="data")
        async def data(ctx: Context) -> dict[str, Any]:
            return {"ok": True, "none": None, "text": "é"}

        flow.run(data, run_id="json-1")

    out = invoke("show", "json-1", "--db", db_url).stdout

    assert json.loads(str(panel_field("output", out))) == {"ok": True, "none": None, "text": "é"}


# -- narrow terminals, help, the console script ----------------------------------------------------------


@pytest.mark.parametrize("command", [["runs"], ["show", "bad-1"], ["show", "bad-1", "--traceback"]])
def test_narrow_terminal_output_stays_within_width_and_keeps_ids_whole(recorded: str, command: list[str]) -> None:
    result = invoke(*command, "--db", recorded, columns=50)

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    if "--traceback" not in command:  # tracebacks are soft-wrapped: the terminal wraps them, copyable
        assert max(len(line.rstrip()) for line in lines) <= 50
    if command == ["runs"]:
        assert all(run_id in result.stdout for run_id in ("ok-old", "bad-1", LONG_ID, "stuck-1"))
    else:
        assert "charge#0" in result.stdout
        assert "ValueError" in result.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["runs", "show"]),
        (["runs"], ["--status", "--workflow", "--limit", "--db", "newest first"]),
        (["show"], ["RUN_ID", "--traceback", "--db", "recorded steps"]),
    ],
)
def test_every_command_and_option_has_help(command: list[str], expected: list[str]) -> None:
    result = invoke(*command, "--help")

    assert result.exit_code == 0
    for text in expected:
        assert text in result.stdout


def test_console_script_is_installed_and_reports_errors_without_traceback(tmp_path: Path) -> None:
    script = shutil.which("agentflow", path=str(Path(sys.executable).parent))
    assert script is not None, "the agentflow console script is not installed next to this Python"

    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    missing = subprocess.run(
        [script, "runs", "--db", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60
    )

    assert helped.returncode == 0, helped.stderr
    assert "runs" in helped.stdout and "show" in helped.stdout
    assert missing.returncode == 1
    assert "no agentflow database at" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_show_previews_a_model_call_by_its_answer_and_tokens(db_url: str) -> None:
    from agentflow.testing import FakeProvider, reply, tool_call

    flow = AgentFlow(db_url)

    @flow.workflow(name="asker")
    async def asker(ctx: Context) -> str:
        first = await ctx.llm(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], api_key="sk-x")
        second = await ctx.llm(model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], api_key="sk-x")
        return f"{first.text}{second.text}"

    with FakeProvider() as fake:
        fake.script(reply("Hello there", usage=(11, 2)), tool_call("lookup_order", {"order_id": "A-1"}, usage=(7, 5)))
        flow.run(asker, run_id="llm-run")
    flow.close()

    result = invoke("show", "llm-run", "--db", db_url)

    assert result.exit_code == 0, result.output
    assert "[11+2 tok] Hello there" in result.output
    assert '[7+5 tok] → lookup_order({"order_id": "A-1"})' in result.output
