"""How fast a recorded run replays: a 10,000-step run re-executed strictly against its record.

    python benchmarks/replay.py [--steps 10000] [--rounds 3] [--db PATH]

The workflow takes ``--steps`` durable steps (each a small function returning a small dict, with the
previous step's output as its argument, so each step depends on the last). It is run once for real
(recorded on SQLite), then replayed with ``app.replay(run_id)``: every step is served from the record,
nothing runs, nothing is written. Printed: recorded steps served per second (the store read included, and
apart), and the ratio to the same workflow with durability off (the same code, with a context whose
``step`` just calls the function: the floor that any replay has to pay for running the workflow's code).

Target: at least 50,000 recorded steps per second. (DBOS replays about 4,000 per second on SQLite on
this machine.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflow import AgentFlow, Context

TARGET = 50_000


def work(previous: dict[str, int], i: int) -> dict[str, int]:
    return {"i": i, "total": previous["total"] + i}


async def body(ctx: Any, steps: int) -> int:
    state = {"i": -1, "total": 0}
    for i in range(steps):
        state = await ctx.step("work", work, state, i)
    return state["total"]


class DurabilityOff:
    """The same workflow code without agentflow: ``step`` calls the function, nothing is recorded."""

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary folder)")
    args = parser.parse_args()

    folder = tempfile.TemporaryDirectory()
    db = args.db or str(Path(folder.name) / "replay.db")
    app = AgentFlow(db)

    @app.workflow(name="replay_bench")
    async def replay_bench(ctx: Context, steps: int) -> int:
        return await body(ctx, steps)

    start = time.perf_counter()
    run = app.run(replay_bench, args.steps, run_id="bench")
    recording = time.perf_counter() - start
    assert run.status == "completed", run.error
    rate = args.steps / recording
    print(f"recorded a run of {args.steps:,} steps on SQLite in {recording:.2f} s ({rate:,.0f} steps/s)")

    replays: list[float] = []
    loads: list[float] = []
    offs: list[float] = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = app.replay("bench")
        replays.append(time.perf_counter() - start)
        assert result.matched and result.served == args.steps and result.output == run.output
        start = time.perf_counter()
        app._store.load_steps("bench")  # the store read alone, as the replay does it
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert asyncio.run(body(DurabilityOff(), args.steps)) == run.output
        offs.append(time.perf_counter() - start)
    app.close()

    replay_s, load_s, off_s = (statistics.median(x) for x in (replays, loads, offs))
    rate = args.steps / replay_s
    print(f"strict replay of {args.steps:,} recorded steps (median of {args.rounds}):")
    print(f"  whole replay                  {replay_s * 1e3:8.1f} ms   {rate:12,.0f} steps/s   (target >= {TARGET:,})")
    print(f"    reading the record          {load_s * 1e3:8.1f} ms   {load_s / args.steps * 1e6:8.2f} us a step")
    print(f"    serving the steps           {(replay_s - load_s) * 1e3:8.1f} ms   "
          f"{(replay_s - load_s) / args.steps * 1e6:8.2f} us a step")  # fmt: skip
    print(f"  durability off (same code)    {off_s * 1e3:8.1f} ms   {args.steps / off_s:12,.0f} steps/s")
    print(f"  replay / durability off       {replay_s / off_s:8.1f}x")
    ok = rate >= TARGET
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
