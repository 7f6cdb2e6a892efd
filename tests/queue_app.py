"""The app that worker processes of test_workers.py serve (not a test module itself):

    agentflow worker --app tests/queue_app.py:app --queue chain ...

The database is ``$AGENTFLOW_DATABASE_URL``. Every step appends ``RUN_ID STEP PID`` to ``$QUEUE_EFFECTS``
before it returns: the side effects whose count shows what ran how often, and in which process. The first
time a process reaches step ``$QUEUE_BLOCK_AT`` (after its side effect, before it is recorded) it prints
``blocked RUN_ID STEP`` and waits: forever (``$QUEUE_BLOCK_MODE=forever``, the default: until it is killed
or its run is released) or for a line on stdin (``stdin``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from typing import Any

from agentflow import AgentFlow, Context

QUEUE = "chain"
_blocked: list[bool] = []


def expected_output(run_id: str, steps: int) -> str:
    acc = ""
    for i in range(steps):
        acc = hashlib.sha256(f"{acc}:{run_id}:{i}".encode()).hexdigest()[:16]
    return acc


async def work(run_id: str, i: int, acc: str) -> str:
    with open(os.environ["QUEUE_EFFECTS"], "a") as effects:
        effects.write(f"{run_id} {i} {os.getpid()}\n")
    if i == int(os.environ.get("QUEUE_BLOCK_AT", "-1")) and not _blocked:
        _blocked.append(True)
        print(f"blocked {run_id} {i}", flush=True)
        if os.environ.get("QUEUE_BLOCK_MODE") == "stdin":
            await asyncio.to_thread(sys.stdin.readline)
        else:
            await asyncio.Event().wait()
    return hashlib.sha256(f"{acc}:{run_id}:{i}".encode()).hexdigest()[:16]


async def chain(ctx: Context, steps: int) -> str:
    acc = ""
    for i in range(steps):
        acc = await ctx.step("work", work, ctx.run_id, i, acc)
    return acc


def make_app(url: str | None = None) -> AgentFlow:
    flow = AgentFlow(url)
    flow.register(chain, name="chain")
    return flow


def __getattr__(name: str) -> Any:
    if name == "app":  # made when a worker loads tests/queue_app.py:app, on $AGENTFLOW_DATABASE_URL
        made = make_app()
        globals()["app"] = made
        return made
    raise AttributeError(name)
