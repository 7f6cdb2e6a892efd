"""A planning agent run in child processes by test_plan.py (not a test module itself).

    python plan_crash_workflow.py run    DB RUN_ID EFFECTS   # blocks inside step s3 of the plan, to be SIGKILLed
    python plan_crash_workflow.py resume DB RUN_ID EFFECTS   # resumes the run

The plan: s1 = search("solar") and s2 = search("wind") run side by side, then s3 = compare(${s1}, ${s2}).
Every tool execution appends a line to EFFECTS. In ``run`` mode, s3 prints ``blocked in s3`` and waits on
stdin forever, so the parent can SIGKILL the process in the middle of the graph. The fake model of ``run``
answers the planning call and nothing else; that of ``resume`` only the final answer, so a resume that asked
for a new plan would get an HTTP 500 and fail. ``resume`` prints the run as a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from agentflow import AgentFlow, PlanningAgent, RetryPolicy, tool
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"
MARKER = "blocked in s3"
PLAN = {
    "steps": [
        {"id": "s1", "action": "search", "args": '{"topic": "solar"}', "depends_on": [], "why": ""},
        {"id": "s2", "action": "search", "args": '{"topic": "wind"}', "depends_on": [], "why": ""},
        {"id": "s3", "action": "compare", "args": '{"a": "${s1}", "b": "${s2}"}', "depends_on": [], "why": ""},
    ]
}
ANSWER = "Solar beats wind here."


def build(effects: str, block: bool) -> PlanningAgent:
    def effect(line: str) -> None:
        with open(effects, "a") as f:
            f.write(line + "\n")

    @tool
    def search(topic: str) -> str:
        """Search the web for a topic."""
        effect(f"search {topic}")
        return f"notes on {topic}"

    @tool
    def compare(a: str, b: str) -> str:
        """Compare two sets of notes."""
        effect("compare")
        if block:
            print(MARKER, flush=True)
            sys.stdin.readline()  # the parent kills the process while it waits here
        return f"{a} vs {b}"

    return PlanningAgent(name="research", model=MODEL, tools=[search, compare], params={"api_key": "sk-fake"})


def main(argv: list[str]) -> int:
    mode, db, run_id, effects = argv[:4]
    planner = build(effects, block=mode == "run")
    app = AgentFlow(db, llm_retry=RetryPolicy(max_attempts=1))
    app.register(planner)
    with FakeProvider() as fake:
        if mode == "run":
            fake.script(reply(json.dumps(PLAN)))
            app.run(planner, "Solar or wind?", run_id=run_id)
            return 1  # not reached: killed in s3
        fake.script(reply(ANSWER))
        run = app.resume(run_id)
    out: dict[str, Any] = {
        "status": str(run.status),
        "error": None if run.error is None else str(run.error),
        "output": None if run.output is None else run.output.output,
        "keys": [s.key for s in run.steps],
        "model_calls": fake.call_count,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
