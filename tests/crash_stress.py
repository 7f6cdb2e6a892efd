"""Seeded randomized crash/resume stress test of idempotency keys and key reservations (not a test module:
``test_crash_stress.py`` runs a fixed set of seeds; run many by hand with the command line below). Here: a
seed's course and the command line; ``crash_stress_world.py``: the plan, the world and the workflow;
``crash_stress_checks.py``: the checks; ``crash_stress_derived.py``: the derived runs.

What a seed generates: a workflow of 2-4 branches under ``asyncio.gather``, each 1-4 random operations: a
sync or async step (an async one may make nested calls, in sequence or gathered, up to depth 2), ``pay``
(a non-idempotent tool taking an ``IdempotencyKey``; it writes the ledger), ``send`` (idempotent, also an
``IdempotencyKey`` and the ledger), ``look`` (idempotent) and a child run (its own operations). Every call
has a distinct ``tag`` argument, so no two requests share a fingerprint, and ``asyncio.sleep(0)`` counts
derived from the seed, the execution and the call vary the order in which concurrent calls go live.

Each seed runs in a fresh SQLite database (with ``--postgres URL``, a fresh database on that Postgres
server, dropped afterwards; ``crash_stress_db.py``): a clean run (id ``clean``) gives the expected output;
run ``x`` then crashes 1-2 times (``Crash``, a ``BaseException`` like the process dying, raised in a chosen
call after its effect, while 0-2 other calls stay blocked in flight; a blocked call crashes itself after 400
loop passes if the crash never comes), is resumed after each crash, and finally resumed with crashing off.

Invariants (failure types of a seed):
  output        the resumed run completes with the clean run's output
  key-reuse     an idempotency key is used for two different calls (ledger)
  key-changed   a keyed call made again uses another key than it was first made with
  paid-twice    a payment recorded completed is executed again
  rerun         any other call recorded completed is executed again
  divergence    ReplayDivergence on resume
  replay        a strict replay of the finished run fails or gives another output
  reservations  reservation rows left behind by a run that completed
  chain         a run's hash chain (with its superseded records) does not hold (``verify``)
  bundle        a run without a parent, exported and imported into an empty database, does not arrive as
                it is, or its strict replay there fails (every run of the seed, derived ones too)
  hang          an execution did not end within HANG_PASSES event loop passes (counted, not timed)
  error         any other exception, or a run that did not complete

Modes (``Mode``):
  --no-child    no child-run operations
  --retries     calls fail once per run (before or after their effect) and are retried (RetryPolicy of 6
                attempts); a nested call's failure fails its enclosing step's attempt unless the nested
                step has a retry policy of its own
  --crashes N   up to N crashes per seed (the default 2 means 1 or 2, one seed in three crashing twice)
  --recover     resume with ``app.recover()`` (every run left running, children included, each from its
                own record) instead of ``app.resume("x")``
  --sabotage    a resumed run does not see the keys its calls reserved (the store's reservations are
                hidden from it): the checker must then report failures
  --derived K   then a derived run of the finished run "x" crashes and is resumed (below); K is restart,
                fork, counterfactual, live or all (one of the four per seed)
  --sabotage-derived
                a resumed derived run inherits nothing from its source (``inherit`` sabotaged): the
                derived checks must then report failures
  --any-point   fork or restart at any top-level record of "x", also one where other steps were in
                flight (by default, only where none was: see ``_prepare_derived``)
  --postgres URL  each seed in a database of its own on this Postgres server (created and dropped; the
                derived phase's copy is a database made from it as a template)

Derived runs (``--derived``; choices from the seed's own rng, ``make_derived``, not the plan's): once "x"
has completed (and was checked), a derived run of it is made: ``app.restart("x", from_key=K)``,
``app.fork("x", at=K)`` (K: a random top-level record of "x"), ``app.counterfactual(wf, "x", missing=...)``
or ``app.replay("x", mode="live")``. It may run another variant of the code: a global ``variant`` (1) that
some calls' requests read (a step gets another argument, a payment another amount), never a call recorded
before K (that is a divergence, by design); a live replay always has one, so that it diverges somewhere.
Calls a counterfactual's world has no answer for give "missing ..." instead of failing the run.
The expectation: the same derived run made without crashes in a copy of the database (a SQLite backup or a
Postgres database made from it as a template: the same records), with the same timing as the first execution
of the crashing one (``DERIVED``); the calls that ran live there are the crash targets of the derived run,
which crashes 1-N times (executions ``DERIVED``, ``DERIVED`` + 1, ...) with calls blocked in flight, and is
resumed (``app.resume`` or ``app.recover()``) until it completes. The output of a restart, a fork or a
counterfactual is also known from the plan alone (``plan_output``: every call gives its value under its
variant; a counterfactual's "missing ..." for the varied calls its world cannot answer); a live replay's is
not (a child run served whole before the divergence gives its old output, so it depends on when the
divergence came). Failure types (``d-``: the crashed derived run; ``e-``: the one made without crashes,
which needs no crash to fail):
  d-output      the derived run does not end as the one made without crashes (status, output, error);
                e-output: that one's output is not the plan's
  d-paid-twice  a payment executed live by a fork, live replay or restart (recorded in it, not a copy of
                its source's record) at a key where its source run (for a restart: a superseded record
                of the run) has a record of the same request
  d-paid-live   a counterfactual executed a non-idempotent tool
  d-key-reuse   an idempotency key used for two different requests, across the source and derived runs
  d-key-changed, d-rerun, d-divergence, d-replay (strict replay of the finished derived run),
  d-reservations, d-chain, d-bundle (the derived run), d-hang, d-error: as above, for the derived run (and
                its child runs)
  d-moved-payment  a payment the derived run makes live with the very request its source paid, at
                another key (concurrent calls reached the engine in another order, so the source's
                record is not at the same key: it must be served all the same)

By hand (from the repository root; seeds run in parallel processes, one per CPU unless --jobs):
  .venv/bin/python tests/crash_stress.py --seeds 0:500 [--retries] [--crashes N] [--recover] [--no-child]
  .venv/bin/python tests/crash_stress.py --seeds 0:500 --sabotage      # expect failures
  .venv/bin/python tests/crash_stress.py --seeds 0:500 --derived all [--recover] [--retries]
  .venv/bin/python tests/crash_stress.py --seeds 0:100 --derived all --sabotage-derived  # expect failures
  .venv/bin/python tests/crash_stress.py --seeds 0:200 --postgres postgresql://postgres@127.0.0.1:5432/test
  .venv/bin/python tests/crash_stress.py -v SEED [mode options]        # one seed: its plan, log and records
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from crash_stress_checks import Result, check_bundles, check_ledger, check_reruns, check_run, dump, execute
from crash_stress_db import SeedDatabase
from crash_stress_derived import derived_phase
from crash_stress_world import (
    CLEAN,
    DERIVED_KINDS,
    Mode,
    World,
    build,
    go,
    make_plan,
    plan_output,
)

from agentflow import AgentFlow, Run, RunStatus

__all__ = ["Mode", "Result", "main", "run_one", "run_seeds"]

DEFAULT_MODE = Mode()


def run_one(
    seed: int,
    directory: str | os.PathLike[str],
    mode: Mode = DEFAULT_MODE,
    verbose: bool = False,
    postgres: str | None = None,
) -> Result:
    """Run seed ``seed`` in ``mode`` in a new SQLite database under ``directory`` (left there), or in a new
    database on the Postgres server at ``postgres`` (dropped afterwards), and check it."""
    plan = make_plan(seed, mode)
    result = Result(seed, mode, plan.describe(), verbose=verbose)
    db = SeedDatabase.new(seed, directory, postgres)
    app = AgentFlow(db.url)
    world = World(plan)
    try:
        if mode.sabotage:  # resumed runs see no reservations: a call in flight at a crash may lose its key
            app._store.load_reservations = lambda run_id: {}  # type: ignore[method-assign]
        wf = build(app, world)
        world.execution = CLEAN
        clean = go(world, lambda: app.run(wf, run_id="clean"))
        if clean is None or clean.status != RunStatus.COMPLETED:
            why = "it crashed" if clean is None else f"{clean.status}: {clean.error}"
            result.failures.append(("error", f"the clean run did not complete: {why}"))
            return result
        if clean.output != plan_output(plan, world):  # the harness's own check of plan_output
            result.failures.append(("error", f"the clean run's output is not the plan's: {clean.output}"))
        world.log.clear()
        world.ledger.clear()
        if _crash_and_resume(app, wf, world, mode, result):
            result.failures += check_run(app, clean.output, mode)
        result.failures += check_ledger(world) + check_reruns(world)
        if not mode.sabotage:  # after the checks of the world's log: the replays add to it
            result.failures += check_bundles(app, lambda flow: build(flow, world))
        if mode.derived and app.get_run("x").status == RunStatus.COMPLETED:
            if verbose:
                dump(app, world, result)
            derived_phase(app, wf, world, db, mode, result)
        if verbose:
            dump(app, world, result)
    except Exception as exc:
        result.failures.append(("hang" if world.hung else "error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
    finally:
        app.close()
        db.drop()
    return result


def _crash_and_resume(app: AgentFlow, wf: Any, world: World, mode: Mode, result: Result) -> bool:
    """Run "x", crash it and resume it as planned, then resume it with crashing off (unless it completed
    already). Whether it ended without a divergence (its record can then be checked)."""
    plan = world.plan
    recorded: set[str] = set()  # the calls recorded completed so far

    def resume() -> Run:
        if mode.recover:  # every run left running, children included, each from its own record
            app.recover()
            return app.get_run("x")
        return app.resume("x")

    executions = [*plan.crashes, ("", [])]  # the last: the final resume, crashing off
    for e, (target, blocked) in enumerate(executions):
        final = e == len(plan.crashes)
        world.arm(e, target, blocked, recorded)
        result.log.append(f"exec {e}: " + ("final resume" if final else f"target={world.crash_target} ") + (
            "" if final else f"blocked={sorted(world.blocked)}"
        ))  # fmt: skip
        if not execute(world, result, e, final, (lambda: app.run(wf, run_id="x")) if e == 0 else resume):
            return False
        recorded |= world.completed_tags()
        if not world.crashed:
            break
    return True


# ------------------------------------------------------------------------------------------------ by hand


def _worker(job: tuple[int, str, Mode, str | None]) -> Result:
    """One seed in a pool process, with a wall-clock backstop for what the hang guard cannot see (a sync
    call that never returns)."""
    seed, directory, mode, postgres = job

    def on_alarm(*_: Any) -> None:
        raise TimeoutError("the seed took more than 120 s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    try:
        return run_one(seed, directory, mode, postgres=postgres)
    except TimeoutError as exc:
        return Result(seed, mode, make_plan(seed, mode).describe(), [("hang", str(exc))])
    finally:
        signal.alarm(0)


def run_seeds(seeds: range, mode: Mode, directory: str, jobs: int, postgres: str | None = None) -> list[Result]:
    jobs_list = [(seed, directory, mode, postgres) for seed in seeds]
    if jobs <= 1:
        return [_worker(job) for job in jobs_list]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_worker, jobs_list, chunksize=4)


def seed_range(text: str) -> range:
    """``start:stop`` (stop excluded), as the command line gives it."""
    start, _, stop = text.partition(":")
    try:
        seeds = range(int(start), int(stop))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give start:stop, e.g. 0:500 (seeds 0 to 499)") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} holds no seed: stop must be above start")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0:500", type=seed_range, help="start:stop (default 0:500)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)")
    parser.add_argument("--no-child", action="store_true", help="no child-run operations")
    parser.add_argument("--retries", action="store_true", help="flaky calls (fail once), retried")
    parser.add_argument("--crashes", type=int, default=2, help="most crashes per seed (2: 1 or 2, mostly 1)")
    parser.add_argument("--recover", action="store_true", help="resume with app.recover() instead of app.resume")
    parser.add_argument("--sabotage", action="store_true", help="hide reservations from resumed runs")
    parser.add_argument("--derived", default="", choices=["", *DERIVED_KINDS, "all"], help="derived runs too")
    parser.add_argument("--sabotage-derived", action="store_true", help="resumed derived runs inherit nothing")
    parser.add_argument("--any-point", action="store_true", help="fork/restart also where steps were in flight")
    parser.add_argument(
        "--postgres", metavar="URL", help="each seed in a new database on this Postgres server (dropped after)"
    )
    parser.add_argument("-v", "--verbose", type=int, metavar="SEED", help="run one seed and print everything")
    parser.add_argument("--examples", type=int, default=2, help="failing seeds shown per failure type")
    args = parser.parse_args(argv)
    mode = Mode(
        not args.no_child, args.retries, args.crashes, args.recover, args.sabotage, args.derived,
        args.sabotage_derived, args.any_point,
    )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="agentflow-stress-") as directory:
        if args.verbose is not None:
            res = run_one(args.verbose, directory, mode, verbose=True, postgres=args.postgres)
            print(res.plan, *res.log, *(f"NOTE {kind}: {msg}" for kind, msg in res.notes), sep="\n")
            print(*(f"FAIL {kind}: {msg}" for kind, msg in res.failures), sep="\n")
            if not res.failures:
                print("OK")
            return 1 if res.failures else 0
        seeds: range = args.seeds
        start, stop = seeds.start, seeds.stop
        began = time.monotonic()
        results = run_seeds(seeds, mode, directory, args.jobs, args.postgres)

    by_kind: dict[str, list[int]] = defaultdict(list)
    for res in results:
        for kind in res.kinds:
            by_kind[kind].append(res.seed)
    failing = [res.seed for res in results if res.failures]
    where = "Postgres" if args.postgres else "SQLite"
    print(f"seeds {start}..{stop - 1} ({len(results)}), {mode.describe()}, {where}, {time.monotonic() - began:.1f}s: "
          f"{len(failing)} failing")  # fmt: skip
    for kind, seeds in sorted(by_kind.items()):
        print(f"  {kind:13s} {len(seeds):4d}  seeds {seeds[:25]}{' ...' if len(seeds) > 25 else ''}")
    noted: dict[str, list[int]] = defaultdict(list)
    for res in results:
        for kind in sorted({kind for kind, _ in res.notes}):
            noted[kind].append(res.seed)
    for kind, seeds in sorted(noted.items()):
        print(f"  note {kind:16s} {len(seeds):4d}  seeds {seeds[:25]}{' ...' if len(seeds) > 25 else ''}")
    shown: dict[str, int] = defaultdict(int)
    for res in results:
        for kind, msg in res.failures:
            if shown[kind] < args.examples:
                shown[kind] += 1
                print(f"\n--- seed {res.seed} [{kind}] {msg}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
