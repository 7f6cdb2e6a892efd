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

By hand (from the repository root; seeds run in parallel processes, one per CPU unless --jobs):
  .venv/bin/python tests/crash_stress.py --seeds 0:500 [--retries] [--crashes N] [--recover] [--no-child]
  .venv/bin/python tests/crash_stress.py --seeds 0:500 --sabotage      # expect failures
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
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from agentflow import AgentFlow, Context, IdempotencyKey, ReplayDivergence, RetryPolicy, Run, RunStatus, tool

CLEAN = 100  # the clean run's execution number (crashing executions of run "x" are 0, 1, ...)
BLOCKED_PASSES = 400  # a call blocked in flight crashes itself after this many loop passes
HANG_PASSES = 100_000  # loop passes (while no sync call is in a worker thread) an execution may take
NO_RETRY = RetryPolicy(max_attempts=1)
RETRY = RetryPolicy(max_attempts=6, delay=0)

Failure = tuple[str, str]  # (failure type, details)


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

    def describe(self) -> str:
        parts = [f"child runs {'on' if self.child else 'off'}", f"retries {'on' if self.retries else 'off'}"]
        parts.append(f"crashes<={self.crashes}")
        parts += [name for name in ("recover", "sabotage") if getattr(self, name)]
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
        return "clean" if self.execution >= CLEAN else "x"

    def k(self, tag: str, salt: str) -> int:
        if self.plan.maxk == 0:
            return 0
        digest = hashlib.sha256(f"{self.plan.seed}|{self.execution}|{tag}|{salt}".encode()).digest()
        return digest[0] % (self.plan.maxk + 1)

    async def wait(self, tag: str, salt: str) -> None:
        for _ in range(self.k(tag, salt)):
            await asyncio.sleep(0)

    def effect(self, op: Op, key: IdempotencyKey | None = None) -> None:
        """The call's body runs (a flaky one failing first, once per lineage, before its effect)."""
        if op.flaky == "before" and (self.lineage, op.tag) not in self.failed_once:
            self.failed_once.add((self.lineage, op.tag))
            raise RuntimeError(f"flaky {op.tag} (before)")
        self.log.append(Effect(self.execution, op.tag))
        if key is not None:
            self.ledger.append((self.execution, str(key), op.tag, op.amount))

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

    def sync_body(self, op: Op, key: IdempotencyKey | None = None) -> None:
        """A sync call's body, in a worker thread: its effect, then fail (flaky), crash here, or go on."""
        self.in_thread.add(op.tag)  # run_seq added it before the first attempt; a retried attempt adds it again
        try:
            self.effect(op, key)
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

    def completed_tags(self) -> set[str]:
        """The tags of the calls of run "x" (children included) recorded completed."""
        records = (ev for ev in self.log if isinstance(ev, Record) and _of_x(ev.run_id))
        return {ev.tag for ev in records if ev.status == "completed" and ev.tag is not None}


def _of_x(run_id: str) -> bool:
    return run_id == "x" or run_id.startswith("x/")


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
                world.effect(op, key)
                await world.wait(tag, "in")
                await world.after_effect(op)
                return f"{kind} {tag} {amount}"

            def call_sync(tag: str, amount: int, key: IdempotencyKey) -> str:
                world.sync_body(ops[tag], key)
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

    def sync_step(tag: str) -> str:
        world.sync_body(ops[tag])
        return f"S({tag})"

    def async_step(ctx: Context) -> Callable[[str], Any]:
        async def step(tag: str) -> str:
            op = ops[tag]
            world.effect(op)
            await world.wait(tag, "in")
            inner = await run_group(ctx, op.nested, op.nested_gather, inside_step=True) if op.nested else []
            await world.wait(tag, "in2")
            await world.after_effect(op)
            return f"S({tag}|{json.dumps(inner)})"

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
        if op.kind == "step":
            fn = sync_step if op.sync else async_step(ctx)
            return await ctx.step(op.name, fn, op.tag, retry=RETRY if not inside_step or op.own_retry else NO_RETRY)
        if op.kind in tools:
            fn = tools[op.kind][1 if op.sync else 0]
            args: dict[str, Any] = {"tag": op.tag} if op.kind == "look" else {"tag": op.tag, "amount": op.amount}
            # inside a step a failure fails the step's attempt (the step is tried again); outside it is retried
            result = await ctx.tool(fn, args, retry=NO_RETRY if inside_step else RETRY)
            if not result.ok:
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

    @property
    def kinds(self) -> list[str]:
        return sorted({kind for kind, _ in self.failures})


def run_one(seed: int, directory: str | os.PathLike[str], mode: Mode = Mode(), verbose: bool = False) -> Result:
    """Run seed ``seed`` in ``mode`` in a new SQLite database under ``directory`` (left there) and check it."""
    plan = make_plan(seed, mode)
    result = Result(seed, mode, plan.describe())
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
        world.log.clear()
        world.ledger.clear()
        if _crash_and_resume(app, wf, world, mode, result):
            result.failures += _check_run(app, clean.output, mode)
        result.failures += _check_ledger(world) + _check_reruns(world)
        if verbose:
            _dump(app, world, result)
    except Exception as exc:
        result.failures.append(("hang" if world.hung else "error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        result.log.append(traceback.format_exc())
    finally:
        app.close()
    return result


def _go(world: World, call: Callable[[], Run]) -> Run | None:
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
        for r in app.list_runs(status=RunStatus.COMPLETED, limit=None):
            left = app._store.load_reservations(r.id)
            if left:
                failures.append(("reservations", f"{r.id}: {left}"))
    return failures


def _check_ledger(world: World) -> list[Failure]:
    """key-reuse and key-changed, on the ledger (the tools taking an IdempotencyKey: pay and send)."""
    failures: list[Failure] = []
    by_key: dict[str, set[tuple[str, int]]] = defaultdict(set)
    by_tag: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for execution, key, tag, amount in world.ledger:
        by_key[key].add((tag, amount))
        by_tag[tag].append((execution, key))
    for key, calls in by_key.items():
        if len(calls) > 1:
            failures.append(("key-reuse", f"key {key} used for {sorted(calls)}"))
    for tag, uses in by_tag.items():
        if len({key for _, key in uses}) > 1:
            failures.append(("key-changed", f"{world.plan.op(tag).kind} {tag} made under keys {uses}"))
    return failures


def _check_reruns(world: World) -> list[Failure]:
    """paid-twice and rerun: nothing recorded completed (in run "x" and its children) is executed again."""
    failures: list[Failure] = []
    done: set[str] = set()
    for ev in world.log:
        if isinstance(ev, Record):
            if _of_x(ev.run_id) and ev.status == "completed" and ev.tag is not None:
                done.add(ev.tag)
        elif ev.tag in done:
            kind = world.plan.op(ev.tag).kind
            what = "paid-twice" if kind == "pay" else "rerun"
            failures.append((what, f"{kind} {ev.tag} recorded completed, executed again in exec {ev.execution}"))
    return failures


def _dump(app: AgentFlow, world: World, result: Result) -> None:
    result.log.append(f"ledger: {world.ledger}")
    result.log.append("log:\n  " + "\n  ".join(map(str, world.log)))
    for r in app.list_runs(limit=None):
        steps = [f"{s.key}={_tag_of(s)}" + ("" if s.status.value == "completed" else f"({s.status.value})")
                 for s in app.get_run(r.id).steps]  # fmt: skip
        result.log.append(f"run {r.id}: {', '.join(steps)}")


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
    parser.add_argument("-v", "--verbose", type=int, metavar="SEED", help="run one seed and print everything")
    parser.add_argument("--examples", type=int, default=2, help="failing seeds shown per failure type")
    args = parser.parse_args(argv)
    mode = Mode(not args.no_child, args.retries, args.crashes, args.recover, args.sabotage)

    with tempfile.TemporaryDirectory(prefix="agentflow-stress-") as directory:
        if args.verbose is not None:
            res = run_one(args.verbose, directory, mode, verbose=True)
            print(res.plan, *res.log, *(f"FAIL {kind}: {msg}" for kind, msg in res.failures), sep="\n")
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
    shown: dict[str, int] = defaultdict(int)
    for res in results:
        for kind, msg in res.failures:
            if shown[kind] < args.examples:
                shown[kind] += 1
                print(f"\n--- seed {res.seed} [{kind}] {msg}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
