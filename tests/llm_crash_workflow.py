"""A workflow of two model calls, run in child processes by test_llm_crash.py (not a test module itself).

    python llm_crash_workflow.py run    DB RUN_ID CALLS   # blocks between the two calls, to be SIGKILLed
    python llm_crash_workflow.py resume DB RUN_ID CALLS   # resumes the run
    python llm_crash_workflow.py fresh  DB RUN_ID CALLS   # a new run under the resume's script (a control)

Each process answers model calls with its own ``FakeProvider``: ``run`` is scripted with the first reply
only, ``resume`` and ``fresh`` with the second reply only, so a process that asks the model more often than
that gets an HTTP 500 ("no scripted response left") and, with no retries, a failed run.

Every process appends one JSON line to CALLS: its mode and the request bodies its provider received (``run``
before it blocks). In ``run`` mode a step between the two calls then prints ``blocked after llm#0`` and waits
on stdin forever, so the parent can SIGKILL the process right there. ``resume`` and ``fresh`` print the run
as a JSON line. No connection leaves this machine: off-loopback connects are refused and reported.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from agentflow import AgentFlow, Context, RetryPolicy
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"
QUESTION = "Where is my order A-17?"
FOLLOW_UP = "When will it arrive?"
FIRST_REPLY = "Order A-17 left the warehouse on Monday."
SECOND_REPLY = "It should arrive on Thursday."
MARKER = "blocked after llm#0"

blocked_connections: list[str] = []


def _refuse_the_network() -> None:
    """Refuse (and remember) every connection off loopback: litellm must not reach the network."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and str(address[0]) not in ("127.0.0.1", "::1", "localhost"):
            blocked_connections.append(repr(address))
            raise OSError(f"llm_crash_workflow: no network (tried {address!r})")
        real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]


def _append(path: str, entry: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def main(argv: list[str]) -> int:
    mode, db, run_id, calls_path = argv[:4]
    _refuse_the_network()
    app = AgentFlow(db, llm_retry=RetryPolicy(max_attempts=1))  # a 500 fails the call at once, no sleeping
    fake = FakeProvider()

    def pause() -> None:
        if mode == "run":
            _append(calls_path, {"mode": mode, "calls": fake.calls, "blocked_connections": blocked_connections})
            print(MARKER, flush=True)
            sys.stdin.readline()  # never answered: the parent kills us here

    @app.workflow(name="two_calls")
    async def two_calls(ctx: Context, question: str) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        first = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")
        await ctx.step("pause", pause)
        messages += [first.message(), {"role": "user", "content": FOLLOW_UP}]
        second = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")
        return {"first": first.text, "second": second.text, "first_replayed": first.replayed}

    with fake:
        fake.script(reply(FIRST_REPLY) if mode == "run" else reply(SECOND_REPLY))
        run = app.resume(run_id) if mode == "resume" else app.run(two_calls, QUESTION, run_id=run_id)
    _append(calls_path, {"mode": mode, "calls": fake.calls, "blocked_connections": blocked_connections})
    result = {
        "status": str(run.status),
        "output": run.output,
        "error": None if run.error is None else {"type": run.error.type, "message": run.error.message},
        "unexpected": len(fake.unexpected),
    }
    print(json.dumps(result), flush=True)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
