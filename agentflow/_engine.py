"""The engine of one executing run: finds recorded steps, runs missing ones, records what happened.

A step is found in the run's journal by its key; when it is there, its fingerprint must match and its
recorded output (or failure) is served without running anything. When it is not, it runs live under a
retry policy and its outcome is recorded in one write. Steps, tool calls and model calls all go through
``attempts`` (retries, backoff, per-attempt timeouts) and ``record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._clock import Clock
from ._codec import Codec, canonical_json, escape_surrogates, fingerprint
from ._derived import SourceRecords
from ._engine_types import (
    Attempts,
    ChildOrigin,
    ChildRunFailed,
    ChildRunner,
    Compensation,
    RunExtras,
    Suspend,
)
from ._journal import Journal
from ._models import ErrorInfo, keep_secrets_out, redact_error
from ._retry import RetryPolicy
from ._scope import current_scope, enter_scope, in_sibling_task, leave_scope, yield_to_siblings
from ._secrets import split_secrets
from ._store import StepRecord
from ._tool import IdempotencyKey, Tool, ToolArgumentsError, ToolResult
from .errors import (
    AgentFlowError,
    EventTimeout,
    NonRetryableError,
    ReplayDivergence,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoreError,
)

__all__ = ["RunEngine"]

log = logging.getLogger("agentflow")

# Errors about the program or the store, not about the step: never retried, never recorded.
_PASS_THROUGH = (ReplayDivergence, StoreError, SerializationError)


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


@dataclass
class RunEngine:
    """Everything one executing run needs: its journal, the clock, the codec, the default policies."""

    run_id: str
    journal: Journal
    codec: Codec
    clock: Clock
    default_retry: RetryPolicy
    # The first divergence or store failure. The run cannot go on once one happened, even if the
    # workflow caught the exception: later steps raise it again, and so does the end of the run.
    halted: AgentFlowError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    # Blobs this run has written (content-addressed), so each is sent to the store once.
    written_blobs: set[str] = field(default_factory=set)
    extras: RunExtras = field(default_factory=RunExtras)  # per-run state of the modules above
    # Told of every step once it is recorded (a live display, say); a failing listener is logged, not raised.
    listeners: list[Callable[[StepRecord], None]] = field(default_factory=list)
    # "resume" serves what is recorded and runs the rest; "strict" and "relaxed" replays serve only (with
    # and without checking fingerprints) and write nothing; "live" serves until the first divergence,
    # then calls on_diverge (which moves the journal to a new run) and goes on as "resume".
    mode: Literal["resume", "strict", "relaxed", "live"] = "resume"
    on_diverge: Callable[[ReplayDivergence], None] | None = None
    served: set[str] = field(default_factory=set)  # the keys served from the record (a replay checks them)
    # Calls that a retried step made again after they failed in its earlier attempt: key -> that slot.
    taken_again: dict[str, str] = field(default_factory=dict)
    # Per step being tried again: the highest seq among the records served inside it before its current
    # attempt began. A record at or below it belongs to an earlier attempt (see ``_earlier_attempts``).
    attempt_floor: dict[str, int] = field(default_factory=dict)
    # The source run's records, for a fork or a live replay, and the records the run's restarts superseded:
    # a non-idempotent tool call found there (same key, same request) is served from it instead of being
    # made a second time (``_derived``).
    source: SourceRecords = field(default_factory=SourceRecords)
    code_versions: tuple[str | None, str | None] | None = None  # (recorded, current), for reports
    # A counterfactual run's recorded world: tool results by request fingerprint, each served once, in
    # order. A call the world has no answer for runs live ("live"; never a non-idempotent tool) or gets
    # an error result ("missing"); its key goes to world_misses.
    world: dict[str, list[StepRecord]] | None = None
    world_missing: Literal["live", "missing"] = "live"
    world_source: str | None = None  # the run whose recorded world it is
    world_misses: list[str] = field(default_factory=list)
    # Called before each step that is about to run live: raises to pause (Suspend), to cancel
    # (CancelRequested) or at the run's deadline. Served steps never check it, so that a resumed run
    # rebuilds its state (and its compensations) before it stops.
    control: Callable[[], None] | None = None
    compensations: list[Compensation] = field(default_factory=list)
    children: ChildRunner | None = None  # the app, which runs child workflows

    def __post_init__(self) -> None:
        self.prompt_tokens, self.completion_tokens, self.cost = self.journal.usage()

    # -- halting ----------------------------------------------------------------------------------------

    def halt(self, exc: AgentFlowError) -> AgentFlowError:
        if self.halted is None:
            self.halted = exc
        return exc

    def raise_if_halted(self) -> None:
        if self.halted is not None:
            raise self.halted

    # -- the record -------------------------------------------------------------------------------------

    def begin(
        self, scope: str, name: str, request: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None
    ) -> tuple[str, str, str, StepRecord | None]:
        """Allocate the key (in call order, before any await), fingerprint the request, find the record.

        Returns ``(key, request_json, fingerprint, record or None)``. What a record with another
        fingerprint, or a missing record, means depends on ``mode``: resuming, the first is a
        ``ReplayDivergence`` and the second a step to run; a strict replay refuses both; a relaxed one
        serves by key and refuses only a miss; a live replay goes on live from the first of either.
        """
        self.raise_if_halted()
        key = self.journal.peek_key(scope, name)
        request_json = canonical_json(request)
        fp = fingerprint(request_json)
        rec = self.journal.recorded(key)
        completed = rec is not None and rec.fingerprint == fp and rec.status != "failed"
        if not completed and self.mode != "relaxed" and self.journal.retrying(key):
            key, rec = self._take_again(key, fp, rec)
        elif (rec is None or rec.fingerprint != fp) and self.mode != "relaxed":
            # Concurrent calls of one name may reach the engine in another order than when recorded:
            # a call serves its own record, in a slot a sibling took then, if it has one.
            own = self.journal.unclaimed_match(key, fp)
            if own is not None:
                key, rec = own.key, own
            elif (reserved := self.journal.reserved_match(key, fp)) is not None:
                key, rec = reserved, None  # in flight when the process died: it runs again under its key
            elif rec is not None and self.mode == "resume" and in_sibling_task():
                # This call has no record; the one in its slot is a sibling's, which that sibling will
                # ask for later (it reached the engine first when recorded): run this one in a free slot.
                key, rec = self.journal.free_key(key), None
            elif rec is None and self.journal.reserved_by_another(key, fp):
                key = self.journal.free_key(key)  # a sibling in flight at the crash had it: it will ask
        self.journal.claim(key)
        if rec is not None and rec.fingerprint != fp and self.mode != "relaxed":
            if self.mode == "live":
                self._diverge(key, rec, request_json, "the step was called with another request", blobs)
                return key, request_json, fp, None
            reason = "the step was called with another request"
            raise self.halt(self.divergence_report(key, rec, request_json, reason, blobs))
        if rec is None and self.mode in ("strict", "relaxed", "live"):
            reason = "the replay asks for a step the run never took"
            if self.mode != "live":
                raise self.halt(self.divergence_report(key, None, request_json, reason, blobs))
            self._diverge(key, None, request_json, reason, blobs)
        if rec is not None:
            self.served.add(key)
        elif self.control is not None:  # about to run something live: a pause, a cancel, the deadline
            self.control()
        return key, request_json, fp, rec

    def reserve(self, key: str, fp: str, *, leaves: bool = False) -> None:
        """Before a call runs live: keep its key with its request when another execution could hand the key
        to a sibling, that is when it runs in a gathered coroutine; and, committed before it runs, when its
        key ``leaves`` the process (a payment's idempotency key, a child run's id). See ``Journal.reserve``."""
        if leaves or in_sibling_task():
            self.journal.reserve(key, fp, self.clock.time(), now=leaves)

    def _take_again(self, key: str, fp: str, rec: StepRecord | None) -> tuple[str, StepRecord | None]:
        """A call inside a step tried again whose slot did not complete with this request. Its records are
        found by its request: one that completed is served (an earlier attempt made it again); a failure
        of it no call of this execution was handed yet is this attempt's, recorded before a crash, and
        is served; else it is made again in a free slot (or its slot, if free), keeping the idempotency
        key and the scope of the slot where it first failed (``taken_again``): what it did inside is
        served, not made anew."""
        first_failed, pending, completed = self.journal.retried_matches(key, fp, self._earlier_attempts)
        if completed is not None:
            return completed.key, completed
        if pending is not None:
            return pending.key, pending
        reserved = self.journal.reserved_match(key, fp)  # made again when the process died: its key again
        if reserved is not None:
            key = reserved
        elif rec is not None or first_failed is not None:
            key = self.journal.free_key(key)
        if first_failed is not None:
            self.taken_again[key] = first_failed.key
        return key, None

    def _earlier_attempts(self, rec: StepRecord) -> bool:
        """Whether ``rec`` belongs to an earlier attempt of a step being tried again that holds it: it was
        recorded before what this execution served of that step before its current attempt began.

        Such a record may not have been handed to any call yet and still not be this attempt's: the
        earlier attempt was served whole, as a nested step's failure, without going inside it (or inside
        the slot it worked in, a failed slot taken again)."""
        key = rec.key
        return any(rec.seq <= floor for scope, floor in self.attempt_floor.items() if key.startswith(scope + "/"))

    def _served_within(self, scope: str) -> int:
        """The highest seq among the records this execution served inside the step ``scope`` (-1: none)."""
        prefix = scope + "/"
        seqs = (self.journal.recorded(k) for k in self.served if k.startswith(prefix))
        return max((rec.seq for rec in seqs if rec is not None), default=-1)

    def _diverge(
        self, key: str, rec: StepRecord | None, request_json: str, reason: str, blobs: Mapping[str, bytes] | None
    ) -> None:
        """A live replay leaves the record here: the rest runs live, in a new run (``on_diverge``)."""
        report = self.divergence_report(key, rec, request_json, reason, blobs)
        self.mode = "resume"
        if self.on_diverge is None:
            raise self.halt(report)
        self.on_diverge(report)

    def divergence_report(
        self,
        key: str,
        rec: StepRecord | None,
        request_json: str,
        reason: str,
        blobs: Mapping[str, bytes] | None = None,
    ) -> ReplayDivergence:
        """A ``ReplayDivergence`` with the recorded and the new request made readable (messages spelled
        out, not blob hashes) and the JSON patch from one to the other."""
        import jsonpatch

        current = self._readable(json.loads(request_json), blobs or {})
        recorded = None if rec is None else self._readable(json.loads(rec.request) if rec.request else {}, {})
        diff = jsonpatch.make_patch(recorded or {}, current).patch if isinstance(current, dict) else []
        note = None
        if self.code_versions is not None and self.code_versions[0] != self.code_versions[1]:
            note = f"recorded under code version {self.code_versions[0]}, replayed under {self.code_versions[1]}"
        return ReplayDivergence(self.run_id, key, recorded, current, reason, diff=diff, note=note)

    def _readable(self, request: Any, blobs: Mapping[str, bytes]) -> Any:
        """A model call's request with its blob references spelled out: the messages of its chain head,
        its tools and its response format (from ``blobs``, a call's own not yet stored, or the store)."""
        if not isinstance(request, dict) or not isinstance(request.get("messages"), str):
            return request
        from ._llm import read_messages

        pending: Mapping[str, bytes] = self.extras.message_chain._unwritten

        def get_blobs(hashes: list[str]) -> dict[str, bytes]:
            found = {h: pending.get(h) or blobs[h] for h in hashes if h in pending or h in blobs}
            missing = [h for h in hashes if h not in found]
            if missing:
                found.update(self.journal.store.get_blobs(missing))
            return found

        readable = dict(request)
        with contextlib.suppress(AgentFlowError):  # a blob not found: the reference stays
            readable["messages"] = read_messages(request["messages"], get_blobs)
        for field_name in ("tools", "response_format"):
            ref = request.get(field_name)
            data = get_blobs([ref]).get(ref) if isinstance(ref, str) else None
            if data is not None:
                readable[field_name] = json.loads(data)
        return readable

    def record(
        self,
        *,
        key: str,
        kind: str,
        name: str,
        fp: str,
        request: str,
        started: float,
        attempts: int,
        output: str | None = None,
        error: BaseException | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
        blobs: Mapping[str, bytes] | None = None,
    ) -> StepRecord:
        """Write one step record (and the blobs it refers to) in one commit."""
        if self.mode in ("strict", "relaxed"):  # begin() refused every step that is not recorded
            raise AgentFlowError(f"{key}: a {self.mode} replay writes nothing (this is a bug in agentflow)")
        try:
            rec = self.journal.append(
                key=key,
                kind=kind,
                name=name,
                fingerprint=fp,
                request=request,
                status="failed" if error is not None else "completed",
                attempt=attempts,
                output=output,
                error=None if error is None else ErrorInfo.encode(error),
                started_at=started,
                finished_at=self.clock.time(),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
                blobs=blobs,
            )
        except StoreError as exc:
            raise self.halt(exc) from exc.__cause__
        if blobs:
            self.written_blobs.update(blobs)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        for listener in self.listeners:
            try:
                listener(rec)
            except Exception:
                log.exception("a step listener failed on %s of run %s", key, self.run_id)
        return rec

    def adopt(self, original: StepRecord, key: str | None = None) -> StepRecord:
        """Record a copy of another run's record (its output or error, as it was) under ``key``
        (default: the same key)."""
        try:
            return self.journal.append(
                key=key or original.key, kind=original.kind, name=original.name, fingerprint=original.fingerprint,
                request=original.request, status=original.status, attempt=original.attempt, output=original.output,
                error=original.error, started_at=original.started_at, finished_at=original.finished_at,
                prompt_tokens=original.prompt_tokens, completion_tokens=original.completion_tokens, cost=original.cost,
            )  # fmt: skip
        except StoreError as exc:
            raise self.halt(exc) from exc.__cause__

    def divergence(self, key: str, recorded: Any, current: Any, reason: str) -> ReplayDivergence:
        return ReplayDivergence(self.run_id, key, recorded, current, reason)

    # -- attempts ---------------------------------------------------------------------------------------

    async def attempts(
        self,
        key: str,
        policy: RetryPolicy,
        invoke: Callable[[], Awaitable[Any]],
        *,
        retryable: Callable[[Exception], bool] | None = None,
        wait_at_least: Callable[[Exception], float | None] | None = None,
    ) -> Attempts:
        """Call ``invoke`` until it succeeds or the policy gives up. Steps taken inside are scoped under
        ``key``; each attempt is bounded by ``policy.timeout``."""
        attempt = 0
        try:
            while True:
                attempt += 1
                if attempt > 1:  # the calls made inside take their first attempt's keys again
                    self.journal.retry_scope(key)
                    self.extras.message_chain.forget(key)
                    self.attempt_floor[key] = self._served_within(key)
                done = await self._attempt(key, policy, invoke, attempt, retryable, wait_at_least)
                if done is not None:
                    return done
        finally:
            if attempt > 1:
                self.journal.retry_scope_done(key)
                self.attempt_floor.pop(key, None)

    async def _attempt(
        self,
        key: str,
        policy: RetryPolicy,
        invoke: Callable[[], Awaitable[Any]],
        attempt: int,
        retryable: Callable[[Exception], bool] | None,
        wait_at_least: Callable[[Exception], float | None] | None,
    ) -> Attempts | None:
        """One attempt: its outcome, or None when another is to be made (after the policy's delay)."""
        tokens = enter_scope(key)
        try:
            if policy.timeout is None:
                value = await invoke()
            else:
                try:
                    value = await asyncio.wait_for(invoke(), policy.timeout)
                except (asyncio.TimeoutError, TimeoutError) as exc:
                    raise StepTimeout(key, policy.timeout) from exc
            return Attempts(value, None, attempt)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            final = (
                attempt >= policy.max_attempts
                or isinstance(exc, NonRetryableError)
                or (bool(policy.non_retryable) and isinstance(exc, policy.non_retryable))
                or (retryable is not None and not retryable(exc))
            )
            if final:
                return Attempts(None, exc, attempt)
            delay = policy.delay_after(attempt)
            hint = wait_at_least(exc) if wait_at_least is not None else None
            await self.clock.sleep(max(delay, hint) if hint is not None else delay)
            return None
        finally:
            leave_scope(tokens)

    # -- steps ------------------------------------------------------------------------------------------

    async def step(
        self,
        scope: str,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy | None,
        compensate: Callable[[Any], Any] | None = None,
    ) -> Any:
        # A keyword argument named like a secret ("api_key", "password"), as for tools, reaches the function
        # only: not the record, not the fingerprint (a served step does not call it).
        recorded_kwargs, secret_values = split_secrets(kwargs, (), names="tool") if kwargs else (kwargs, [])
        key, request, fp, rec = self.begin(scope, name, {"fn": _qualname(fn), "args": args, "kwargs": recorded_kwargs})
        if rec is not None:
            await yield_to_siblings()
            value = self._serve_step(rec, fn)
            if compensate is not None:
                self.compensations.append(Compensation(key, name, compensate, value, retry))
            return value
        started = self.clock.time()
        # A step made again (its slot failed in an earlier attempt of an enclosing step) works in that
        # slot's scope: what it did inside is served or taken again, not made anew under new keys.
        scope_key = self.taken_again.get(key, key)
        self.reserve(key, fp)  # its scope is its key: what it does inside is found there on resume
        done = await self.attempts(scope_key, retry or self.default_retry, lambda: _call(fn, args, kwargs))
        if done.error is not None:
            keep_secrets_out(done.error, secret_values)  # an error that echoes a secret argument
            self.record(key=key, kind="step", name=name, fp=fp, request=request, started=started,
                        attempts=done.count, error=done.error)  # fmt: skip
            message = redact_error(done.error, str(done.error))  # a key of the environment it echoed, say
            raise StepFailed(key, type(done.error).__qualname__, message, done.count) from done.error
        output = self.codec.encode(done.value, f"output of step {key!r} in run {self.run_id!r}")
        self.record(key=key, kind="step", name=name, fp=fp, request=request, started=started,
                    attempts=done.count, output=output)  # fmt: skip
        if compensate is not None:
            self.compensations.append(Compensation(key, name, compensate, done.value, retry))
        return done.value

    async def compensate_all(self) -> str | None:
        """Undo the completed steps that registered a compensation, newest first; each undo is a recorded
        step (``<key>/compensate#0``), retried by the step's policy, so a crash in the middle of a rollback
        resumes it where it stopped. Returns how the rollback went (None: nothing to undo)."""
        if not self.compensations:
            return None
        self.control = None  # a cancel request must not stop its own rollback
        done: list[str] = []
        failed: list[str] = []
        for undo in reversed(self.compensations):
            try:
                await self.step(undo.key, "compensate", undo.fn, (undo.output,), {}, undo.retry)
                done.append(undo.key)
            except StepFailed as exc:
                failed.append(f"{undo.key} ({exc.error_type}: {exc.error_message})")
        self.compensations.clear()
        if failed:
            return f"rollback incomplete: {len(done)} undone, {len(failed)} failed: {'; '.join(failed)}"
        return f"rolled back: {len(done)} step(s) undone ({', '.join(done)})"

    # -- child runs -------------------------------------------------------------------------------------

    async def child(self, scope: str, workflow: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A child run, recorded as one step of kind ``child`` once it has ended (see ``Context.child``)."""
        if self.children is None:
            raise AgentFlowError("child runs need an AgentFlow to run them (this engine has none)")
        name = self.children.name_of(workflow)
        key, request, fp, rec = self.begin(scope, "child", {"workflow": name, "args": args, "kwargs": kwargs})
        if rec is not None:
            await yield_to_siblings()
            if rec.status == "failed":
                err = json.loads(rec.error or "{}")
                raise StepFailed(rec.key, err.get("type", "Error"), err.get("message", ""), rec.attempt)
            return self.codec.decode(rec.output)
        original = self.source.claim(key, fp)
        child_id = self._child_id(key, fp, original)
        if in_sibling_task():
            self.reserve(key, fp, leaves=True)  # the child run's id is made of its key
        else:  # inside a gathered step maybe: the step's key must be kept before the child records anything
            self.journal.flush_reservations()
        started = self.clock.time()
        origin = None
        # A child its source run made (not one of its own, which a restart serves as the child run it is):
        # the one made for this request, else the one made at this key (for another request).
        source_child = original or self.source.latest(key)
        source_run = None
        if source_child is not None and source_child.kind == "child" and source_child.run_id != self.run_id:
            source_run = f"{source_child.run_id}/{source_child.key}"
        if source_run is not None or self.world is not None:
            origin = ChildOrigin(source_run, self.world, self.world_missing, self.world_source)
        status, output, error = await self.children.run_child(
            workflow, child_id, args, kwargs, self.run_id, self.journal.lease, origin, self.extras.queue
        )
        if status == "completed":
            self.record(key=key, kind="child", name="child", fp=fp, request=request, started=started, attempts=1,
                        output=output)  # fmt: skip
            return self.codec.decode(output)
        if status in ("failed", "cancelled"):
            failure = ChildRunFailed(child_id, status, error)
            self.record(key=key, kind="child", name="child", fp=fp, request=request, started=started, attempts=1,
                        error=failure)  # fmt: skip
            raise StepFailed(key, type(failure).__qualname__, str(failure), 1) from failure
        raise Suspend(wake_at=None, waiting_for=f"child:{child_id}", why=f"{key} waits for child run {child_id}")

    def _child_id(self, key: str, fp: str, original: StepRecord | None) -> str:
        """``<run id>/<key>``, as ``_idempotency_key`` makes a key: a child run this run started before a
        restart for the same request (``original``) is that run again; one at a key whose first child run
        (before a restart) was started for another request gets the request's fingerprint too."""
        slot = original.key if original is not None and original.run_id == self.run_id else key
        first = self.source.first_of_run(slot, self.run_id)
        if first is not None and first.fingerprint != fp:
            return f"{self.run_id}/{slot}:{fp[:16]}"
        return f"{self.run_id}/{slot}"

    # -- durable waits ----------------------------------------------------------------------------------

    async def sleep_until(self, scope: str, name: str, until: float) -> None:
        """A durable sleep: the end is recorded once; before it, the run is suspended (``Suspend``)."""
        key, request, fp, rec = self.begin(scope, name, {"sleep": name})
        if rec is None:
            rec = self.record(key=key, kind="sleep", name=name, fp=fp, request=request, started=self.clock.time(),
                              attempts=1, output=json.dumps({"until": until}))  # fmt: skip
        due = float(json.loads(rec.output or "{}").get("until", 0.0))
        if self.clock.time() < due:
            raise Suspend(wake_at=due, waiting_for=None, why=f"{key} sleeps until {due}")

    async def wait_for_event(self, scope: str, name: str, type: str, timeout: float | None) -> Any:
        """An event's payload, recorded with the wait; the run is suspended until one comes (or the
        timeout, recorded once, passes: ``EventTimeout``)."""
        key, request, fp, rec = self.begin(scope, name, {"event": type})
        if rec is not None:
            await yield_to_siblings()
            if rec.status == "failed":
                raise EventTimeout(rec.key, type)
            return json.loads(rec.output or "{}").get("payload")
        deadline: float | None = None
        if timeout is not None:
            deadline = float(self.value(f"{name}.deadline", lambda: self.clock.time() + timeout))
        claimed = self.journal.store.claim_event(self.run_id, type, f"{self.run_id}:{key}")
        now = self.clock.time()
        if claimed is not None:
            event_id, payload_json = claimed
            payload = json.loads(payload_json)
            self.record(key=key, kind="event", name=name, fp=fp, request=request, started=now, attempts=1,
                        output=canonical_json({"event_id": event_id, "payload": payload}))  # fmt: skip
            return payload
        if deadline is not None and now >= deadline:
            timed_out = EventTimeout(key, type)
            self.record(key=key, kind="event", name=name, fp=fp, request=request, started=now, attempts=1,
                        error=timed_out)  # fmt: skip
            raise timed_out
        raise Suspend(wake_at=deadline, waiting_for=type, why=f"{key} waits for an event {type!r}")

    def _serve_step(self, rec: StepRecord, fn: Callable[..., Any]) -> Any:
        if rec.status == "failed":
            err = json.loads(rec.error or "{}")
            raise StepFailed(rec.key, err.get("type", "Error"), err.get("message", ""), rec.attempt)
        declared = self.codec.return_type(fn)
        try:
            return self.codec.decode(rec.output, declared)
        except ValueError as exc:  # pydantic's ValidationError: the declared return type changed
            raise self.halt(
                self.divergence(
                    rec.key,
                    rec.output,
                    getattr(declared, "__name__", repr(declared)),
                    f"the recorded output does not fit the step's declared return type ({exc.__class__.__name__})",
                )
            ) from exc

    # -- tools ------------------------------------------------------------------------------------------

    async def tool(self, scope: str, tool: Tool, arguments: dict[str, Any], retry: RetryPolicy | None) -> ToolResult:
        """Call a tool as a recorded step. Bad arguments and failures come back as an error result."""
        # An argument named like a secret ("api_key", "password"; not a bare "key" or "token") or marked
        # with @tool(secret=[...]) reaches the tool only: not the record, not the fingerprint.
        recorded_arguments, secret_values = split_secrets(arguments, tool.secret, names="tool")
        asked = {"tool": tool.name, "arguments": recorded_arguments, "idempotent": tool.idempotent}
        try:
            key, request, fp, rec = self.begin(scope, tool.name, asked)
        except UnicodeEncodeError:
            # A lone surrogate ("\ud83d", half an emoji a model cut) has no UTF-8 form to fingerprint: the
            # request is recorded with it escaped, and tool.validate() below refuses the call with an error
            # the model can read.
            recorded_arguments = escape_surrogates(recorded_arguments)
            asked["arguments"] = recorded_arguments
            key, request, fp, rec = self.begin(scope, tool.name, asked)
        if rec is not None:
            await yield_to_siblings()
            return self._serve_tool(tool, rec)
        original = self.source.claim(key, fp)
        if not tool.idempotent and original is not None:
            # A fork, a live replay or a restart reaching a payment made before: never make it twice.
            return self._serve_tool(tool, self.adopt(original, key))
        if self.world is not None:  # a counterfactual run: the recorded world answers what it can
            answers = self.world.get(fp)
            if answers:
                return self._serve_tool(tool, self.adopt(answers.pop(0), key))
            self.world_misses.append(key)
            if self.world_missing == "missing" or not tool.idempotent:
                error = AgentFlowError(
                    f"the recorded world has no result for {tool.name}({json.dumps(recorded_arguments, default=str)})"
                )
                self.record(key=key, kind="tool", name=tool.name, fp=fp, request=request, started=self.clock.time(),
                            attempts=0, error=error)  # fmt: skip
                return ToolResult(tool.name, key, ok=False, error=str(error))
        started = self.clock.time()
        try:
            call_args = tool.validate(arguments)
        except ToolArgumentsError as exc:
            self.record(key=key, kind="tool", name=tool.name, fp=fp, request=request, started=started,
                        attempts=0, error=exc)  # fmt: skip
            return ToolResult(tool.name, key, ok=False, error=str(exc))
        if tool.key_parameter is not None:
            # The key of the slot this call takes again when an earlier attempt of its step failed it there.
            call_args[tool.key_parameter] = IdempotencyKey(self._idempotency_key(key, fp, original))
        self.reserve(key, fp, leaves=not tool.idempotent or tool.key_parameter is not None)
        done = await self.attempts(key, retry or self.default_retry, lambda: _call(tool.fn, (), call_args))
        if done.error is not None:
            keep_secrets_out(done.error, secret_values)  # an error that echoes a secret argument
            self.record(key=key, kind="tool", name=tool.name, fp=fp, request=request, started=started,
                        attempts=done.count, error=done.error)  # fmt: skip
            # Goes back to the model (into the next request): without the secret arguments nor the
            # environment's and litellm's keys, as recorded.
            message = redact_error(done.error, f"{type(done.error).__qualname__}: {done.error}")
            return ToolResult(tool.name, key, ok=False, error=message)
        output = self.codec.encode(done.value, f"result of tool {key!r} in run {self.run_id!r}")
        self.record(key=key, kind="tool", name=tool.name, fp=fp, request=request, started=started,
                    attempts=done.count, output=output)  # fmt: skip
        return ToolResult(tool.name, key, ok=True, value=done.value, recorded=output)

    def _idempotency_key(self, key: str, fp: str, original: StepRecord | None) -> str:
        """``<run id>:<key>``: the same for every attempt, resume and retry of one call. A call that takes
        again the slot of a call that failed in an earlier attempt of its step has that slot's key; a call
        this run made before a restart (``original``, perhaps at another key) has the key it had then; a
        call at a key whose first call in this run (before a restart) had another request gets the
        request's fingerprint too (the plain key was used for that other request)."""
        slot = self.taken_again.get(key, key)
        if original is not None and original.run_id == self.run_id and original.key != key:
            slot = original.key  # it reached the engine in another order than before the restart
        first = self.source.first_of_run(slot, self.run_id)
        if first is not None and first.fingerprint != fp:
            return f"{self.run_id}:{slot}:{fp[:16]}"
        return f"{self.run_id}:{slot}"

    def _serve_tool(self, tool: Tool, rec: StepRecord) -> ToolResult:
        if rec.status == "failed":
            err = json.loads(rec.error or "{}")
            message = err.get("message", "")
            if err.get("type") != ToolArgumentsError.__qualname__:
                message = f"{err.get('type', 'Error')}: {message}"
            return ToolResult(tool.name, rec.key, ok=False, error=message)
        try:
            value = self.codec.decode(rec.output, self.codec.return_type(tool.fn))
        except ValueError as exc:
            raise self.halt(
                self.divergence(rec.key, rec.output, repr(tool.fn), "the recorded result does not fit the tool's type")
            ) from exc
        return ToolResult(tool.name, rec.key, ok=True, value=value, recorded=rec.output)

    # -- recorded values --------------------------------------------------------------------------------

    def value(self, name: str, produce: Callable[[], Any]) -> Any:
        """A value recorded once and served from the record ever after (``now``, ``uuid``, ``random``)."""
        key, request, fp, rec = self.begin(current_scope(), name, {"value": name})
        if rec is not None:
            return self.codec.decode(rec.output)
        now = self.clock.time()
        value = produce()
        self.record(key=key, kind="step", name=name, fp=fp, request=request, started=now, attempts=1,
                    output=json.dumps(value))  # fmt: skip
        return value


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Async functions run on the loop; sync ones in a worker thread, so they neither block steps beside
    them nor a timeout, and may take nested steps through a SyncContext."""
    if inspect.iscoroutinefunction(fn):
        value = await fn(*args, **kwargs)
    else:
        value = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(value):  # a sync callable that returned a coroutine (a lambda, a partial)
        value = await value
    return value
