"""Many workers on Postgres: throughput against the bound the model latency sets, and what a queue costs.

    python benchmarks/workers.py [--runs 240] [--steps 4] [--concurrency 8] [--postgres URL]

1. Throughput. ``--runs`` runs of a workflow of ``--steps`` steps that each wait 50 ms (as a model call
   does) are enqueued, then drained by 1, 2 and 4 worker processes (``--concurrency`` runs each). A run
   cannot take less than steps x 50 ms, so W workers of C slots finish at most W x C / (steps x 0.05)
   runs a second: the ideal bound. Printed: runs/s, the ratio to that bound, and the speed-up over one
   worker. The clock starts when the workers (started and connected beforehand) are told to go, and stops
   at the last run's end as recorded.
2. Overhead. One worker in this process drains runs of 1 and of 21 steps that do nothing: the difference
   per extra step is what a step of a leased run costs (the fenced insert), the rest what a run costs
   (claim, load, start, finish, release). Compared with a step of a plain ``app.run`` (no lease) and with
   the raw insert + commit floor measured by ``step_overhead.py``.

A fresh Postgres schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from agentflow import AgentFlow, Context

QUEUE = "bench"
STEP_SECONDS = 0.05


async def model_like(i: int) -> int:
    await asyncio.sleep(STEP_SECONDS)
    return i


async def nothing(i: int) -> int:
    return i


async def bench(ctx: Context, steps: int, wait: bool) -> int:
    total = 0
    for i in range(steps):
        total += await ctx.step("step", model_like if wait else nothing, i)
    return total


def child(url: str, concurrency: int) -> int:
    """A worker process: connect, say ready, wait for "go" on stdin, drain the queue, print its report."""
    app = AgentFlow(url)
    app.register(bench, name="bench")
    print("ready", flush=True)
    sys.stdin.readline()
    report = app.work(QUEUE, concurrency=concurrency, drain=True, poll=0.05)
    print(json.dumps({"claimed": report.claimed, "finished": report.finished}), flush=True)
    app.close()
    return 0


def _enqueue(app: AgentFlow, runs: int, steps: int, wait: bool) -> list[str]:
    return [app.enqueue("bench", steps, wait, queue=QUEUE).run_id for _ in range(runs)]


def _last_end(url: str, ids: list[str]) -> float:
    with AgentFlow(url) as app:
        found = [app.get_run(run_id) for run_id in ids]
    assert all(run.status == "completed" for run in found), {run.status for run in found}
    return max(run.updated_at.timestamp() for run in found)


def throughput(url: str, workers: int, runs: int, steps: int, concurrency: int) -> float:
    """Runs a second drained by ``workers`` processes."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, "--concurrency", str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    with AgentFlow(url) as app:
        app.register(bench, name="bench")
        ids = _enqueue(app, runs, steps, wait=True)
    go = time.time()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.communicate(timeout=600)
        assert proc.returncode == 0
    return runs / (_last_end(url, ids) - go)


def overhead(url: str, runs: int) -> tuple[float, float, float]:
    """(us a step of a leased run, us a run's own cost, us a step of a plain unleased run)."""
    app = AgentFlow(url)
    app.register(bench, name="bench")
    elapsed = {}
    for steps in (1, 21):
        _enqueue(app, runs, steps, wait=False)
        start = time.perf_counter()
        app.work(QUEUE, concurrency=1, drain=True, poll=0.01)
        elapsed[steps] = time.perf_counter() - start
    per_step = (elapsed[21] - elapsed[1]) / (20 * runs)
    per_run = elapsed[1] / runs - per_step
    start = time.perf_counter()
    app.run(bench, 2001, False)
    one = time.perf_counter()
    app.run(bench, 1, False)
    single = time.perf_counter() - one
    plain_step = (one - start - single) / 2000
    app.close()
    return per_step * 1e6, per_run * 1e6, plain_step * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=240)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("AGENTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.concurrency)

    import psycopg

    base = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    try:
        AgentFlow(url).close()  # migrate once, before the workers race to
        run_s = args.steps * STEP_SECONDS
        print(
            f"{args.runs} runs of {args.steps} steps that wait {STEP_SECONDS * 1000:.0f} ms each (a run takes at "
            f"least {run_s * 1000:.0f} ms); {args.concurrency} runs at once per worker\n"
        )
        print("  workers   runs/s   ideal runs/s   ratio to ideal   speed-up over 1 worker")
        results: dict[int, float] = {}
        for workers in (1, 2, 4):
            rate = throughput(url, workers, args.runs, args.steps, args.concurrency)
            results[workers] = rate
            ideal = workers * args.concurrency / run_s
            print(f"  {workers:7d}   {rate:6.1f}   {ideal:12.1f}   {rate / ideal:14.2f}   {rate / results[1]:22.2f}x")
        sys.path.insert(0, str(Path(__file__).parent))
        from step_overhead import postgres_floor

        floor = postgres_floor(url, 1000)
        per_step, per_run, plain = overhead(url, 100)
        print("\nOverhead on Postgres (one worker, steps that do nothing)")
        print(f"  raw insert + commit (floor)        {floor:8.1f} us")
        print(f"  step of a plain run (app.run)      {plain:8.1f} us   = {plain / floor:.2f}x floor")
        print(f"  step of a leased run (fenced)      {per_step:8.1f} us   = {per_step / floor:.2f}x floor, "
              f"{per_step / plain:.2f}x a plain step")  # fmt: skip
        print(f"  a queued run's own cost            {per_run:8.1f} us   (claim, load, start, finish, release)")
        print(f"  = {per_run / (STEP_SECONDS * 1e6) * 100:.1f}% of one 50 ms model call; "
              f"{per_step / (STEP_SECONDS * 1e6) * 100:.2f}% a step")  # fmt: skip
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
