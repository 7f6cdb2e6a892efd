"""The app that the worker processes of ``worker_chaos.py`` serve (not a test module itself):

    agentflow worker --app tests/chaos_app.py:app --queue chaos ...

The database is ``$AGENTFLOW_DATABASE_URL``. A run of ``chaos`` makes ``rounds`` rounds of ``width`` gathered
steps (async and sync, each taking a few milliseconds, so that a SIGKILL often lands inside one) and, at the
end of each round, a payment (a non-idempotent tool taking its ``IdempotencyKey``) and, with ``llm``, a model
call (``ctx.llm`` through litellm to a ``FakeProvider`` inside the worker process, sent with the API key
``$CHAOS_API_KEY``); with ``event``, after its first round it waits durably for an event ``go`` (sent by the
harness: ``event_payload``); with ``nap_seconds``, it first waits for a child run that sleeps durably that
long, then makes one step (round -1). Every execution of a step, a payment or a model call (the fake
provider answering it) appends one line to ``$CHAOS_EFFECTS`` first, written with one ``write`` to a file
opened for appending (lines of several processes do not mix), so the file holds every execution in the
order they happened:

    step RUN ROUND J PID NONCE      a step; it returns its NONCE (unique to this execution) with its value
    pay RUN ROUND PID NONCE KEY     a payment, with the idempotency key it was given (it returns its NONCE)
    llm RUN ROUND PID NONCE         a model call answered; the answer's text is its NONCE

The run's output depends only on its id and its shape (``expected_output``), never on which worker ran what.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from typing import Any

from agentflow import AgentFlow, Context, IdempotencyKey, tool
from agentflow.testing import FakeProvider, Reply, reply

QUEUE = "chaos"
MODEL = "gpt-4o-mini"
API_KEY = "CHAOS_API_KEY"  # the variable holding the key the workers send (it must never be stored)
_nonces = itertools.count()


def _effect(line: str) -> None:
    fd = os.open(os.environ["CHAOS_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _value(acc: str, run_id: str, r: int, j: int) -> str:
    return hashlib.sha256(f"{acc}:{run_id}:{r}:{j}".encode()).hexdigest()[:12]


def _pause(run_id: str, r: int, j: int) -> float:
    """2-40 ms, varying with the step (the same in every process)."""
    return 0.002 + (hashlib.sha256(f"{run_id}:{r}:{j}".encode()).digest()[0] % 39) / 1000


def event_payload(run_id: str) -> str:
    """What the harness sends a run that waits for ``go`` (folded into its output)."""
    return f"go:{run_id}"


def expected_output(run_id: str, rounds: int, width: int, nap_seconds: float = 0.0, event: bool = False) -> str:
    acc = _value("nap", run_id, -1, 0) if nap_seconds else ""
    for r in range(rounds):
        acc = _value("|".join(_value(acc, run_id, r, j) for j in range(width)), run_id, r, -1)
        if event and r == 0:
            acc = _value(acc, event_payload(run_id), r, -2)
    return acc


def _nonce() -> str:
    return f"{os.getpid()}.{next(_nonces)}"


async def work(run_id: str, r: int, j: int, acc: str) -> dict[str, str]:
    nonce = _nonce()
    _effect(f"step {run_id} {r} {j} {os.getpid()} {nonce}")
    await asyncio.sleep(_pause(run_id, r, j))
    return {"value": _value(acc, run_id, r, j), "nonce": nonce}


def work_sync(run_id: str, r: int, j: int, acc: str) -> dict[str, str]:
    nonce = _nonce()
    _effect(f"step {run_id} {r} {j} {os.getpid()} {nonce}")
    time.sleep(_pause(run_id, r, j))
    return {"value": _value(acc, run_id, r, j), "nonce": nonce}


@tool(idempotent=False)
async def pay(run_id: str, r: int, key: IdempotencyKey) -> str:
    """Pay for round ``r`` of run ``run_id``."""
    nonce = _nonce()
    _effect(f"pay {run_id} {r} {os.getpid()} {nonce} {key}")
    await asyncio.sleep(0.002)
    return nonce


def answer(request: dict[str, Any]) -> Reply:
    """The fake provider's answer in a worker process: its line first, then its NONCE as the text."""
    _, run_id, r = request["messages"][-1]["content"].split()
    nonce = _nonce()
    _effect(f"llm {run_id} {r} {os.getpid()} {nonce}")
    return reply(nonce)


async def nap(ctx: Context, run_id: str, seconds: float) -> dict[str, str]:
    """A child run that sleeps durably (its parent waits for it, suspended; a worker wakes it when due)."""
    await ctx.sleep("nap", seconds)
    return await ctx.step("work_after_nap", work, run_id, -1, 0, "nap")


async def chaos(
    ctx: Context, rounds: int, width: int, nap_seconds: float = 0.0, llm: bool = False, event: bool = False
) -> str:
    acc = ""
    if nap_seconds:
        napped = await ctx.child(nap, ctx.run_id, nap_seconds)
        acc = napped["value"]
    for r in range(rounds):
        results = await asyncio.gather(*(
            ctx.step(f"work{j}", work_sync if j % 2 else work, ctx.run_id, r, j, acc) for j in range(width)
        ))  # fmt: skip
        await ctx.tool(pay, {"run_id": ctx.run_id, "r": r})
        if llm:
            question = [{"role": "user", "content": f"chaos {ctx.run_id} {r}"}]
            await ctx.llm(model=MODEL, messages=question, api_key=os.environ[API_KEY])
        acc = _value("|".join(result["value"] for result in results), ctx.run_id, r, -1)
        if event and r == 0:
            acc = _value(acc, await ctx.wait_for_event("go", type="go"), r, -2)
    return acc


def make_app(url: str | None = None) -> AgentFlow:
    flow = AgentFlow(url)
    flow.register(chaos, name="chaos")
    flow.register(nap, name="nap")
    return flow


def __getattr__(name: str) -> Any:
    if name == "app":  # made when a worker loads tests/chaos_app.py:app, on $AGENTFLOW_DATABASE_URL
        if os.environ.get(API_KEY):  # this process's model: entered for the process's life
            provider = FakeProvider()
            provider.default = answer
            globals()["provider"] = provider.__enter__()
        made = make_app()
        globals()["app"] = made
        return made
    raise AttributeError(name)
