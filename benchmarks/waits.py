"""Waiting runs hold nothing: 10,000 runs suspended on wait_for_event in one process, then woken by events.

    python benchmarks/waits.py [--runs 10000] [--db PATH]

1. Starts ``--runs`` runs of a workflow that waits for an event ``decision``; each is suspended (status
   ``waiting``): its stack unwinds, no task, no thread, nothing in memory stays behind for it.
2. Lets ``app.serve`` (the scheduler that wakes runs) idle for 2 s of real time with all of them waiting,
   and prints the CPU time the process used meanwhile, with the threads and asyncio tasks alive.
3. Sends every run its event while ``serve`` runs, and prints the time from each send to that run's
   completion: median and 95th percentile (queueing behind earlier runs included), the throughput, and
   the latency of a single run woken on its own (the cost of one wake: load, replay, deliver, finish).

SQLite (WAL) in a temporary folder unless ``--db`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentflow import AgentFlow, Context, RunStatus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    folder = tempfile.TemporaryDirectory()
    app = AgentFlow(args.db or str(Path(folder.name) / "waits.db"))
    completed_at: dict[str, float] = {}

    @app.workflow(name="approval")
    async def approval(ctx: Context, n: int) -> int:
        decision = await ctx.wait_for_event("decision", type="decision")
        return int(decision) + n

    # A listener hears each run's last step (its delivered event) the moment it is recorded: "completion".
    app.on_step(lambda run_id, step: completed_at.__setitem__(run_id, time.perf_counter()))

    ids = [f"wait-{i:05d}" for i in range(args.runs)]
    start = time.perf_counter()
    for i, run_id in enumerate(ids):
        run = app.run(approval, i, run_id=run_id)
        assert run.status == RunStatus.WAITING, run.status
    suspend_s = time.perf_counter() - start
    print(f"{args.runs:,} runs started and suspended on wait_for_event in {suspend_s:.1f} s "
          f"({suspend_s / args.runs * 1e3:.2f} ms a run)")  # fmt: skip

    stop = threading.Event()
    serving = threading.Thread(target=app.serve, kwargs={"poll": 0.5, "stop": stop.is_set}, daemon=True)
    serving.start()
    time.sleep(0.2)  # let the scheduler make its first pass
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(2.0)  # all runs waiting: the process should be idle
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    tasks = app._loop_thread.submit(_task_count()).result() if app._loop_thread else 0
    print(f"while {args.runs:,} runs wait: {cpu * 1e3:.1f} ms of CPU in {wall:.1f} s ({cpu / wall:.2%} of one core); "
          f"{threading.active_count()} threads and {tasks} asyncio task(s) in the process")  # fmt: skip

    sent_at: dict[str, float] = {}
    start = time.perf_counter()
    for i, run_id in enumerate(ids):
        sent_at[run_id] = time.perf_counter()
        app.send_event(run_id, "decision", i)
    send_s = time.perf_counter() - start
    while len(completed_at) < args.runs:
        time.sleep(0.05)
    all_s = max(completed_at.values()) - start
    latencies = sorted(completed_at[r] - sent_at[r] for r in ids)
    print(f"sent {args.runs:,} events in {send_s:.1f} s; all runs completed {all_s:.1f} s after the first send "
          f"({args.runs / all_s:,.0f} runs/s)")  # fmt: skip
    print(
        f"  send -> completion, per run: median {statistics.median(latencies) * 1e3:.0f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95)] * 1e3:.0f} ms (waiting behind the runs sent before it)"
    )

    singles = []
    for i in range(50):  # one run at a time: the cost of a single wake, no queue
        run_id = f"single-{i}"
        app.run(approval, i, run_id=run_id)
        sent = time.perf_counter()
        app.send_event(run_id, "decision", 1)
        while run_id not in completed_at:
            time.sleep(0.0005)
        singles.append(completed_at[run_id] - sent)
    stop.set()
    serving.join(timeout=5)
    print(f"  a single run woken on its own: median {statistics.median(singles) * 1e3:.1f} ms from send to completion")
    done = sum(1 for r in app.list_runs(status="completed", workflow="approval", limit=args.runs + 100))
    print(f"completed runs: {done:,} of {args.runs + 50:,}")
    app.close()
    return 0 if done == args.runs + 50 and cpu / wall < 0.05 else 1


async def _task_count() -> int:
    return len(asyncio.all_tasks()) - 1  # not counting this one


if __name__ == "__main__":
    sys.exit(main())
