"""Eval suite of the support agent (examples/support_agent.py) over its recorded traces.

    agentflow eval evals/ --suite support

The dataset is the runs in ``traces/support/`` (recorded offline by ``record_traces.py``). The candidate
is the agent as the example builds it now, run counterfactually against each recorded run's world: the
model is asked again (here the example's offline fake model, so the suite runs in CI without a key), tool
calls are served from the record, and a call the record cannot answer gets an error result. To try a
change before shipping it, edit ``candidate`` (another prompt, model or tool) and run the suite against a
real model: drop ``context=`` and pass a real ``model=`` to ``build_agent``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from agentflow import Agent
from agentflow.evals import (
    Dataset,
    Suite,
    cost,
    latency,
    llm_judge,
    no_errors,
    output_contains,
    step_count,
    tokens,
    tool_args_match,
    trajectory_match,
)
from agentflow.examples.support_agent import RefundLedger, build_agent, fake_support_model
from agentflow.testing import FakeProvider, reply

TRACES = Path(__file__).resolve().parent / "traces" / "support"
OFFLINE = {"api_key": "sk-offline"}  # the fake model answers; litellm only wants a key to send (never recorded)

# What each recorded case's answer must say, whatever the version: the trajectory scorers compare with the
# recorded runs themselves.
EXPECTED: dict[str, dict[str, Any]] = {
    "support-refund-lamp": {"contains": ["refunded", "A-1002"]},
    "support-refund-kettle": {"contains": ["refunded", "A-1001"]},
    "support-status-teapot": {"contains": ["in transit"]},
    "support-refund-undamaged": {"contains": ["in transit"]},
    "support-unknown-order": {"contains": ["could not find"]},
    "support-no-order-number": {"contains": ["order number"]},
}


def candidate() -> Agent:
    """The version under evaluation: the example's agent as it is now, with a ledger of its own (a
    counterfactual run never pays a refund, but a fresh one would)."""
    ledger = RefundLedger(Path(tempfile.mkdtemp(prefix="agentflow-eval-")) / "refunds.json")
    return build_agent(ledger, params=OFFLINE)


def fake_judge(request: dict[str, Any]) -> Any:
    """The offline judge: a kind answer that says what happens next scores 1, a bare one 0.5."""
    answer = request["messages"][-1]["content"].rsplit("The assistant's answer:\n", 1)[-1].lower()
    helpful = any(word in answer for word in ("refunded", "is in transit", "could you", "check the number"))
    score, why = (1.0, "clear about what happens next") if helpful else (0.5, "correct but bare")
    return reply(f'{{"score": {score}, "explanation": "{why}"}}')


def offline_model(request: dict[str, Any]) -> Any:
    """Answers for the support model and for the judge, offline."""
    if str(request["messages"][0].get("content", "")).startswith("You grade an AI assistant's work"):
        return fake_judge(request)
    return fake_support_model(request)


def offline() -> FakeProvider:
    fake = FakeProvider()
    fake.default = offline_model
    return fake


suite = Suite(
    name="support",
    dataset=Dataset.from_bundles(TRACES, expectations=EXPECTED, name="support-traces"),
    agent=candidate,
    scorers=[
        trajectory_match("strict"),
        tool_args_match(),
        output_contains(ignore_case=True),
        no_errors(tool_errors=False),  # a lookup of an unknown order fails by design; the agent handles it
        llm_judge("The answer is kind and tells the customer what happens next.", model="gpt-4o-mini", params=OFFLINE),
        step_count(max_ratio=1.5),
        tokens(max_ratio=1.5),
        cost(),
        latency(),
    ],
    thresholds={"pass_rate": 1.0, "judge": 1.0},
    max_regression=0.0,
    concurrency=4,
    context=offline,
)
