"""How fast recorded runs are re-scored: 1,000 recorded agent runs, the deterministic scorers, nothing run.

    python benchmarks/evals.py [--runs 1000] [--rounds 3] [--db URL]

The runs are the example agents' recorded traces (``evals/traces``: support and research runs, 3-11 model
turns and tool calls each) imported into a fresh database and copied under new ids (with valid hash chains)
until there are ``--runs`` of them. Then, per round:

- the store read: the runs and all their step records (``list_runs`` and the bulk ``load_steps_of``);
- building the dataset's trajectories from those records (JSON decoding of model responses and tool calls);
- scoring: 14 deterministic scorers per run (output, trajectory in four modes, tool arguments, steps,
  tokens, cost, latency, errors), through ``evaluate`` (re-score mode, not saved) and as a plain loop;
- saving the result (one row per case).

Printed: each phase's time per run and its ratio to the store read, the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from agentflow import AgentFlow
from agentflow._chain import chain_hash, genesis
from agentflow.evals import (
    Dataset,
    cost,
    evaluate,
    exact_output,
    json_subset,
    latency,
    no_errors,
    output_contains,
    output_regex,
    save_result,
    step_count,
    tokens,
    tool_args_match,
    trajectory_match,
)
from agentflow.evals._trajectory import trajectory_from_records

TRACES = Path(__file__).resolve().parent.parent / "evals" / "traces"


def scorers() -> list:  # type: ignore[type-arg]
    return [
        exact_output(),
        output_contains("order", ignore_case=True),
        output_regex(r"[A-Z]-\d{4}|Solar|Heat"),
        json_subset(),
        trajectory_match("strict"),
        trajectory_match("unordered"),
        trajectory_match("subset"),
        trajectory_match("superset", args=True),
        tool_args_match(),
        step_count(max_ratio=1.5),
        tokens(max_ratio=1.5),
        cost(),
        latency(),
        no_errors(),
    ]


def fill(app: AgentFlow, runs: int) -> int:
    """Import the traces and copy them under new ids until there are ``runs`` recorded runs; the steps."""
    sources = [app.import_runs(path)[0] for path in sorted(TRACES.rglob("*.json"))]
    store = app._store
    records = {r.id: r for r in store.get_runs(sources)}
    steps = store.load_steps_of(sources)
    copies, copied_steps = [], []
    for n in range(runs - len(sources)):
        source = sources[n % len(sources)]
        new_id = f"{source}-copy-{n:05d}"
        copies.append(replace(records[source], id=new_id, created_at=records[source].created_at + n + 1))
        previous = genesis(new_id)
        for rec in steps[source]:
            chain = chain_hash(previous, rec.key, rec.kind, rec.fingerprint, rec.status, rec.output, rec.error)
            copied_steps.append(rec._replace(run_id=new_id, chain=chain))
            previous = chain
    store.import_runs(copies, copied_steps, {})
    return sum(len(s) for s in steps.values()) + len(copied_steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default=None, help="database URL or SQLite path (default: a temporary SQLite file)")
    args = parser.parse_args()

    folder = tempfile.TemporaryDirectory()
    app = AgentFlow(args.db or str(Path(folder.name) / "evals.db"))
    step_total = fill(app, args.runs)
    store = app._store
    print(f"{args.runs:,} recorded runs ({step_total:,} step records) in {store.dialect}")

    reads, builds, loads, evals, loops, saves = [], [], [], [], [], []
    for round_ in range(args.rounds):
        gc.collect()  # each phase starts with no garbage of the one before
        start = time.perf_counter()
        records = store.list_runs(statuses=["completed", "failed"])
        steps = store.load_steps_of([r.id for r in records])
        reads.append(time.perf_counter() - start)
        assert len(records) == args.runs

        start = time.perf_counter()
        for r in records:
            trajectory_from_records(r, steps[r.id])
        builds.append(time.perf_counter() - start)

        gc.collect()  # each phase starts with no garbage of the one before
        start = time.perf_counter()
        dataset = Dataset.from_runs(app)
        loads.append(time.perf_counter() - start)

        chosen = scorers()
        gc.collect()  # each phase starts with no garbage of the one before
        start = time.perf_counter()
        result = evaluate(dataset, chosen, app=app, save=False, concurrency=64)
        evals.append(time.perf_counter() - start)
        assert len(result.cases) == args.runs
        pass_rate = result.pass_rate

        gc.collect()  # each phase starts with no garbage of the one before
        start = time.perf_counter()
        for case in dataset:
            for s in chosen:
                s(case.reference, case)
        loops.append(time.perf_counter() - start)

        start = time.perf_counter()
        save_result(app, replace(result, id=f"bench-{round_}"))
        saves.append(time.perf_counter() - start)
    app.close()

    n = args.runs
    read, build, load, ev, loop, save = (statistics.median(x) for x in (reads, builds, loads, evals, loops, saves))
    per = f"per run (median of {args.rounds} rounds)"
    print(f"re-scoring {n:,} recorded runs with {len(scorers())} deterministic scorers, {per}:")
    print(f"  (pass rate {pass_rate:.0%}: the unknown-order runs fail no_errors, the research runs lack 'order')")
    rows = [
        ("store read (runs + steps)", read),
        ("trajectories from records", build),
        ("Dataset.from_runs (both)", load),
        ("scoring, through evaluate", ev),
        ("scoring, a plain loop", loop),
        ("saving the result", save),
    ]
    for label, seconds in rows:
        print(f"  {label:28} {seconds / n * 1e6:9.1f} us   {seconds / read:6.2f}x the store read")
    whole = load + ev
    print(f"  {'whole re-score (load+score)':28} {whole / n * 1e6:9.1f} us   {n / whole:10,.0f} runs/s")
    print(f"  scoring / store read: {ev / read:.2f}x; scorers take {loop / n / len(scorers()) * 1e6:.1f} us each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
