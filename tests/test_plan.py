"""Plans: checked, fixed by the model, compiled into a durable graph, re-planned on failure, reused on resume."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import plan_crash_workflow as child  # the script the child processes run, for its constants
import pytest

from agentflow import (
    Agent,
    AgentFlow,
    Plan,
    PlanningAgent,
    RunStatus,
    check_plan,
    plan_step,
    tool,
)
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"
PARAMS = {"api_key": "sk-fake"}
executed: list[str] = []


@tool
def search(topic: str) -> dict[str, Any]:
    """Search for notes on a topic."""
    executed.append(f"search {topic}")
    if topic == "broken":
        raise ConnectionError("the search service is down")
    return {"topic": topic, "notes": [f"{topic} note 1", f"{topic} note 2"]}


@tool
def compare(a: str, b: str) -> str:
    """Compare two things."""
    executed.append("compare")
    return f"{a} | {b}"


writer = Agent(name="writer", model=MODEL, instructions="You write summaries.", params=PARAMS)
TOOLS = {"search": search, "compare": compare}


def plan_json(*steps: Any) -> str:
    return Plan(steps=list(steps)).model_dump_json()


def planner(**options: Any) -> PlanningAgent:
    return PlanningAgent(name="research", model=MODEL, tools=[search, compare], agents=[writer], params=PARAMS,
                         **options)  # fmt: skip


def is_planning(request: dict[str, Any]) -> bool:
    return "response_format" in request


# -- checking -------------------------------------------------------------------------------------------


def test_check_plan_finds_unknown_actions_cycles_dangling_references_and_bad_arguments() -> None:
    plan = Plan(
        steps=[
            plan_step("s1", "search", {"topic": "${s3}"}),
            plan_step("s2", "teleport", {}),
            plan_step("s3", "compare", {"a": "${s1}", "b": "${s9.notes}"}, depends_on=["s7"]),
            plan_step("s2", "search", {"topic": "x", "color": "red"}),
            plan_step("4x", "compare", {"a": "x"}),
            plan_step("s5", "writer", {"topic": "x"}),
        ]
    )
    problems = check_plan(plan, TOOLS, {"writer": writer})
    text = "\n".join(problems)
    assert "no tool or sub-agent 'teleport'" in text and "search, compare, writer" not in text  # sorted listing
    assert "compare, search, writer" in text
    assert "two steps have the id 's2'" in text
    assert "depends on 's7'" in text and "${s9}" in text
    assert "cycle" in text and "s1 -> s3 -> s1" in text
    assert "no argument 'color'" in text and "needs the argument 'b'" in text
    assert "'4x' must start with a letter" in text
    assert "sub-agent 'writer' takes" in text
    assert check_plan(Plan(steps=[plan_step("s1", "search", {"topic": "x"})]), TOOLS, {}) == []
    assert "taken by a step that already finished" in "\n".join(
        check_plan(Plan(steps=[plan_step("s1", "search", {"topic": "${s1}"})]), TOOLS, {}, done={"s1": 1})
    )


# -- running ----------------------------------------------------------------------------------------------


def test_a_plan_runs_as_a_graph_with_parallel_branches_keyed_by_step_id(app: AgentFlow) -> None:
    executed.clear()
    plan = plan_json(
        plan_step("solar", "search", {"topic": "solar"}),
        plan_step("wind", "search", {"topic": "wind"}),
        plan_step("both", "compare", {"a": "${solar.notes.0}", "b": "wind says ${wind.topic}"}),
        plan_step("summary", "writer", {"task": "Summarize ${both}"}),
    )
    with FakeProvider() as fake:
        fake.script(reply(plan), reply("A summary."), reply("Solar wins."))
        run = app.run(planner(), "Solar or wind?")

    assert run.status == RunStatus.COMPLETED, run.error
    result = run.output
    assert result.output == "Solar wins." and result.replans == 0
    assert result.results["both"] == "solar note 1 | wind says wind"
    assert result.results["summary"] == "A summary."
    keys = [s.key for s in run.steps]
    for key in ["plan0.solar#0", "plan0.solar#0/search#0", "plan0.wind#0", "plan0.both#0/compare#0",
                "plan0.summary#0/llm#0", "plan0.summary#0/writer.state#0"]:  # fmt: skip
        assert key in keys
    assert sorted(executed) == ["compare", "search solar", "search wind"]
    assert fake.calls[1]["messages"][-1]["content"].startswith("Summarize ")  # the sub-agent's task, rendered
    assert "response_format" in fake.calls[0]  # the plan was asked for as structured output


def test_a_planner_whose_sub_agent_ran_in_a_graph_node_replays_strictly(app: AgentFlow) -> None:
    # A replay serves each graph node whole: the sub-agent's model call inside it is not made again. Neither
    # how the planner's next conversation is stored (its fingerprint) nor the check that every recorded step
    # was taken may depend on that call.
    plan = plan_json(
        plan_step("solar", "search", {"topic": "solar"}),
        plan_step("summary", "writer", {"task": "Summarize ${solar}"}),
    )
    with FakeProvider() as fake:
        fake.script(reply(plan), reply("A summary."), reply("Solar wins."))
        run = app.run(planner(), "Solar or wind?", run_id="r")
    assert "plan0.summary#0/llm#0" in [s.key for s in run.steps]

    executed.clear()
    with FakeProvider() as fake:  # nothing scripted: a model call would get a 500
        replay = app.replay("r")
        assert fake.call_count == 0
    assert replay.output.output == "Solar wins." and executed == []


def test_an_invalid_plan_goes_back_to_the_model_until_it_is_fixed(app: AgentFlow) -> None:
    bad = plan_json(plan_step("s1", "teleport", {}), plan_step("s2", "compare", {"a": "${s0}", "b": "x"}))
    good = plan_json(plan_step("s1", "search", {"topic": "solar"}))
    with FakeProvider() as fake:
        fake.script(reply(bad), reply("{not a plan"), reply(good), reply("done"))
        run = app.run(planner(), "Solar?")

    assert run.status == RunStatus.COMPLETED, run.error
    feedback = fake.calls[1]["messages"][-1]["content"]
    assert "The plan cannot run" in feedback and "'teleport'" in feedback and "${s0}" in feedback
    assert "not a valid plan" in fake.calls[2]["messages"][-1]["content"]
    assert len(run.output.plans) == 1


def test_a_plan_that_stays_invalid_fails_the_run_after_max_fixes(app: AgentFlow) -> None:
    with FakeProvider() as fake:
        fake.default = reply(plan_json(plan_step("s1", "teleport", {})))
        run = app.run(planner(max_fixes=1), "Go")
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "PlanInvalid" and "teleport" in run.error.message
    assert fake.call_count == 2


def test_a_failed_step_makes_the_model_plan_the_rest_again(app: AgentFlow) -> None:
    executed.clear()
    first = plan_json(
        plan_step("s1", "search", {"topic": "solar"}),
        plan_step("s2", "search", {"topic": "broken"}),
        plan_step("s3", "compare", {"a": "${s1.topic}", "b": "${s2.topic}"}),
    )
    second = plan_json(
        plan_step("s4", "search", {"topic": "wind"}),
        plan_step("s5", "compare", {"a": "${s1.topic}", "b": "${s4.topic}"}),
    )
    with FakeProvider() as fake:
        fake.script(reply(first), reply(second), reply("Compared."))
        run = app.run(planner(), "Compare")

    assert run.status == RunStatus.COMPLETED, run.error
    result = run.output
    assert result.replans == 1 and set(result.failures) == {"s2"}
    assert result.results["s5"] == "solar | wind"
    replan = fake.calls[1]["messages"][-1]["content"]
    assert "s2" in replan and "the search service is down" in replan and "Skipped because of them: s3" in replan
    assert executed.count("search solar") == 1  # s1 finished under the first plan and was not redone
    assert any(s.key == "plan1.s5#0" for s in run.steps)


def test_a_resumed_planner_reuses_its_recorded_plan_and_finished_steps(app: AgentFlow) -> None:
    class Crash(BaseException):
        pass

    crash = {"on": True}

    @tool
    def flaky(topic: str) -> str:
        """Dies the first time."""
        executed.append(f"flaky {topic}")
        if crash["on"]:
            raise Crash
        return topic

    executed.clear()
    research = PlanningAgent(name="research", model=MODEL, tools=[search, flaky], params=PARAMS)
    plan = plan_json(plan_step("s1", "search", {"topic": "solar"}), plan_step("s2", "flaky", {"topic": "${s1.topic}"}))
    with FakeProvider() as fake:
        fake.script(reply(plan))
        with pytest.raises(Crash):
            app.run(research, "Go", run_id="r")
    crash["on"] = False
    with FakeProvider() as fake:
        fake.script(reply("done"))  # a second planning call would find nothing scripted
        run = app.resume("r")
        assert fake.call_count == 1 and not is_planning(fake.calls[0])

    assert run.status == RunStatus.COMPLETED, run.error
    assert executed == ["search solar", "flaky solar", "flaky solar"]  # s2 was in flight when it crashed


# -- a real kill ------------------------------------------------------------------------------------------


def _spawn(mode: str, db_url: str, effects: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("OPENAI_API_KEY", None)
    script = Path(child.__file__)
    return subprocess.Popen(
        [sys.executable, str(script), mode, db_url, "plan-run", str(effects)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_in_the_middle_of_the_graph_then_resume_reuses_the_plan_and_finished_branches(
    db_url: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    proc = _spawn("run", db_url, effects)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)  # an upper bound, not a wait for time to pass
    line = proc.stdout.readline() if ready else ""
    if line.strip() != child.MARKER:
        proc.kill()
        raise AssertionError(f"the child did not block in s3: {line!r} {proc.communicate()[1]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(effects.read_text().splitlines()) == ["compare", "search solar", "search wind"]

    resumed = _spawn("resume", db_url, effects)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "completed", result["error"]
    assert result["output"] == child.ANSWER
    assert result["model_calls"] == 1  # the final answer only: the recorded plan was reused
    # The finished branches did not run again; s3, killed in flight, ran a second time.
    assert sorted(effects.read_text().splitlines()) == ["compare", "compare", "search solar", "search wind"]
    assert result["keys"][0] == "llm#0" and "plan0.s3#0" in result["keys"] and result["keys"][-1] == "llm#1"
