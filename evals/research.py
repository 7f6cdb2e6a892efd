"""Eval suite of the planning research agent (examples/research_agent.py) over its recorded traces.

    agentflow eval evals/ --suite research

The candidate plans again (the offline fake model) and runs its plan against the recorded world: the
searches and the comparison are served from the record, so the suite takes no time on the slow search
service. The two searches run side by side, so they are recorded in the order they finished: the
trajectory is compared without order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentflow import PlanningAgent
from agentflow.evals import Dataset, Suite, no_errors, output_contains, step_count, tool_args_match, trajectory_match
from agentflow.examples.research_agent import build_planner, fake_research_model
from agentflow.testing import FakeProvider

TRACES = Path(__file__).resolve().parent / "traces" / "research"

EXPECTED: dict[str, dict[str, Any]] = {
    "research-solar-wind": {"contains": ["Solar:", "Wind:"]},
    "research-heat-pump": {"contains": ["Heat Pump:", "Gas Boiler:"]},
}


def candidate() -> PlanningAgent:
    return build_planner(params={"api_key": "sk-offline"})


def offline() -> FakeProvider:
    fake = FakeProvider()
    fake.default = fake_research_model
    return fake


suite = Suite(
    name="research",
    dataset=Dataset.from_bundles(TRACES, expectations=EXPECTED, name="research-traces"),
    agent=candidate,
    scorers=[
        trajectory_match("unordered"),
        tool_args_match(),
        output_contains(),
        no_errors(),
        step_count(max_ratio=1.5),
    ],
    thresholds={"pass_rate": 1.0},
    context=offline,
)
