"""Seeded randomized crash/resume stress test of idempotency keys and key reservations (not a test module:
``test_crash_stress.py`` runs a fixed set of seeds; run many by hand with the command line below).

What a seed generates: a workflow of 2-4 branches under ``asyncio.gather``, each 1-4 random operations: a
sync or async step (an async one may make nested calls, in sequence or gathered, up to depth 2), ``pay``
(a non-idempotent tool taking an ``IdempotencyKey``; it writes the ledger), ``send`` (idempotent, also an
``IdempotencyKey`` and the ledger), ``look`` (idempotent) and a child run (its own operations). Every call
has a distinct ``tag`` argument, so no two requests share a fingerprint, and ``asyncio.sleep(0)`` counts
derived from the seed, the execution and the call vary the order in which concurrent calls go live.

Each seed runs in a fresh SQLite database: a clean run (id ``clean``) gives the expected output; run ``x``
then crashes 1-2 times (``Crash``, a ``BaseException`` like the process dying, raised in a chosen call after
its effect, while 0-2 other calls stay blocked in flight; a blocked call crashes itself after 400 loop
passes if the crash never comes), is resumed after each crash, and finally resumed with crashing off.

Invariants (failure types of a seed):
  output        the resumed run completes with the clean run's output
  key-reuse     an idempotency key is used for two different calls (ledger)
  key-changed   a keyed call made again uses another key than it was first made with
  paid-twice    a payment recorded completed is executed again
  rerun         any other call recorded completed is executed again
  divergence    ReplayDivergence on resume
  replay        a strict replay of the finished run fails or gives another output
  reservations  reservation rows left behind by a run that completed
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

Derived runs (``--derived``; choices from the seed's own rng, ``make_derived``, not the plan's): once "x"
has completed (and was checked), a derived run of it is made: ``app.restart("x", from_key=K)``,
``app.fork("x", at=K)`` (K: a random top-level record of "x"), ``app.counterfactual(wf, "x", missing=...)``
or ``app.replay("x", mode="live")``. It may run another variant of the code: a global ``variant`` (1) that
some calls' requests read (a step gets another argument, a payment another amount), never a call recorded
before K (that is a divergence, by design); a live replay always has one, so that it diverges somewhere.
Calls a counterfactual's world has no answer for give "missing ..." instead of failing the run.
The expectation: the same derived run made without crashes in a copy of the database (SQLite backup,
same records, and the same timing as the first execution of the crashing one: ``DERIVED``); the calls that
ran live there are the crash targets of the derived run, which crashes 1-N times (executions ``DERIVED``,
``DERIVED`` + 1, ...) with calls blocked in flight, and is resumed (``app.resume`` or ``app.recover()``)
until it completes. The output of a restart, a fork or a counterfactual is also known from the plan alone
(``plan_output``: every call gives its value under its variant; a counterfactual's "missing ..." for the
varied calls its world cannot answer); a live replay's is not (a child run served whole before the
divergence gives its old output, so it depends on when the divergence came). Failure types (``d-``: the
crashed derived run; ``e-``: the one made without crashes, which needs no crash to fail):
  d-output      the derived run does not end as the one made without crashes (status, output, error);
                e-output: that one's output is not the plan's
  d-paid-twice  a payment executed live by a fork, live replay or restart (recorded in it, not a copy of
                its source's record) at a key where its source run (for a restart: a superseded record
                of the run) has a record of the same request
  d-paid-live   a counterfactual executed a non-idempotent tool
  d-key-reuse   an idempotency key used for two different requests, across the source and derived runs
  d-key-changed, d-rerun, d-divergence, d-replay (strict replay of the finished derived run),
  d-reservations, d-hang, d-error: as above, for the derived run (and its child runs)
  d-moved-payment  a payment the derived run makes live with the very request its source paid, at
                another key (concurrent calls reached the engine in another order, so the source's
                record is not at the same key: it must be served all the same)

By hand (from the repository root; seeds run in parallel processes, one per CPU unless --jobs):
  .venv/bin/python tests/crash_stress.py --seeds 0:500 [--retries] [--crashes N] [--recover] [--no-child]
  .venv/bin/python tests/crash_stress.py --seeds 0:500 --sabotage      # expect failures
  .venv/bin/python tests/crash_stress.py --seeds 0:500 --derived all [--recover] [--retries]
  .venv/bin/python tests/crash_stress.py --seeds 0:100 --derived all --sabotage-derived  # expect failures
  .venv/bin/python tests/crash_stress.py -v SEED [mode options]        # one seed: its plan, log and records
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

import agentflow._app_core as app_core
from agentflow import AgentFlow, Context, IdempotencyKey, ReplayDivergence, RetryPolicy, Run, RunStatus, tool
from agentflow._derived import Inherited, SourceRecords

CLEAN = 100  # the clean run's execution number (crashing executions of run "x" are 0, 1, ...)
# The derived run's executions: DERIVED, DERIVED + 1, ... (its crashes, then the final one). The one made
# without crashes (the expectation) is DERIVED too: the same timing until the first crash.
DERIVED = 200
DERIVED_KINDS = ("restart", "fork", "counterfactual", "live")
NO_ANSWER = "the recorded world has no result"  # a counterfactual's tool call its world has no answer for
BLOCKED_PASSES = 400  # a call blocked in flight crashes itself after this many loop passes
HANG_PASSES = 100_000  # loop passes (while no sync call is in a worker thread) an execution may take
NO_RETRY = RetryPolicy(max_attempts=1)
RETRY = RetryPolicy(max_attempts=6, delay=0)

Failure = tuple[str, str]  # (failure type, details)
_T = TypeVar("_T")


class Crash(BaseException):
    """The process dies: not an Exception, so the run is left running with the call unrecorded."""


class Hang(Exception):
    """An execution did not end (see ``HANG_PASSES``)."""


@dataclass(frozen=True)
class Mode:
    child: bool = True  # child-run operations
    retries: bool = False  # flaky calls, retried
    crashes: int = 2  # most crashes per seed
    recover: bool = False  # resume with app.recover()
    sabotage: bool = False  # resumed runs do not see their reservations
    derived: str = ""  # "" | restart | fork | counterfactual | live | all: then a derived run crashes too
    sabotage_derived: bool = False  # resumed derived runs inherit nothing from their source
    any_point: bool = False  # fork or restart at any top-level record, also with steps in flight there

    def describe(self) -> str:
        parts = [f"child runs {'on' if self.child else 'off'}", f"retries {'on' if self.retries else 'off'}"]
        parts.append(f"crashes<={self.crashes}")
        parts += [name for name in ("recover", "sabotage") if getattr(self, name)]
        if self.derived:
            parts.append(f"derived {self.derived}" + (" sabotaged" if self.sabotage_derived else ""))
            parts += ["any point"] if self.any_point else []
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Op:
    kind: str  # step | pay | send | look | child
    tag: str
    name: str = ""  # a step's name
    sync: bool = False
    amount: int = 0
    nested: list[Op] = field(default_factory=list)
    nested_gather: bool = False
    flaky: str = ""  # "" | "before" | "after": fails once per run lineage, before or after its effect
    own_retry: bool = True  # a nested step retried by its own policy (else its failure fails its parent's attempt)

    def walk(self) -> Iterator[Op]:
        yield self
        for op in self.nested:
            yield from op.walk()

    def describe(self, indent: str = "") -> str:
        if self.kind == "step":
            extra = f"{self.name} {'sync' if self.sync else 'async'}"
        elif self.kind in ("pay", "send"):
            extra = f"amount={self.amount}{' sync' if self.sync else ''}"
        else:
            extra = "sync" if self.sync else ""
        text = f"{indent}{self.kind} {self.tag} {extra}".rstrip()
        if self.flaky:
            text += f" flaky-{self.flaky}" + ("" if self.own_retry or self.kind != "step" else " no-retry")
        if self.nested:
            text += f"  nested({'gather' if self.nested_gather else 'seq'}):"
            text += "".join("\n" + op.describe(indent + "    ") for op in self.nested)
        return text


def gen_op(rng: random.Random, tag: str, depth: int, allow_child: bool, retries: bool) -> Op:
    kinds, weights = ["step", "pay", "send", "look"], [4.0, 3.0, 1.0, 2.0]
    if allow_child and depth <= 1:
        kinds.append("child")
        weights.append(1 if depth == 0 else 0.5)
    kind = rng.choices(kinds, weights)[0]
    if kind == "step":
        op = Op("step", tag, name=rng.choice(["work", "calc"]), sync=rng.random() < 0.3)
        if not op.sync and depth < 2 and rng.random() < 0.5:
            n = rng.randint(1, 3)
            op.nested = [gen_op(rng, f"{tag}.{j}", depth + 1, allow_child, retries) for j in range(n)]
            op.nested_gather = n >= 2 and rng.random() < 0.4
        op.own_retry = rng.random() < 0.5
    elif kind in ("pay", "send"):
        op = Op(kind, tag, amount=rng.randint(1, 99), sync=rng.random() < 0.2)
    elif kind == "look":
        op = Op("look", tag, sync=rng.random() < 0.2)
    else:  # a child run: its own operations, sequential or gathered
        n = rng.randint(1, 2)
        op = Op("child", tag, nested=[gen_op(rng, f"{tag}.{j}", 2, False, retries) for j in range(n)])
        op.nested_gather = n >= 2 and rng.random() < 0.4
    if retries and kind != "child" and rng.random() < 0.3:
        op.flaky = rng.choice(["before", "after"])
    return op


@dataclass
class Plan:
    seed: int
    branches: list[list[Op]]
    maxk: int  # the most sleep(0) passes at one timing point
    crashes: list[tuple[str, list[str]]]  # per crashing execution: (the tag of the call to crash, blocked tags)

    def ops(self) -> list[Op]:
        return [op for branch in self.branches for top in branch for op in top.walk()]

    def op(self, tag: str) -> Op:
        return next(op for op in self.ops() if op.tag == tag)

    def describe(self) -> str:
        lines = [f"seed {self.seed}: maxk={self.maxk} crashes={self.crashes}"]
        for b, branch in enumerate(self.branches):
            lines.append(f"  branch {b}:")
            lines += [op.describe("    ") for op in branch]
        return "\n".join(lines)


def make_plan(seed: int, mode: Mode) -> Plan:
    rng = random.Random(seed)
    branches = [
        [gen_op(rng, f"b{b}.{i}", 0, mode.child, mode.retries) for i in range(rng.randint(1, 4))]
        for b in range(rng.randint(2, 4))
    ]
    plan = Plan(seed, branches, rng.choice([0, 1, 2, 3, 5, 8]), [])
    ops = plan.ops()
    blockable = [op.tag for op in ops if not op.sync and op.kind != "child"]
    for _ in range(rng.choice([1, 1, 2]) if mode.crashes == 2 else rng.randint(1, mode.crashes)):
        target = rng.choice(ops).tag
        candidates = [t for t in blockable if t != target and not t.startswith(target + ".")]
        blocked = rng.sample(candidates, min(len(candidates), rng.choice([0, 0, 1, 1, 2]))) if candidates else []
        plan.crashes.append((target, sorted(blocked)))
    return plan


# ------------------------------------------------------------------------------------------------ world


class Effect(NamedTuple):
    """A call's body ran (in ``execution``)."""

    execution: int
    tag: str


class Record(NamedTuple):
    """The engine recorded a step (seen by an ``on_step`` listener)."""

    run_id: str
    key: str
    tag: str | None
    status: str


class World:
    """What happens outside the engine: the ledger, an ordered log of effects and records, crash control and
    the hang guard."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.execution = 0
        self.crash_target = ""
        self.blocked: set[str] = set()
        self.log: list[Effect | Record] = []
        self.ledger: list[tuple[int, str, str, int]] = []  # (execution, idempotency key, tag, amount)
        self.crashed_at: list[str] = []
        self.crashed = False
        self.failed_once: set[tuple[str, str]] = set()  # (lineage, tag) of the flaky calls that failed
        self.in_thread: set[str] = set()  # sync calls that may be running in a worker thread
        self.watched: asyncio.AbstractEventLoop | None = None
        self.hung = False
        self.variant = 0  # read by the requests of the calls in ``varied`` (derived runs)
        self.varied: frozenset[str] = frozenset()

    # -- crash control

    def arm(self, execution: int, target: str, blocked: list[str], recorded: set[str]) -> None:
        """Set up an execution of run "x": the call to crash in and the calls to block in flight."""
        self.execution, self.crash_target, self.blocked, self.crashed = execution, target, set(blocked), False
        if execution > 0 and target in recorded:  # pick another target, among the calls not recorded yet
            rng = random.Random(self.plan.seed * 1000 + execution)
            candidates = sorted(op.tag for op in self.plan.ops() if op.tag not in recorded)
            self.crash_target = rng.choice(candidates) if candidates else ""
            self.blocked = {t for t in blocked if t not in recorded}

    def crash(self, where: str) -> None:
        self.crashed_at.append(where)
        self.crashed = True
        raise Crash(where)

    @property
    def lineage(self) -> str:
        return "derived" if self.execution >= DERIVED else "clean" if self.execution >= CLEAN else "x"

    def variant_of(self, tag: str) -> int:
        """The variant the call ``tag`` reads (0: as the source run made it)."""
        return self.variant if tag in self.varied else 0

    def k(self, tag: str, salt: str) -> int:
        if self.plan.maxk == 0:
            return 0
        digest = hashlib.sha256(f"{self.plan.seed}|{self.execution}|{tag}|{salt}".encode()).digest()
        return digest[0] % (self.plan.maxk + 1)

    async def wait(self, tag: str, salt: str) -> None:
        for _ in range(self.k(tag, salt)):
            await asyncio.sleep(0)

    def effect(self, op: Op, key: IdempotencyKey | None = None, amount: int = 0) -> None:
        """The call's body runs (a flaky one failing first, once per lineage, before its effect)."""
        if op.flaky == "before" and (self.lineage, op.tag) not in self.failed_once:
            self.failed_once.add((self.lineage, op.tag))
            raise RuntimeError(f"flaky {op.tag} (before)")
        self.log.append(Effect(self.execution, op.tag))
        if key is not None:
            self.ledger.append((self.execution, str(key), op.tag, amount))

    def fail_once_after(self, op: Op) -> None:
        """A flaky call failing after its effect, once per lineage."""
        if op.flaky == "after" and (self.lineage, op.tag) not in self.failed_once:
            self.failed_once.add((self.lineage, op.tag))
            raise RuntimeError(f"flaky {op.tag} (after)")

    async def after_effect(self, op: Op) -> None:
        """In an async call, after its effect: fail (flaky), crash here, stay blocked in flight, or go on."""
        self.fail_once_after(op)
        if op.tag == self.crash_target:
            await self.wait(op.tag, "precrash")
            self.crash(op.tag)
        if op.tag in self.blocked:
            for _ in range(BLOCKED_PASSES):  # if no crash comes (the target was served), crash here
                await asyncio.sleep(0)
            self.crash(op.tag + "(blocked)")

    def sync_body(self, op: Op, key: IdempotencyKey | None = None, amount: int = 0) -> None:
        """A sync call's body, in a worker thread: its effect, then fail (flaky), crash here, or go on."""
        self.in_thread.add(op.tag)  # run_seq added it before the first attempt; a retried attempt adds it again
        try:
            self.effect(op, key, amount)
            self.fail_once_after(op)
            if op.tag == self.crash_target:
                self.crash(op.tag)
        finally:
            self.in_thread.discard(op.tag)

    # -- hang guard

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[None]:
        """Guard the running event loop against a hang while the body runs (once per loop: the outermost run
        of an execution starts it)."""
        loop = asyncio.get_running_loop()
        if self.watched is loop:
            yield
            return
        self.watched = loop
        task = loop.create_task(self._watchdog())
        try:
            yield
        finally:
            task.cancel()
            self.watched = None

    async def _watchdog(self) -> None:
        """Count the loop's passes; stop the loop after ``HANG_PASSES``. Passes are not counted (nor made)
        while a sync call may be in a worker thread: that thread then has the GIL and the loop sleeps, so that
        the count does not depend on how fast threads are."""
        passes = 0
        while passes < HANG_PASSES:
            if self.in_thread:
                await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0)
                passes += 1
        self.hung = True
        asyncio.get_running_loop().stop()

    # -- what happened

    def completed_tags(self, root: str = "x") -> set[str]:
        """The tags of the calls of run ``root`` (children included) recorded completed."""
        records = (ev for ev in self.log if isinstance(ev, Record) and _of(root, ev.run_id))
        return {ev.tag for ev in records if ev.status == "completed" and ev.tag is not None}


def _of(root: str, run_id: str) -> bool:
    """Whether ``run_id`` is the run ``root`` or one of its child runs."""
    return run_id == root or run_id.startswith(root + "/")


def _of_x(run_id: str) -> bool:
    return _of("x", run_id)


def _tag_of(step: Any) -> str | None:
    request = step.request or {}
    if isinstance(request.get("arguments"), dict):
        return request["arguments"].get("tag")  # type: ignore[no-any-return]
    if request.get("args"):
        return str(request["args"][0])
    return None


# ------------------------------------------------------------------------------------------------ workflow


def build(app: AgentFlow, world: World) -> Any:
    """Register the plan's workflows (``wf`` and its child ``sub``) and a step listener; return ``wf``."""
    plan = world.plan
    ops = {op.tag: op for op in plan.ops()}

    def make_tools(kind: str, idempotent: bool, keyed: bool) -> tuple[Any, Any]:
        """The tool ``kind``, async and sync."""
        if keyed:

            async def call_async(tag: str, amount: int, key: IdempotencyKey) -> str:
                op = ops[tag]
                world.effect(op, key, amount)
                await world.wait(tag, "in")
                await world.after_effect(op)
                return f"{kind} {tag} {amount}"

            def call_sync(tag: str, amount: int, key: IdempotencyKey) -> str:
                world.sync_body(ops[tag], key, amount)
                return f"{kind} {tag} {amount}"

        else:

            async def call_async(tag: str) -> str:  # type: ignore[misc]
                op = ops[tag]
                world.effect(op)
                await world.wait(tag, "in")
                await world.after_effect(op)
                return f"{kind} {tag}"

            def call_sync(tag: str) -> str:  # type: ignore[misc]
                world.sync_body(ops[tag])
                return f"{kind} {tag}"

        make = tool(name=kind, idempotent=idempotent)
        return make(call_async), make(call_sync)

    tools = {
        "pay": make_tools("pay", idempotent=False, keyed=True),
        "send": make_tools("send", idempotent=True, keyed=True),
        "look": make_tools("look", idempotent=True, keyed=False),
    }

    def sync_step(tag: str, variant: int = 0) -> str:
        world.sync_body(ops[tag])
        return f"S({tag}{f'~{variant}' if variant else ''})"

    def async_step(ctx: Context) -> Callable[..., Any]:
        async def step(tag: str, variant: int = 0) -> str:
            op = ops[tag]
            world.effect(op)
            await world.wait(tag, "in")
            inner = await run_group(ctx, op.nested, op.nested_gather, inside_step=True) if op.nested else []
            await world.wait(tag, "in2")
            await world.after_effect(op)
            return f"S({tag}{f'~{variant}' if variant else ''}|{json.dumps(inner)})"

        return step

    async def run_group(ctx: Context, group: list[Op], gather: bool, inside_step: bool) -> list[Any]:
        if not gather:
            return await run_seq(ctx, group, inside_step)
        half = (len(group) + 1) // 2
        parts = [group[:half], group[half:]]
        results = await asyncio.gather(*(run_seq(ctx, part, inside_step) for part in parts), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        # a Crash (the process died) first: nothing may swallow it
        for error in sorted(errors, key=lambda e: isinstance(e, Exception)):
            raise error
        return [value for r in results for value in r]  # type: ignore[union-attr]

    async def run_seq(ctx: Context, seq: list[Op], inside_step: bool) -> list[Any]:
        out = []
        for op in seq:
            await world.wait(op.tag, "pre")
            if op.sync:  # the hang guard's count pauses while the call may be in a worker thread
                world.in_thread.add(op.tag)
            try:
                out.append(await run_op(ctx, op, inside_step))
            finally:
                world.in_thread.discard(op.tag)
        return out

    async def run_op(ctx: Context, op: Op, inside_step: bool) -> Any:
        variant = world.variant_of(op.tag)  # 0 but in some derived runs; then the request changes
        if op.kind == "step":
            fn = sync_step if op.sync else async_step(ctx)
            step_args = (op.tag, variant) if variant else (op.tag,)
            return await ctx.step(op.name, fn, *step_args, retry=RETRY if not inside_step or op.own_retry else NO_RETRY)
        if op.kind in tools:
            fn = tools[op.kind][1 if op.sync else 0]
            amount = op.amount + 100 * variant
            args: dict[str, Any] = {"tag": op.tag} if op.kind == "look" else {"tag": op.tag, "amount": amount}
            # inside a step a failure fails the step's attempt (the step is tried again); outside it is retried
            result = await ctx.tool(fn, args, retry=NO_RETRY if inside_step else RETRY)
            if not result.ok:
                if NO_ANSWER in (result.error or ""):  # a counterfactual's: the run goes on, the output says so
                    return f"missing {op.kind} {op.tag}"
                raise RuntimeError(f"{op.tag} failed: {result.error}")
            return result.value
        if op.kind == "child":
            return await ctx.child(sub, op.tag)
        raise AssertionError(op.kind)

    @app.workflow(name="sub")
    async def sub(ctx: Context, tag: str) -> Any:
        async with world.watch():  # recover() runs a child run on its own
            op = ops[tag]
            world.effect(op)
            inner = await run_group(ctx, op.nested, op.nested_gather, inside_step=False)
            await world.after_effect(op)
            return {"child": tag, "inner": inner}

    @app.workflow(name="wf")
    async def wf(ctx: Context) -> Any:
        async with world.watch():
            return list(await asyncio.gather(*(run_seq(ctx, branch, False) for branch in plan.branches)))

    def listener(run_id: str, step: Any) -> None:
        world.log.append(Record(run_id, step.key, _tag_of(step), step.status.value))

    app.on_step(listener)
    return wf


# ------------------------------------------------------------------------------------------------ a seed


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


def run_one(seed: int, directory: str | os.PathLike[str], mode: Mode = Mode(), verbose: bool = False) -> Result:
    """Run seed ``seed`` in ``mode`` in a new SQLite database under ``directory`` (left there) and check it."""
    plan = make_plan(seed, mode)
    result = Result(seed, mode, plan.describe(), verbose=verbose)
    db = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=directory)) / "db.sqlite"
    app = AgentFlow(str(db))
    world = World(plan)
    try:
        if mode.sabotage:  # resumed runs see no reservations: a call in flight at a crash may lose its key
            app._store.load_reservations = lambda run_id: {}  # type: ignore[method-assign]
        wf = build(app, world)
        world.execution = CLEAN
        clean = _go(world, lambda: app.run(wf, run_id="clean"))
        if clean is None or clean.status != RunStatus.COMPLETED:
            why = "it crashed" if clean is None else f"{clean.status}: {clean.error}"
            result.failures.append(("error", f"the clean run did not complete: {why}"))
            return result
        if clean.output != plan_output(plan, world):  # the harness's own check of plan_output
            result.failures.append(("error", f"the clean run's output is not the plan's: {clean.output}"))
        world.log.clear()
        world.ledger.clear()
        if _crash_and_resume(app, wf, world, mode, result):
            result.failures += _check_run(app, clean.output, mode)
        result.failures += _check_ledger(world) + _check_reruns(world)
        if mode.derived and app.get_run("x").status == RunStatus.COMPLETED:
            if verbose:
                _dump(app, world, result)
            _derived_phase(app, wf, world, db, mode, result)
        if verbose:
            _dump(app, world, result)
    except Exception as exc:
        result.failures.append(("hang" if world.hung else "error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
    finally:
        app.close()
    return result


def _go(world: World, call: Callable[[], _T]) -> _T | None:
    """Run, resume or recover: the run, or None when it crashed."""
    try:
        return call()
    except Crash:
        return None
    except RuntimeError as exc:  # the hang guard stopped the loop
        if world.hung:
            raise Hang(f"execution {world.execution} did not end within {HANG_PASSES} loop passes") from exc
        raise


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
        try:
            _go(world, (lambda: app.run(wf, run_id="x")) if e == 0 else resume)
        except ReplayDivergence as exc:
            result.failures.append(("divergence", f"exec {e}: {str(exc).splitlines()[0][:300]}"))
            result.log.append(traceback.format_exc())
            return False
        if final and world.crashed:
            result.failures.append(("error", f"a Crash with crashing off, at {world.crashed_at[-1]}"))
            return False
        result.log.append(f"  crashed at {world.crashed_at[-1] if world.crashed else None}")
        recorded |= world.completed_tags()
        if not world.crashed:
            break
    return True


def _check_run(app: AgentFlow, expected: Any, mode: Mode) -> list[Failure]:
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
        failures += _check_reservations(app)
    return failures


def _check_reservations(app: AgentFlow, prefix: str = "") -> list[Failure]:
    """reservations: none left by a run that completed."""
    failures: list[Failure] = []
    for r in app.list_runs(status=RunStatus.COMPLETED, limit=None):
        left = app._store.load_reservations(r.id)
        if left:
            failures.append((prefix + "reservations", f"{r.id}: {left}"))
    return failures


def _check_ledger(world: World, before: Sequence[tuple[int, str, str, int]] = (), prefix: str = "") -> list[Failure]:
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


def _check_reruns(world: World, root: str = "x", prefix: str = "") -> list[Failure]:
    """paid-twice and rerun: nothing recorded completed (in run ``root`` and its children) is executed again."""
    failures: list[Failure] = []
    done: set[str] = set()
    for ev in world.log:
        if isinstance(ev, Record):
            if _of(root, ev.run_id) and ev.status == "completed" and ev.tag is not None:
                done.add(ev.tag)
        elif ev.tag in done:
            kind = world.plan.op(ev.tag).kind
            what = "paid-twice" if kind == "pay" else "rerun"
            failures.append(
                (prefix + what, f"{kind} {ev.tag} recorded completed, executed again in exec {ev.execution}")
            )
    return failures


def _dump(app: AgentFlow, world: World, result: Result) -> None:
    result.log.append(f"ledger: {world.ledger}")
    result.log.append("log:\n  " + "\n  ".join(map(str, world.log)))
    for r in app.list_runs(limit=None):
        steps = [f"{s.key}={_tag_of(s)}" + ("" if s.status.value == "completed" else f"({s.status.value})")
                 for s in app.get_run(r.id).steps]  # fmt: skip
        result.log.append(f"run {r.id}: {', '.join(steps)}")


# ------------------------------------------------------------------------------------------------ derived runs


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


def plan_output(plan: Plan, world: World, missing: str | None = None) -> list[list[Any]]:
    """The workflow's output when every call gives its value under its variant. ``missing``: a
    counterfactual's mode (its world answers the calls its source made, and no varied call)."""

    def value(op: Op) -> Any:
        variant = world.variant_of(op.tag)
        unanswered = op.kind in ("pay", "send", "look") and missing is not None and variant
        if unanswered and (op.kind == "pay" or missing == "missing"):  # a pay never runs live in a counterfactual
            return f"missing {op.kind} {op.tag}"
        mark = f"~{variant}" if variant else ""
        if op.kind == "step":
            return f"S({op.tag}{mark})" if op.sync else f"S({op.tag}{mark}|{json.dumps([value(n) for n in op.nested])})"
        if op.kind in ("pay", "send"):
            return f"{op.kind} {op.tag} {op.amount + 100 * variant}"
        if op.kind == "look":
            return f"look {op.tag}"
        return {"child": op.tag, "inner": [value(n) for n in op.nested]}

    return [[value(op) for op in branch] for branch in plan.branches]


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
    served = {str(_tag_of(s)) for s in steps if target is not None and s.seq < target.seq}
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


def _derived_phase(app: AgentFlow, wf: Any, world: World, db: Path, mode: Mode, result: Result) -> None:
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
    expected, live = _expect_derived(db, plan, dplan, at_key, source_ledger, result)
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
    result.failures += _check_ledger(world, source_ledger, "d-") + _check_reruns(world, did or "x", "d-")
    if not mode.sabotage:
        result.failures += _check_reservations(app, "d-")


def _expect_derived(
    db: Path, plan: Plan, dplan: DerivedPlan, at_key: str | None, source_ledger: list[Any], result: Result
) -> tuple[Outcome | None, set[str]]:
    """The derived run made without crashes, in a copy of the database: how it ended, and the calls it made
    live (the crash targets). Its own checks are ``e-`` failures. (None, ...) when there is no derived run
    to check (a live replay that did not diverge) or the expectation failed."""
    copy = db.with_name("expected.sqlite")
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    app = AgentFlow(str(copy))
    world = World(plan)
    world.variant, world.varied, world.execution = dplan.variant, dplan.varied, DERIVED
    try:
        wf = build(app, world)
        try:
            did = _go(world, lambda: _start_derived(app, wf, dplan, at_key))
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
        result.failures += failures + _check_ledger(world, source_ledger, "e-") + _check_reruns(world, did, "e-")
        result.notes += notes
        return expected, {ev.tag for ev in world.log if isinstance(ev, Effect)}
    except Exception as exc:
        result.failures.append(("e-hang" if world.hung else "e-error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
        return None, set()
    finally:
        if result.verbose:
            result.log.append("--- the derived run made without crashes (expectation):")
            _dump(app, world, result)
            result.log.append("---")
        app.close()


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
        try:
            if e == 0:
                did = _go(world, lambda: _start_derived(app, wf, dplan, at_key)) or _derived_id(app, dplan.kind)
                if did is None:
                    result.failures.append(("d-error", "no derived run was made"))
                    return None
            else:
                _go(world, resume)
        except ReplayDivergence as exc:
            result.failures.append(("d-divergence", f"exec {e}: {str(exc).splitlines()[0][:300]}"))
            result.log.append(traceback.format_exc())
            return None
        if final and world.crashed:
            result.failures.append(("d-error", f"a Crash with crashing off, at {world.crashed_at[-1]}"))
            return None
        result.log.append(f"  derived run crashed at {world.crashed_at[-1] if world.crashed else None}")
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
    tree = [r for r in app.list_runs(limit=None) if _of(did, r.id)]
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
            tag = _tag_of(step)
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


# ------------------------------------------------------------------------------------------------ by hand


def _worker(job: tuple[int, str, Mode]) -> Result:
    """One seed in a pool process, with a wall-clock backstop for what the hang guard cannot see (a sync
    call that never returns)."""
    seed, directory, mode = job

    def on_alarm(*_: Any) -> None:
        raise TimeoutError("the seed took more than 120 s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    try:
        return run_one(seed, directory, mode)
    except TimeoutError as exc:
        return Result(seed, mode, make_plan(seed, mode).describe(), [("hang", str(exc))])
    finally:
        signal.alarm(0)


def run_seeds(seeds: range, mode: Mode, directory: str, jobs: int) -> list[Result]:
    jobs_list = [(seed, directory, mode) for seed in seeds]
    if jobs <= 1:
        return [_worker(job) for job in jobs_list]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_worker, jobs_list, chunksize=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0:500", help="start:stop (default 0:500)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)")
    parser.add_argument("--no-child", action="store_true", help="no child-run operations")
    parser.add_argument("--retries", action="store_true", help="flaky calls (fail once), retried")
    parser.add_argument("--crashes", type=int, default=2, help="most crashes per seed (2: 1 or 2, mostly 1)")
    parser.add_argument("--recover", action="store_true", help="resume with app.recover() instead of app.resume")
    parser.add_argument("--sabotage", action="store_true", help="hide reservations from resumed runs")
    parser.add_argument("--derived", default="", choices=["", *DERIVED_KINDS, "all"], help="derived runs too")
    parser.add_argument("--sabotage-derived", action="store_true", help="resumed derived runs inherit nothing")
    parser.add_argument("--any-point", action="store_true", help="fork/restart also where steps were in flight")
    parser.add_argument("-v", "--verbose", type=int, metavar="SEED", help="run one seed and print everything")
    parser.add_argument("--examples", type=int, default=2, help="failing seeds shown per failure type")
    args = parser.parse_args(argv)
    mode = Mode(
        not args.no_child, args.retries, args.crashes, args.recover, args.sabotage, args.derived,
        args.sabotage_derived, args.any_point,
    )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="agentflow-stress-") as directory:
        if args.verbose is not None:
            res = run_one(args.verbose, directory, mode, verbose=True)
            print(res.plan, *res.log, *(f"NOTE {kind}: {msg}" for kind, msg in res.notes), sep="\n")
            print(*(f"FAIL {kind}: {msg}" for kind, msg in res.failures), sep="\n")
            if not res.failures:
                print("OK")
            return 1 if res.failures else 0
        start, stop = (int(x) for x in args.seeds.split(":"))
        began = time.monotonic()
        results = run_seeds(range(start, stop), mode, directory, args.jobs)

    by_kind: dict[str, list[int]] = defaultdict(list)
    for res in results:
        for kind in res.kinds:
            by_kind[kind].append(res.seed)
    failing = [res.seed for res in results if res.failures]
    print(f"seeds {start}..{stop - 1} ({len(results)}), {mode.describe()}, {time.monotonic() - began:.1f}s: "
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
