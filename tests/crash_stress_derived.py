"""The crash stress test's derived runs: a restart, fork, counterfactual or live replay of the finished run
"x", made once without crashes (the expectation) and once crashed and resumed, then checked (see
``crash_stress.py``, "Derived runs")."""

from __future__ import annotations

import json
import random
import traceback
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from crash_stress_checks import (
    Result,
    check_bundles,
    check_chains,
    check_ledger,
    check_reruns,
    check_reservations,
    dump,
    execute,
)
from crash_stress_db import SeedDatabase
from crash_stress_world import (
    DERIVED,
    DERIVED_KINDS,
    Effect,
    Failure,
    Mode,
    Plan,
    World,
    build,
    go,
    of_run,
    plan_output,
    tag_of,
)

import agentflow._app_core as app_core
from agentflow import AgentFlow, ReplayDivergence, RunStatus
from agentflow._derived import Inherited, SourceRecords


@dataclass(frozen=True)
class DerivedPlan:
    """A seed's derived run (see the module docstring), drawn from its own rng."""

    kind: str  # restart | fork | counterfactual | live
    variant: int  # what the calls in ``varied`` read (0: the source run's code)
    varied: frozenset[str]  # before those recorded ahead of the fork or restart point are left out
    at: float  # where a fork or restart starts: this fraction of the top-level records of "x"
    missing: str  # a counterfactual's ``missing``
    crashes: int

    def describe(self, at_key: str | None = None) -> str:
        where = f" at {at_key}" if at_key else ""
        extra = f" missing={self.missing}" if self.kind == "counterfactual" else ""
        varied = f"variant={self.variant} varied={sorted(self.varied)}"
        return f"derived {self.kind}{where}{extra} {varied} crashes={self.crashes}"


def make_derived(seed: int, plan: Plan, mode: Mode) -> DerivedPlan:
    rng = random.Random(f"derived:{seed}")
    drawn = rng.choice(DERIVED_KINDS)  # drawn whatever the mode, so that the other draws do not depend on it
    kind = drawn if mode.derived == "all" else mode.derived
    variant = 1 if kind == "live" or rng.random() < 0.6 else 0
    candidates = [op.tag for op in plan.ops() if op.kind in ("step", "pay", "send")]
    varied = {tag for tag in candidates if rng.random() < 0.3}
    if not varied and candidates and (variant or rng.random() < 0.5):
        varied.add(rng.choice(candidates))
    at = rng.random()
    missing = rng.choice(["live", "missing"])
    crashes = rng.choice([1, 1, 2]) if mode.crashes == 2 else rng.randint(1, mode.crashes)
    return DerivedPlan(kind, variant if varied else 0, frozenset(varied), at, missing, crashes)


def _prepare_derived(app: AgentFlow, plan: Plan, dplan: DerivedPlan, any_point: bool) -> tuple[DerivedPlan, str | None]:
    """The fork or restart point, and the plan without the varied calls that are served from before it.

    The point is a top-level record of "x" before which no step was in flight (every record before it is
    of a top-level call recorded before it too), unless ``any_point``: a fork or restart keeps the records
    of a step in flight at that point, but not which of its concurrent siblings made them, and a sibling
    that reaches the engine first in the derived run takes its key and meets records that are not its
    own (a divergence, or a payment made again; see ``--any-point``). With no such point a restart starts
    from the beginning (None) and a fork is not made (None).
    A call recorded before the point is served (as are the calls inside it), and so is, in a restart, a
    child run with all its calls: another request there would be a divergence of the code, not something
    to check, so none of them is varied."""
    if dplan.kind not in ("fork", "restart"):
        return dplan, None
    steps = app.get_run("x").steps
    top = [s for s in steps if "/" not in s.key]
    if not any_point:
        top_seq = {s.key: s.seq for s in top}
        top = [t for t in top if all(top_seq.get(s.key.split("/")[0], t.seq) < t.seq for s in steps if s.seq < t.seq)]
    target = top[min(int(dplan.at * len(top)), len(top) - 1)] if top else None
    served = {str(tag_of(s)) for s in steps if target is not None and s.seq < target.seq}
    if dplan.kind == "restart":
        served |= {op.tag for op in plan.ops() if op.kind == "child"}
    varied = frozenset(t for t in dplan.varied if not any(t == s or t.startswith(s + ".") for s in served))
    return replace(dplan, varied=varied, variant=dplan.variant if varied else 0), target and target.key


class Outcome(NamedTuple):
    """How a derived run ended."""

    run_id: str
    status: str
    output: Any
    error: str | None


def _outcome(app: AgentFlow, run_id: str) -> Outcome:
    run = app.get_run(run_id)
    error = None if run.error is None else f"{run.error.type}: {run.error.message}"
    return Outcome(run_id, run.status.value, run.output, error)


def _start_derived(app: AgentFlow, wf: Any, dplan: DerivedPlan, at_key: str | None) -> str | None:
    """Make the derived run of "x"; its id (None: a live replay that never diverged, so made none)."""
    if dplan.kind == "restart":
        app.restart("x", from_key=at_key)
        return "x"
    if dplan.kind == "fork":
        return app.fork("x", at=at_key or "", new_run_id="d").id
    if dplan.kind == "counterfactual":
        return app.counterfactual(wf, "x", run_id="d", missing=dplan.missing).id  # type: ignore[arg-type]
    return app.replay("x", mode="live").live_run_id


def _derived_id(app: AgentFlow, kind: str) -> str | None:
    """The derived run's id, after its first execution crashed."""
    if kind == "restart":
        return "x"
    if kind in ("fork", "counterfactual"):
        return "d" if any(r.id == "d" for r in app.list_runs(limit=None)) else None
    live = [r.id for r in app.list_runs(limit=None) if r.forked_from == "x" and r.parent_id is None]
    return live[0] if live else None


def derived_phase(app: AgentFlow, wf: Any, world: World, db: SeedDatabase, mode: Mode, result: Result) -> None:
    """Make a derived run of the finished run "x" without crashes in a copy of the database (the
    expectation), then in this one with crashes, resume it, and check it."""
    plan = world.plan
    source_ledger = list(world.ledger)  # what "x" paid (after its crashes)
    world.log.clear()
    world.ledger.clear()
    dplan, at_key = _prepare_derived(app, plan, make_derived(plan.seed, plan, mode), mode.any_point)
    result.plan += "\n" + dplan.describe(at_key)
    if dplan.kind == "fork" and at_key is None:
        result.log.append("derived: no point to fork at (a step was in flight at each)")
        return
    expected, live = _expect_derived(db.copy(app, "expected"), plan, dplan, at_key, source_ledger, result)
    if expected is None:
        return
    world.variant, world.varied = dplan.variant, dplan.varied
    try:
        did = _derived_crash_and_resume(app, wf, world, mode, dplan, at_key, live, result)
    except Exception as exc:
        result.failures.append(("d-hang" if world.hung else "d-error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
        did = None
    if did is not None:
        got = _outcome(app, did)
        if got.status != RunStatus.COMPLETED.value:
            result.failures.append(("d-error", f"derived run {did} ended {got.status}: {got.error}"))
        elif got[1:] != expected[1:]:
            result.failures.append(("d-output", f"got {got[1:]}\n   expected {expected[1:]}"))
        else:
            try:
                replay = app.replay(did)
                if replay.output != expected.output:
                    result.failures.append(("d-replay", f"replay output {replay.output}"))
            except ReplayDivergence as exc:
                result.failures.append(("d-replay", str(exc).splitlines()[0][:300]))
        failures, notes = _check_payments(app, world, dplan, did, source_ledger, "d-")
        result.failures += failures
        result.notes += notes
    result.failures += check_ledger(world, source_ledger, "d-") + check_reruns(world, did or "x", "d-")
    if not mode.sabotage:
        result.failures += check_reservations(app, "d-") + check_chains(app, "d-")
    if did is not None and not mode.sabotage_derived:  # last: the replays add to the world's log
        result.failures += check_bundles(app, lambda flow: build(flow, world), [did], "d-")


def _expect_derived(
    copy: SeedDatabase, plan: Plan, dplan: DerivedPlan, at_key: str | None, source_ledger: list[Any], result: Result
) -> tuple[Outcome | None, set[str]]:
    """The derived run made without crashes, in ``copy`` (of the database, dropped afterwards): how it ended,
    and the calls it made live (the crash targets). Its own checks are ``e-`` failures. (None, ...) when
    there is no derived run to check (a live replay that did not diverge) or the expectation failed."""
    app = AgentFlow(copy.url)
    world = World(plan)
    world.variant, world.varied, world.execution = dplan.variant, dplan.varied, DERIVED
    try:
        wf = build(app, world)
        try:
            did = go(world, lambda: _start_derived(app, wf, dplan, at_key))
        except ReplayDivergence as exc:
            result.failures.append(("e-divergence", str(exc).splitlines()[0][:300]))
            return None, set()
        if world.crashed:
            result.failures.append(("e-error", f"a Crash with crashing off, at {world.crashed_at[-1]}"))
            return None, set()
        if did is None:
            result.log.append("derived: the live replay matched, no derived run")
            return None, set()
        expected = _outcome(app, did)
        result.log.append(f"derived expectation: {did} {expected.status}")
        if expected.status != RunStatus.COMPLETED.value:
            result.failures.append(("e-error", f"derived run {did} ended {expected.status}: {expected.error}"))
            return None, set()
        if dplan.kind != "live":
            logical = plan_output(plan, world, dplan.missing if dplan.kind == "counterfactual" else None)
            if expected.output != logical:
                result.failures.append(
                    ("e-output", f"got {json.dumps(expected.output)}\n   expected {json.dumps(logical)}")
                )
        failures, notes = _check_payments(app, world, dplan, did, source_ledger, "e-")
        result.failures += failures + check_ledger(world, source_ledger, "e-") + check_reruns(world, did, "e-")
        result.notes += notes
        return expected, {ev.tag for ev in world.log if isinstance(ev, Effect)}
    except Exception as exc:
        result.failures.append(("e-hang" if world.hung else "e-error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
        return None, set()
    finally:
        if result.verbose:
            result.log.append("--- the derived run made without crashes (expectation):")
            dump(app, world, result)
            result.log.append("---")
        app.close()
        copy.drop()


def _arm_derived(world: World, e: int, pool: set[str], rng: random.Random) -> None:
    """Set up execution ``e`` of the derived run: crash in a call of ``pool`` (calls the run made live
    without crashes, not recorded completed yet), block 0-2 others in flight."""
    plan = world.plan
    candidates = sorted(pool)
    target = rng.choice(candidates) if candidates else ""
    blockable = [
        t for t in candidates
        if t != target and not t.startswith(target + ".") and not plan.op(t).sync and plan.op(t).kind != "child"
    ]  # fmt: skip
    blocked = rng.sample(blockable, min(len(blockable), rng.choice([0, 0, 1, 1, 2])))
    world.execution, world.crash_target, world.blocked, world.crashed = DERIVED + e, target, set(blocked), False


def _no_inheritance(*_: Any, **__: Any) -> Inherited:
    return Inherited(SourceRecords())


def _derived_crash_and_resume(
    app: AgentFlow,
    wf: Any,
    world: World,
    mode: Mode,
    dplan: DerivedPlan,
    at_key: str | None,
    live: set[str],
    result: Result,
) -> str | None:
    """Make the derived run, crash it ``dplan.crashes`` times and resume it after each, then resume it with
    crashing off (unless it completed already). Its id, or None when it did not end (failures added)."""
    rng = random.Random(f"derived-crash:{world.plan.seed}")
    did: str | None = None
    recorded: set[str] = set()

    def start() -> None:
        nonlocal did
        did = _start_derived(app, wf, dplan, at_key)

    def resume() -> None:
        real = app_core.inherit
        if mode.sabotage_derived:  # a resumed derived run inherits nothing from its source
            app_core.inherit = _no_inheritance  # type: ignore[assignment]
        try:
            if mode.recover:
                app.recover()
            else:
                app.resume(did or "")
        finally:
            app_core.inherit = real

    for e in range(dplan.crashes + 1):
        final = e == dplan.crashes
        _arm_derived(world, e, set() if final else live - recorded, rng)
        result.log.append(f"derived exec {e}: " + ("final resume" if final else (
            f"target={world.crash_target} blocked={sorted(world.blocked)}"
        )))  # fmt: skip
        if not execute(world, result, e, final, start if e == 0 else resume, prefix="d-"):
            return None
        if e == 0:
            did = did or _derived_id(app, dplan.kind)  # (made before the crash)
            if did is None:
                result.failures.append(("d-error", "no derived run was made"))
                return None
        recorded |= world.completed_tags(did)
        if not world.crashed:
            break
    return did


def _check_payments(
    app: AgentFlow, world: World, dplan: DerivedPlan, did: str, source_ledger: list[Any], prefix: str
) -> tuple[list[Failure], list[Failure]]:
    """paid-live (a counterfactual executed a payment) and paid-twice (a fork, live replay or restart executed
    one at a key where its source has a record of the same request), moved-payment (one its source made
    with the same request at another key)."""
    failures: list[Failure] = []
    notes: list[Failure] = []
    paid = [ev for ev in world.log if isinstance(ev, Effect) and world.plan.op(ev.tag).kind == "pay"]
    if dplan.kind == "counterfactual":
        for ev in paid:
            failures.append((prefix + "paid-live", f"pay {ev.tag} executed in exec {ev.execution}"))
        return failures, notes
    source_paid = {(tag, amount) for _, _, tag, amount in source_ledger}
    tree = [r for r in app.list_runs(limit=None) if of_run(did, r.id)]
    twice: set[str] = set()
    for run in tree:
        if dplan.kind == "restart":
            source = [kept.step for kept in app.superseded_steps(run.id)]
        elif run.forked_from is not None:
            source = app.get_run(run.forked_from).steps
        else:
            source = []
        pays = [s for s in source if s.kind.value == "tool" and s.name == "pay"]
        made = {(s.key, s.fingerprint) for s in pays}
        copies = {(s.key, s.fingerprint, s.started_at) for s in pays}  # what a fork keeps, a served payment
        for step in app.get_run(run.id).steps:
            tag = tag_of(step)
            if step.name != "pay" or (step.key, step.fingerprint, step.started_at) in copies:
                continue
            if (step.key, step.fingerprint) in made and any(ev.tag == tag for ev in paid):
                twice.add(str(tag))
                failures.append((prefix + "paid-twice", f"pay {tag} executed in {run.id} at {step.key}, "
                                 "where its source has the same request"))  # fmt: skip
    for ev in paid:
        op = world.plan.op(ev.tag)
        if ev.tag not in twice and (ev.tag, op.amount + 100 * world.variant_of(ev.tag)) in source_paid:
            failures.append((prefix + "moved-payment", f"pay {ev.tag} paid by the source, executed again"))
    return failures, notes
