"""``agentflow replay``, ``fork``, ``diff`` and ``step``: the record, from the shell, finding the code by itself."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from agentflow import Agent, AgentFlow, IdempotencyKey, tool
from agentflow._cli import cli
from agentflow.testing import FakeProvider, reply, tool_call

MODEL = "gpt-4o-mini"
refunds: dict[str, float] = {}


@tool(idempotent=False)
def issue_refund(order_id: str, amount: float, key: IdempotencyKey) -> str:
    """Refund an order."""
    refunds.setdefault(key, amount)
    return f"refunded {amount} on {order_id}"


# Module level, so that its runs record a ref (test_cli_replay:support) the CLI can import.
support = Agent(name="support", model=MODEL, instructions="Refund damaged orders.", tools=[issue_refund],
                params={"api_key": "sk-fake"})  # fmt: skip


def invoke(*args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "200", "FORCE_COLOR": None, "NO_COLOR": "1"})
    return runner.invoke(cli, list(args))


def record_run(db_url: str) -> None:
    with AgentFlow(db_url) as app, FakeProvider() as fake:
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded."))
        run = app.run(support, "Refund A-1", run_id="r")
    assert run.workflow_ref == "test_cli_replay:support"


def test_replay_finds_the_code_from_the_recorded_ref_and_says_it_matched(db_url: str) -> None:
    record_run(db_url)
    result = invoke("replay", "r", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "the replay of r matched its record: 5 steps served, nothing called" in result.output


def test_a_diverging_replay_prints_the_report_and_exits_1(db_url: str) -> None:
    record_run(db_url)
    support.instructions = "Never refund."
    try:
        result = invoke("replay", "r", "--db", db_url)
    finally:
        support.instructions = "Refund damaged orders."
    assert result.exit_code == 1
    assert "diverged from its record at step 'llm#0'" in result.output
    assert "replace /messages/0/content 'Never refund.'" in result.output


def test_fork_with_new_text_then_diff_and_step(db_url: str) -> None:
    record_run(db_url)
    refunds.clear()
    with FakeProvider():
        forked = invoke("fork", "r", "--at", "llm#0", "--text", "No refund today.", "--db", db_url)
    assert forked.exit_code == 0, forked.output
    fork_id = forked.output.split()[1]
    assert f"fork {fork_id} of r at llm#0: completed" in forked.output
    assert refunds == {}  # the fork never reached the refund

    diff = invoke("diff", "r", fork_id, "--db", db_url)
    assert diff.exit_code == 0, diff.output
    assert "llm#0" in diff.output and "No refund today." in diff.output
    assert "issue_refund#0" in diff.output and "only in r" in diff.output

    step = invoke("step", fork_id, "llm#0", "--db", db_url)
    assert step.exit_code == 0, step.output
    assert "Refund A-1" in step.output  # the request, with its messages spelled out
    assert "No refund today." in step.output
    assert "given by the fork: an edited copy of run r's record" in step.output
    copied = invoke("step", fork_id, "support.state#0", "--db", db_url)
    assert "live, in this run" in copied.output
    same = invoke("show", fork_id, "--step", "llm#0", "--db", db_url)
    assert same.exit_code == 0 and "request" in same.output and "No refund today." in same.output


def test_replay_without_a_ref_asks_for_app(db_url: str) -> None:
    with AgentFlow(db_url) as app:

        @app.workflow(name="inner")
        async def inner(ctx: object) -> int:
            return 1

        app.run(inner, run_id="x")
    result = invoke("replay", "x", "--db", db_url)
    assert result.exit_code == 1 and "pass --app module:attribute" in result.output


def test_step_and_fork_refuse_unknown_keys(db_url: str) -> None:
    record_run(db_url)
    assert "has no step 'llm#7'" in invoke("step", "r", "llm#7", "--db", db_url).output
    assert "no step 'llm#7' to fork at" in invoke("fork", "r", "--at", "llm#7", "--db", db_url).output
    bad = invoke("fork", "r", "--at", "llm#0", "--json", "{oops", "--db", db_url)
    assert bad.exit_code == 1 and "--json is not JSON" in bad.output
