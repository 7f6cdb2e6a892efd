"""Two gathered payments, run in child processes by test_crash.py (not a test module itself).

    python payments_crash_workflow.py run    DB RUN_ID LEDGER   # both payments in flight, to be SIGKILLed
    python payments_crash_workflow.py resume DB RUN_ID LEDGER   # resumes the run

The payment service is the LEDGER file: each payment appends ``<idempotency key> <amount>``. Two coroutines
under ``asyncio.gather``: A checks something (a step), then pays 10; B prepares (a step), then pays 20. In
``run`` mode A's check waits until B's payment has started, so B takes the first ``pay`` key; both payments
then stay open after writing to the ledger, and the process prints ``in flight`` for the parent to SIGKILL
it. Resumed, both steps are served at once and A reaches ``pay`` first: each payment must be made again
under the key it was first made with. ``resume`` prints the run as a JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agentflow import AgentFlow, Context, IdempotencyKey, tool


def main(argv: list[str]) -> int:
    mode, db, run_id, ledger = argv[:4]
    blocking = mode == "run"
    events: dict[str, asyncio.Event] = {}

    def gate(name: str) -> asyncio.Event:
        return events.setdefault(name, asyncio.Event())

    @tool(idempotent=False)
    async def pay(who: str, amount: int, key: IdempotencyKey) -> str:
        with open(ledger, "a") as f:
            f.write(f"{key} {amount}\n")
        if blocking:
            if who == "B":
                gate("B started").set()
            else:
                print("in flight", flush=True)  # A's payment is made; B's too: both open, neither recorded
            await gate("never").wait()
        return f"{who} paid {amount}"

    async def check(who: str) -> str:
        if blocking:
            await gate("B started").wait()
        return who

    def prepare(who: str) -> str:
        return who

    app = AgentFlow(db)

    @app.workflow(name="payments")
    async def payments(ctx: Context) -> list[object]:
        async def branch(who: str, amount: int) -> object:
            await ctx.step("check" if who == "A" else "prepare", check if who == "A" else prepare, who)
            return (await ctx.tool(pay, {"who": who, "amount": amount})).value

        return list(await asyncio.gather(branch("A", 10), branch("B", 20)))

    run = app.run(payments, run_id=run_id) if mode == "run" else app.resume(run_id)
    print(json.dumps({"status": str(run.status), "output": run.output}), flush=True)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
