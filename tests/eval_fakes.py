"""A changed version of the example support agent for the eval tests, with an offline model that follows it.

The changed instruction tells the agent never to refund; the fake model then hands a refund to a colleague
instead of calling ``issue_refund`` (and answers as the example's fake model does otherwise), so an eval of
this candidate against the recorded support traces regresses exactly the refund cases.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agentflow import Agent
from agentflow.examples.support_agent import INSTRUCTIONS, RefundLedger, fake_support_model, support_tools
from agentflow.testing import Reply, reply

NEVER_REFUND = " Never issue a refund yourself: hand it to a colleague."
TRACES = Path(__file__).resolve().parent.parent / "evals" / "traces"


def never_refund_agent(ledger_dir: Path, instructions: str = INSTRUCTIONS + NEVER_REFUND) -> Agent:
    """The support agent with another instruction (the candidate of a counterfactual eval)."""
    tools = support_tools(RefundLedger(ledger_dir / "refunds.json"))
    return Agent(name="support", model="gpt-4o-mini", instructions=instructions, tools=tools, max_turns=6,
                 params={"api_key": "sk-test"})  # fmt: skip


def instruction_following_model(request: dict[str, Any]) -> Any:
    """The example's offline support model, which also obeys the never-refund instruction when it is there."""
    answer = fake_support_model(request)
    system = str(request["messages"][0].get("content") or "")
    if NEVER_REFUND.strip() in system and isinstance(answer, Reply) and answer.tool_calls:
        call = answer.tool_calls[0]
        if call.name == "issue_refund":
            order = re.search(r"[A-Z]-\d{4}", call.arguments)
            return reply(f"I've passed your refund for order {order.group(0) if order else '?'} to a colleague.")
    return answer
