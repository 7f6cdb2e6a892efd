"""A research agent that plans: the model writes a plan, agentflow runs it as a durable graph.

    python examples/research_agent.py                        # offline: a scripted model, no API key
    python examples/research_agent.py --model gpt-4o-mini    # a real model through litellm (OPENAI_API_KEY)
    python examples/research_agent.py --question "Heat pump or gas boiler for an old house?"

The planner asks the model for a ``Plan`` (structured output): one search per option, side by side, then a
comparison and a write-up by a sub-agent. agentflow checks the plan (unknown tools, cycles, dangling
``${step}`` references go back to the model), runs independent steps concurrently, keys every step by its
plan id (``plan0.search_a#0``), and re-plans if a step fails. Resumed after a crash, the run reuses the
recorded plan and the finished branches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from agentflow import Agent, AgentFlow, PlanningAgent, Run, tool

OFFLINE_MODEL = "gpt-4o-mini"
NOTES: dict[str, list[str]] = {
    "solar": ["panels last 25-30 years", "output drops in winter", "about $1.10 per watt installed"],
    "wind": ["a small turbine needs steady wind above 5 m/s", "moving parts need yearly service", "about $3 per watt"],
    "heat pump": ["3-4 units of heat per unit of power", "needs good insulation to shine"],
    "gas boiler": ["cheap to install", "fuel prices swing", "burns fossil fuel"],
}


@tool
async def search_notes(topic: str) -> list[str]:
    """Search the notes about a topic (solar, wind, heat pump, gas boiler): a list of short facts."""
    await asyncio.sleep(0.2)  # a slow service: the two searches of a comparison overlap
    facts = NOTES.get(topic.lower().strip())
    if facts is None:
        raise ValueError(f"no notes on {topic!r}; topics: {', '.join(NOTES)}")
    return facts


@tool
def compare(first: str, second: str, first_facts: list[str], second_facts: list[str]) -> dict[str, Any]:
    """Put two options' facts side by side."""
    return {first: first_facts, second: second_facts}


def build_planner(model: str = OFFLINE_MODEL, params: dict[str, Any] | None = None) -> PlanningAgent:
    writer = Agent(name="writer", model=model, instructions="You write a clear five-sentence comparison.",
                   params=params)  # fmt: skip
    return PlanningAgent(
        name="research",
        model=model,
        instructions="You research questions by planning searches, a comparison and a write-up.",
        tools=[search_notes, compare],
        agents=[writer],
        concurrency=4,
        params=params,
    )


# The planner, kept in a module-level variable so that its runs record where the code lives
# (agentflow.examples.research_agent:planner), for `agentflow replay` and the replays of tests/bundles.
planner = build_planner()


def fake_research_model(request: dict[str, Any]) -> Any:
    """The offline model: plans two searches side by side, a comparison and a write-up, then answers."""
    from agentflow.testing import reply

    messages = request["messages"]
    last = messages[-1]["content"] or ""
    if "response_format" in request:  # asked for a plan
        goal = next(m["content"] for m in messages if m["role"] == "user")
        first, second = ([*_topics(goal), "solar", "wind"])[:2]
        steps = [
            _step("search_a", "search_notes", {"topic": first}, f"facts on {first}"),
            _step("search_b", "search_notes", {"topic": second}, f"facts on {second}"),
            _step(
                "compare",
                "compare",
                {"first": first, "second": second, "first_facts": "${search_a}", "second_facts": "${search_b}"},
                "side by side",
            ),
            _step("write", "writer", {"task": "Compare for a reader: ${compare}"}, "the write-up"),
        ]
        return reply(json.dumps({"steps": steps}))
    if last.startswith("Compare for a reader"):  # the writer sub-agent
        facts = json.loads(last.split(": ", 1)[1])
        (a, fa), (b, fb) = facts.items()
        return reply(f"{a.title()}: {'; '.join(fa)}. {b.title()}: {'; '.join(fb)}.")
    written = re.search(r"- write: (.*)", last)
    return reply(f"In short: {written.group(1) if written else 'see the comparison'}")


def _topics(text: str) -> list[str]:
    return [t for t in NOTES if t in text.lower()]


def _step(id: str, action: str, args: dict[str, Any], why: str) -> dict[str, Any]:
    return {"id": id, "action": action, "args": json.dumps(args), "depends_on": [], "why": why}


def timeline(run: Run) -> list[str]:
    """The plan's steps with when they ran, from the record: overlapping bars ran at the same time."""
    nodes = [s for s in run.steps if s.key.startswith("plan") and "/" not in s.key]
    if not nodes:
        return []
    t0 = min(s.started_at for s in nodes)
    span = max((s.finished_at - t0).total_seconds() for s in nodes) or 1.0
    lines = []
    for s in nodes:
        start = int((s.started_at - t0).total_seconds() / span * 40)
        end = max(int((s.finished_at - t0).total_seconds() / span * 40), start + 1)
        lines.append(f"  {s.key:20} {' ' * start}{'█' * (end - start)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a litellm model name; without it the offline fake model answers")
    parser.add_argument("--db", default=None, help="database (default: $AGENTFLOW_DATABASE_URL or ./.agentflow)")
    parser.add_argument("--question", default="Solar or wind for a small farm?")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)

    with AgentFlow(args.db) as app:
        if args.model:
            run = app.run(build_planner(args.model), args.question, run_id=args.run_id)
        else:
            from agentflow.testing import FakeProvider

            with FakeProvider() as fake:
                fake.default = fake_research_model
                run = app.run(build_planner(params={"api_key": "sk-offline"}), args.question, run_id=args.run_id)
        if run.error is not None:
            print(f"run {run.id} {run.status}: {run.error}", file=sys.stderr)
            return 1
        result = run.output
        print(f"run {run.id} {run.status}: {len(result.plans)} plan(s), {len(run.steps)} recorded steps")
        print("the plan's steps, as they ran:")
        print("\n".join(timeline(run)))
        print(f"\n{result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
