"""The crash stress test's seeded plan, the world its calls act on, and the workflow built from the plan
(see ``crash_stress.py`` for what a seed does and what is checked)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from agentflow import AgentFlow, Context, IdempotencyKey, RetryPolicy, tool

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
        records = (ev for ev in self.log if isinstance(ev, Record) and of_run(root, ev.run_id))
        return {ev.tag for ev in records if ev.status == "completed" and ev.tag is not None}


def of_run(root: str, run_id: str) -> bool:
    """Whether ``run_id`` is the run ``root`` or one of its child runs."""
    return run_id == root or run_id.startswith(root + "/")


def of_x(run_id: str) -> bool:
    return of_run("x", run_id)


def tag_of(step: Any) -> str | None:
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
        world.log.append(Record(run_id, step.key, tag_of(step), step.status.value))

    app.on_step(listener)
    return wf


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


def go(world: World, call: Callable[[], _T]) -> _T | None:
    """Run, resume or recover: the run, or None when it crashed."""
    try:
        return call()
    except Crash:
        return None
    except RuntimeError as exc:  # the hang guard stopped the loop
        if world.hung:
            raise Hang(f"execution {world.execution} did not end within {HANG_PASSES} loop passes") from exc
        raise
