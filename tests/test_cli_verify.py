"""``agentflow verify``: the hash chains of named runs, or of every run, checked from the shell."""

from __future__ import annotations

import pytest
from dbtools import execute
from nested_restart import nested_then_restarted
from typer.testing import CliRunner, Result

from agentflow import AgentFlow, Context
from agentflow._cli import cli


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(cli, list(args))


@pytest.fixture
def recorded(db_url: str) -> str:
    """Runs "n" (restarted, with records taken out of its middle) and "a-0" .. "a-24" (two steps each)."""

    def double(x: int) -> int:
        return 2 * x

    with AgentFlow(db_url) as flow:
        nested_then_restarted(flow)

        @flow.workflow(name="twice")
        async def twice(ctx: Context, x: int) -> int:
            return await ctx.step("again", double, await ctx.step("once", double, x))

        for i in range(25):
            assert flow.run(twice, i, run_id=f"a-{i}").output == 4 * i
    return db_url


def test_named_runs_that_are_intact_say_so_and_exit_0(recorded: str) -> None:
    result = invoke("verify", "n", "a-3", "--db", recorded)
    assert result.exit_code == 0, result.output
    assert "run n: intact" in result.output and "run a-3: intact" in result.output
    assert "2 run(s) checked: every hash chain holds" in result.output


def test_a_changed_record_is_named_and_exits_1(recorded: str) -> None:
    execute(recorded, "UPDATE steps SET output = '5' WHERE run_id = 'a-3' AND key = 'once#0'")
    result = invoke("verify", "a-3", "a-4", "--db", recorded)
    assert result.exit_code == 1
    assert "run a-3: changed at step 'once#0'" in result.output
    assert "run a-4: intact" in result.output
    assert "1 of 2 run(s) have a broken hash chain" in result.output


def test_all_checks_every_run_and_names_only_the_broken_ones(recorded: str) -> None:
    assert invoke("verify", "--all", "--db", recorded).output.splitlines() == [
        "26 run(s) checked: every hash chain holds"
    ]
    execute(recorded, "UPDATE superseded_steps SET output = '0' WHERE run_id = 'n' AND key = 'last#0'")
    execute(recorded, "DELETE FROM steps WHERE run_id = 'a-7' AND key = 'once#0'")
    result = invoke("verify", "--all", "--db", recorded)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "run n: changed at step 'last#0 (taken out by restart 1)'" in lines
    assert "run a-7: changed at step 'again#0'" in lines
    assert lines[-1].startswith("2 of 26 run(s) have a broken hash chain")


def test_runs_to_check_must_be_named_or_all_and_must_exist(recorded: str) -> None:
    for args in ([], ["n", "--all"]):
        result = invoke("verify", *args, "--db", recorded)
        assert result.exit_code == 1
        assert "name the runs to check, or pass --all (not both)" in result.output
    result = invoke("verify", "n", "nope", "--db", recorded)
    assert result.exit_code == 1
    assert "no run with id 'nope'" in result.output
