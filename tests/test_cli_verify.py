"""``agentflow verify``: the hash chains of named runs, or of every run, checked from the shell."""

from __future__ import annotations

import re

import pytest
from dbtools import execute
from nested_restart import nested_then_restarted
from typer.testing import CliRunner, Result

from agentflow import AgentFlow, Context
from agentflow._chain import chain_hash, genesis
from agentflow._cli import cli
from agentflow._store._packing import pack_digest, pack_json


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


def head_of(result: Result, run_id: str) -> str:
    found = re.search(rf"run {run_id}: intact, \d+ steps, chain head ([0-9a-f]{{64}})", result.output)
    assert found is not None, result.output
    return found.group(1)


def rewrite_with_a_new_chain(db_url: str, run_id: str, key: str, output: str) -> None:
    """What someone with write access can do: change a record and make every link after it fit again."""
    with AgentFlow(db_url) as flow:
        steps = flow._store.load_steps(run_id)
    previous = genesis(run_id)
    for step in steps:
        if step.key == key:
            step = step._replace(output=output)
        link = chain_hash(previous, step.key, step.kind, step.fingerprint, step.status, step.output, step.error)
        execute(
            db_url,
            "UPDATE steps SET output = :output, chain = :chain WHERE run_id = :run AND key = :key",
            output=pack_json(step.output), chain=pack_digest(link), run=run_id, key=step.key,
        )  # fmt: skip
        previous = link


def test_a_kept_head_catches_a_record_rewritten_with_every_link_after_it(recorded: str) -> None:
    head = head_of(invoke("verify", "a-3", "--db", recorded), "a-3")
    passes = invoke("verify", "a-3", "--head", head, "--db", recorded)
    assert passes.exit_code == 0, passes.output
    assert f"run a-3: its chain passes through {head} at step 'again#0'" in passes.output

    rewrite_with_a_new_chain(recorded, "a-3", "once#0", "7")
    assert invoke("verify", "a-3", "--db", recorded).exit_code == 0  # the chain alone cannot tell
    caught = invoke("verify", "a-3", "--head", head, "--db", recorded)
    assert caught.exit_code == 1
    assert f"run a-3: its chain does not pass through {head}" in caught.output


def test_a_head_noted_before_a_restart_is_found_among_the_records_it_took_out(db_url: str) -> None:
    with AgentFlow(db_url) as flow:
        nested_then_restarted(flow)
        head = head_of(invoke("verify", "n", "--db", db_url), "n")
        flow.restart("n", from_key="side#0")  # side#0 now links to first#0: every link from it on is new
    assert head_of(invoke("verify", "n", "--db", db_url), "n") != head
    result = invoke("verify", "n", "--head", head, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert f"passes through {head} at step 'last#0'" in result.output  # a record restart 2 took out


def test_head_checks_one_named_run(recorded: str) -> None:
    for args in (["n", "a-1"], ["--all"]):
        result = invoke("verify", *args, "--head", "0" * 64, "--db", recorded)
        assert result.exit_code == 1
        assert "--head checks one run: name it" in result.output
