"""A customer-support agent: looks orders up, refunds damaged ones, never refunds twice.

    python examples/support_agent.py                          # offline: a scripted model, no API key
    python examples/support_agent.py --model gpt-4o-mini      # a real model through litellm (OPENAI_API_KEY)
    python examples/support_agent.py --ticket "Order A-1002 arrived broken, I want my money back"

Every model turn and tool call is a recorded step in the database (SQLite by default): run it again with the
same ``--run-id`` and the recorded run comes back without calling anything. ``issue_refund`` is declared
non-idempotent and takes an ``IdempotencyKey``: the payments service (here a JSON file) uses it to
recognise a refund it has already made, so even a crash in the middle of a refund pays out once. A
refund above ``APPROVAL_LIMIT`` waits for a person: the run is suspended until an ``approval`` event comes
(offline, a simulated supervisor approves at once; ``--no-approve`` leaves it waiting).

``agentflow demo`` runs this agent, kills it halfway, resumes it and replays it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

from agentflow import Agent, AgentFlow, IdempotencyKey, Tool, tool

OFFLINE_MODEL = "gpt-4o-mini"  # the name the offline fake answers to (it fakes OpenAI's API)
INSTRUCTIONS = (
    "You are the support agent of an online shop. Look the order up before you answer. Refund an order "
    "only when it arrived damaged, for its full total, and say so in one short paragraph."
)

APPROVAL_LIMIT = 30.0  # refunds above this wait, durably, for a person's approval (an "approval" event)

ORDERS: dict[str, dict[str, Any]] = {
    "A-1001": {"item": "kettle", "total": 39.0, "status": "delivered", "damaged": True},
    "A-1002": {"item": "desk lamp", "total": 24.5, "status": "delivered", "damaged": True},
    "A-1003": {"item": "teapot", "total": 18.0, "status": "in transit", "damaged": False},
}


class RefundLedger:
    """The payments service, as a JSON file: refunds by idempotency key, so a retried refund is one refund."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def refunds(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        data: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        return data

    def refund(self, key: str, order_id: str, amount: float) -> dict[str, Any]:
        with self._lock:
            refunds = self.refunds()
            if key not in refunds:  # a key seen before is the same refund asked again: pay once
                refunds[key] = {"refund_id": f"R-{len(refunds) + 1:04d}", "order_id": order_id, "amount": amount}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(refunds, indent=2))
            return refunds[key]


def support_tools(ledger: RefundLedger) -> list[Tool]:
    @tool
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up by its id (like A-1001): the item, its total, where it is, whether it is damaged."""
        order = ORDERS.get(order_id.strip().upper())
        if order is None:
            raise ValueError(f"there is no order {order_id!r}")
        return {"order_id": order_id, **order}

    @tool(idempotent=False, needs_approval=lambda args: float(args.get("amount", 0)) > APPROVAL_LIMIT)
    def issue_refund(order_id: str, amount: float, reason: str, key: IdempotencyKey) -> dict[str, Any]:
        """Refund ``amount`` on an order, giving the reason. Pays out money: call it once per order."""
        order = ORDERS.get(order_id)
        if order is None:
            raise ValueError(f"there is no order {order_id!r}")
        if amount > order["total"]:
            raise ValueError(f"{amount} is more than the order's total of {order['total']}")
        return ledger.refund(key, order_id, amount)

    return [lookup_order, issue_refund]


def build_agent(ledger: RefundLedger, model: str = OFFLINE_MODEL, params: dict[str, Any] | None = None) -> Agent:
    """The support agent; ``params`` go to every model call (the offline run passes a fake API key)."""
    return Agent(
        name="support",
        model=model,
        instructions=INSTRUCTIONS,
        tools=support_tools(ledger),
        max_turns=6,
        params=params,
    )


# The agent, kept in a module-level variable so that its runs record where the code lives
# (agentflow.examples.support_agent:agent): `agentflow replay` and the pytest plugin that replays
# tests/bundles import it from there. A replay never pays out, so its ledger file is never written then.
agent = build_agent(RefundLedger(Path(".agentflow/refunds.json")))


def fake_support_model(request: dict[str, Any]) -> Any:
    """The offline model: answers like a careful support model would, decided from the conversation so far.

    A responder for ``agentflow.testing.FakeProvider``: it takes the request body litellm sent and returns
    the next assistant turn (a tool call or the final text).
    """
    from agentflow.testing import reply, tool_call

    messages = request["messages"]
    ticket = next(m["content"] for m in messages if m["role"] == "user")
    results = _tool_results(messages)
    found = re.search(r"[A-Z]-\d{4}", ticket)
    if found is None:
        return reply("Could you tell me your order number? It looks like A-1001.")
    order_id = found.group(0)
    if "lookup_order" not in results:
        return tool_call("lookup_order", {"order_id": order_id})
    order = results["lookup_order"]
    if isinstance(order, str):  # the tool said what went wrong
        return reply(f"I could not find order {order_id}. Could you check the number?")
    wants_refund = re.search(r"refund|broken|damaged|money back", ticket, re.IGNORECASE)
    if wants_refund and order["damaged"] and "issue_refund" not in results:
        return tool_call("issue_refund", {"order_id": order_id, "amount": order["total"], "reason": "arrived damaged"})
    refund = results.get("issue_refund")
    if isinstance(refund, dict):
        return reply(
            f"I'm sorry your {order['item']} arrived damaged. I've refunded the full ${refund['amount']:.2f} "
            f"for order {order_id} (refund {refund['refund_id']}); it reaches your card in 3-5 working days."
        )
    return reply(f"Your {order['item']} (order {order_id}) is {order['status']}.")


def _tool_results(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Tool name -> its last result (parsed JSON, or the error text) from the conversation."""
    names = {
        call["id"]: call["function"]["name"]
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    }
    results: dict[str, Any] = {}
    for m in messages:
        if m["role"] == "tool":
            try:
                results[names[m["tool_call_id"]]] = json.loads(m["content"])
            except ValueError:
                results[names[m["tool_call_id"]]] = m["content"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a litellm model name; without it the offline fake model answers")
    parser.add_argument("--db", default=None, help="database (default: $AGENTFLOW_DATABASE_URL or ./.agentflow)")
    parser.add_argument("--ticket", default="My kettle from order A-1001 arrived broken. Can I get a refund?")
    parser.add_argument("--run-id", default=None, help="name the run; the same id again returns the recorded run")
    parser.add_argument("--ledger", default=".agentflow/refunds.json", help="the fake payments service's file")
    parser.add_argument("--no-approve", action="store_true", help="offline: leave a refund's approval pending")
    args = parser.parse_args(argv)

    ledger = RefundLedger(Path(args.ledger))
    with AgentFlow(args.db) as app:
        if args.model:
            support = build_agent(ledger, args.model)
            run = app.run(support, args.ticket, run_id=args.run_id)
        else:
            from agentflow.testing import FakeProvider

            support = build_agent(ledger, params={"api_key": "sk-offline"})
            with FakeProvider() as fake:
                fake.default = fake_support_model
                run = app.run(support, args.ticket, run_id=args.run_id)
                if run.status == "waiting" and run.waiting_for == "approval" and not args.no_approve:
                    print(f"run {run.id} waits for a person to approve a refund above ${APPROVAL_LIMIT:.2f}")
                    print("  (offline, a supervisor approves it now: agentflow send-event RUN_ID approval ...)")
                    app.send_event(run.id, "approval", {"approved": True, "by": "supervisor"})
                    run = app.resume(run.id)
        for step in run.steps:
            print(f"  {step.key:22} {step.kind!s:10} {step.status}")
        if run.status == "waiting":
            print(
                f"run {run.id} is waiting for {run.waiting_for}: approve it with\n"
                f"  agentflow send-event {run.id} approval '{{\"approved\": true}}' && agentflow resume {run.id}"
            )
            return 0
        if run.error is not None:
            print(f"run {run.id} {run.status}: {run.error}", file=sys.stderr)
            return 1
        print(f"run {run.id} {run.status}, {run.usage.total_tokens} tokens\n\n{run.output.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
