"""What a seed of the crash stress test found (``Result``), and the checks on a run and on the world's
ledger and log (the failure types are listed in ``crash_stress.py``)."""

from __future__ import annotations

import json
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crash_stress_world import (
    Failure,
    Mode,
    Record,
    World,
    go,
    of_run,
    tag_of,
)

from agentflow import AgentFlow, ReplayDivergence, RunStatus


def execute(world: World, result: Result, e: int, final: bool, call: Callable[[], Any], prefix: str = "") -> bool:
    """Execution ``e`` (``call``: run, resume or recover), logged: False when it ends the course, a
    divergence or a Crash with crashing off (failures added, ``prefix`` before their types)."""
    try:
        go(world, call)
    except ReplayDivergence as exc:
        result.failures.append((prefix + "divergence", f"exec {e}: {str(exc).splitlines()[0][:300]}"))
        result.log.append(traceback.format_exc())
        return False
    if final and world.crashed:
        result.failures.append((prefix + "error", f"a Crash with crashing off, at {world.crashed_at[-1]}"))
        return False
    run = "derived run " if prefix else ""
    result.log.append(f"  {run}crashed at {world.crashed_at[-1] if world.crashed else None}")
    return True


@dataclass
class Result:
    seed: int
    mode: Mode
    plan: str
    failures: list[Failure] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    notes: list[Failure] = field(default_factory=list)  # counted, not failures (none at the moment)
    verbose: bool = False  # log the records and the world of the derived run made without crashes too

    @property
    def kinds(self) -> list[str]:
        return sorted({kind for kind, _ in self.failures})


def check_run(app: AgentFlow, expected: Any, mode: Mode) -> list[Failure]:
    """output, replay and reservations."""
    failures: list[Failure] = []
    run = app.get_run("x")
    if run.status != RunStatus.COMPLETED:
        return [("error", f"final status {run.status}: {run.error}")]
    if run.output != expected:
        failures.append(("output", f"got {json.dumps(run.output)}\n   expected {json.dumps(expected)}"))
    else:
        try:
            replay = app.replay("x")
            if replay.output != expected:
                failures.append(("replay", f"replay output {replay.output}"))
        except ReplayDivergence as exc:
            failures.append(("replay", str(exc).splitlines()[0][:300]))
    if not mode.sabotage:  # (sabotaged, the reservations are hidden)
        failures += check_reservations(app)
    return failures + check_chains(app)


def check_chains(app: AgentFlow, prefix: str = "") -> list[Failure]:
    """chain: every run's hash chain holds, its superseded records' too (crashes, restarts and resumes
    leave a record that ``verify`` finds intact)."""
    failures: list[Failure] = []
    for r in app.list_runs(limit=None):
        broken = app.verify(r.id)
        if broken is not None:
            failures.append((prefix + "chain", f"{r.id}: the hash chain breaks at {broken}"))
    return failures


def check_reservations(app: AgentFlow, prefix: str = "") -> list[Failure]:
    """reservations: none left by a run that completed."""
    failures: list[Failure] = []
    for r in app.list_runs(status=RunStatus.COMPLETED, limit=None):
        left = app._store.load_reservations(r.id)
        if left:
            failures.append((prefix + "reservations", f"{r.id}: {left}"))
    return failures


def check_bundles(
    app: AgentFlow, register: Callable[[AgentFlow], Any], roots: Sequence[str] | None = None, prefix: str = ""
) -> list[Failure]:
    """bundle: each run without a parent (of ``roots``, or all), exported and imported into an empty
    database, arrives with its children, every step record and every superseded record as they are here,
    and a chain that holds; with the workflows registered there (``register``: as the world is now), a
    strict replay of it there gives its output. The replays add to the world's log."""
    failures: list[Failure] = []
    for root in app.list_runs(limit=None):
        if root.parent_id is not None or (roots is not None and root.id not in roots):
            continue
        try:
            data = app.export_run(root.id)
            with AgentFlow(":memory:") as copy:
                for run_id in copy.import_runs(data):
                    same = app._store.load_steps(run_id) == copy._store.load_steps(run_id)
                    same &= app._store.load_superseded(run_id) == copy._store.load_superseded(run_id)
                    if not same or copy.verify(run_id) is not None:
                        failures.append((prefix + "bundle", f"{root.id}: run {run_id} did not arrive as it is"))
                if root.status == RunStatus.COMPLETED:
                    register(copy)
                    replay = copy.replay(root.id)
                    if replay.output != root.output:
                        failures.append((prefix + "bundle", f"{root.id}: replayed from its bundle: {replay.output}"))
        except Exception as exc:
            failures.append((prefix + "bundle", f"{root.id}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
    return failures


def check_ledger(world: World, before: Sequence[tuple[int, str, str, int]] = (), prefix: str = "") -> list[Failure]:
    """key-reuse and key-changed, on the ledger (the tools taking an IdempotencyKey: pay and send); key-reuse
    also across the entries ``before`` (a derived run's source's), key-changed not."""
    failures: list[Failure] = []
    by_key: dict[str, set[tuple[str, int]]] = defaultdict(set)
    by_tag: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for _, key, tag, amount in [*before, *world.ledger]:
        by_key[key].add((tag, amount))
    for execution, key, tag, _ in world.ledger:
        by_tag[tag].append((execution, key))
    for key, calls in by_key.items():
        if len(calls) > 1:
            failures.append((prefix + "key-reuse", f"key {key} used for {sorted(calls)}"))
    for tag, uses in by_tag.items():
        if len({key for _, key in uses}) > 1:
            failures.append((prefix + "key-changed", f"{world.plan.op(tag).kind} {tag} made under keys {uses}"))
    return failures


def check_reruns(world: World, root: str = "x", prefix: str = "") -> list[Failure]:
    """paid-twice and rerun: nothing recorded completed (in run ``root`` and its children) is executed again."""
    failures: list[Failure] = []
    done: set[str] = set()
    for ev in world.log:
        if isinstance(ev, Record):
            if of_run(root, ev.run_id) and ev.status == "completed" and ev.tag is not None:
                done.add(ev.tag)
        elif ev.tag in done:
            kind = world.plan.op(ev.tag).kind
            what = "paid-twice" if kind == "pay" else "rerun"
            failures.append(
                (prefix + what, f"{kind} {ev.tag} recorded completed, executed again in exec {ev.execution}")
            )
    return failures


def dump(app: AgentFlow, world: World, result: Result) -> None:
    result.log.append(f"ledger: {world.ledger}")
    result.log.append("log:\n  " + "\n  ".join(map(str, world.log)))
    for r in app.list_runs(limit=None):
        steps = [f"{s.key}={tag_of(s)}" + ("" if s.status.value == "completed" else f"({s.status.value})")
                 for s in app.get_run(r.id).steps]  # fmt: skip
        result.log.append(f"run {r.id}: {', '.join(steps)}")
