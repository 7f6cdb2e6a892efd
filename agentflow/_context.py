"""``Context``: what a workflow uses to take durable steps, and the engine that records them.

A step is found in the run's journal by its key; when it is there, its fingerprint must match and its
recorded output (or failure) is served without running anything. When it is not, the function runs live
under the step's retry policy and its outcome is recorded in one write.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar, overload

from ._clock import Clock
from ._codec import Codec, canonical_json, fingerprint
from ._journal import Journal
from ._models import ErrorInfo
from ._retry import RetryPolicy
from ._store import StepRecord
from .errors import (
    AgentFlowError,
    NonRetryableError,
    ReplayDivergence,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoreError,
)

__all__ = ["Context", "RunEngine", "SyncContext"]

T = TypeVar("T")

# The key of the step whose function is running, so that steps it takes are scoped under it.
_scope: ContextVar[str] = ContextVar("agentflow_scope", default="")

# Errors that are about the program or the store, not about the step: never retried, never recorded.
_PASS_THROUGH = (ReplayDivergence, StoreError, SerializationError)


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


@dataclass
class RunEngine:
    """Everything one executing run needs: its journal, the clock, the codec and the default policy."""

    run_id: str
    journal: Journal
    codec: Codec
    clock: Clock
    default_retry: RetryPolicy
    # The first divergence or store failure. The run cannot go on once one happened, even if the
    # workflow caught the exception: later steps raise it again, and so does the end of the run.
    halted: AgentFlowError | None = None

    def _halt(self, exc: AgentFlowError) -> AgentFlowError:
        if self.halted is None:
            self.halted = exc
        return exc

    def raise_if_halted(self) -> None:
        if self.halted is not None:
            raise self.halted

    def _append(self, **fields: Any) -> None:
        try:
            self.journal.append(**fields)
        except StoreError as exc:
            raise self._halt(exc) from exc.__cause__

    # -- recorded steps -------------------------------------------------------------------------------

    def _check(self, rec: StepRecord, fp: str, request: str) -> None:
        if rec.fingerprint != fp:
            recorded = json.loads(rec.request) if rec.request else rec.fingerprint
            raise self._halt(
                ReplayDivergence(
                    self.run_id,
                    rec.key,
                    recorded,
                    json.loads(request),
                    "the step was called with another request",
                )
            )

    def _serve(self, rec: StepRecord, fn: Callable[..., Any]) -> Any:
        if rec.status == "failed":
            err = json.loads(rec.error or "{}")
            raise StepFailed(rec.key, err.get("type", "Error"), err.get("message", ""), rec.attempt)
        declared = self.codec.return_type(fn)
        try:
            return self.codec.decode(rec.output, declared)
        except ValueError as exc:  # pydantic's ValidationError: the declared return type changed
            raise self._halt(
                ReplayDivergence(
                    self.run_id,
                    rec.key,
                    rec.output,
                    getattr(declared, "__name__", repr(declared)),
                    f"the recorded output does not fit the step's declared return type ({exc.__class__.__name__})",
                )
            ) from exc

    # -- live steps -----------------------------------------------------------------------------------

    async def step(
        self,
        scope: str,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy | None,
    ) -> Any:
        self.raise_if_halted()
        key = self.journal.next_key(scope, name)
        request = canonical_json({"fn": _qualname(fn), "args": args, "kwargs": kwargs})
        fp = fingerprint(request)
        rec = self.journal.recorded(key)
        if rec is not None:
            self._check(rec, fp, request)
            return self._serve(rec, fn)
        policy = retry or self.default_retry
        started = self.clock.time()
        attempt = 0
        while True:
            attempt += 1
            token = _scope.set(key)
            try:
                value = await self._invoke(key, fn, args, kwargs, policy.timeout)
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                final = (
                    attempt >= policy.max_attempts
                    or isinstance(exc, NonRetryableError)
                    or (bool(policy.non_retryable) and isinstance(exc, policy.non_retryable))
                )
                if not final:
                    await self.clock.sleep(policy.delay_after(attempt))
                    continue
                self._append(
                    key=key,
                    kind="step",
                    name=name,
                    fingerprint=fp,
                    request=request,
                    status="failed",
                    attempt=attempt,
                    output=None,
                    error=ErrorInfo.encode(exc),
                    started_at=started,
                    finished_at=self.clock.time(),
                )
                raise StepFailed(key, type(exc).__qualname__, str(exc), attempt) from exc
            finally:
                _scope.reset(token)
            output = self.codec.encode(value, f"output of step {key!r} in run {self.run_id!r}")
            self._append(
                key=key,
                kind="step",
                name=name,
                fingerprint=fp,
                request=request,
                status="completed",
                attempt=attempt,
                output=output,
                error=None,
                started_at=started,
                finished_at=self.clock.time(),
            )
            return value

    async def _invoke(
        self,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        # Async functions run on the loop; sync ones in a worker thread, so they neither block steps
        # running beside them nor a timeout, and may take nested steps through a SyncContext.
        if inspect.iscoroutinefunction(fn):
            pending: Awaitable[Any] = fn(*args, **kwargs)
        else:
            pending = asyncio.to_thread(fn, *args, **kwargs)
        if timeout is None:
            value = await pending
        else:
            try:
                value = await asyncio.wait_for(pending, timeout)
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise StepTimeout(key, timeout) from exc
        if inspect.isawaitable(value):  # a sync callable that returned a coroutine (a lambda, a partial)
            value = await value
        return value

    # -- recorded values --------------------------------------------------------------------------------

    def value(self, name: str, produce: Callable[[], Any]) -> Any:
        """A value recorded once and served from the record ever after (``now``, ``uuid``, ``random``)."""
        self.raise_if_halted()
        key = self.journal.next_key(_scope.get(), name)
        request = canonical_json({"value": name})
        fp = fingerprint(request)
        rec = self.journal.recorded(key)
        if rec is not None:
            self._check(rec, fp, request)
            return self.codec.decode(rec.output)
        now = self.clock.time()
        value = produce()
        self._append(
            key=key,
            kind="step",
            name=name,
            fingerprint=fp,
            request=request,
            status="completed",
            attempt=1,
            output=json.dumps(value),
            error=None,
            started_at=now,
            finished_at=now,
        )
        return value


class _Recorded:
    """The deterministic stand-ins for the clock, uuid and random, shared by both contexts."""

    _engine: RunEngine

    @property
    def run_id(self) -> str:
        """The id of the run this context belongs to."""
        return self._engine.run_id

    def now(self) -> datetime:
        """The current UTC time, recorded: a resumed or replayed run sees the same instant."""
        ts = self._engine.value("now", self._engine.clock.time)
        return datetime.fromtimestamp(ts, tz=timezone.utc)

    def uuid(self) -> _uuid.UUID:
        """A random UUID (version 4), recorded."""
        return _uuid.UUID(self._engine.value("uuid", lambda: _uuid.uuid4().hex))

    def random(self) -> float:
        """A random float in [0, 1), recorded."""
        return float(self._engine.value("random", _random.random))


class Context(_Recorded):
    """Handed to an ``async def`` workflow as its first argument."""

    def __init__(self, engine: RunEngine) -> None:
        self._engine = engine

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def step(
        self, name: str, fn: Callable[..., T], /, *args: Any, retry: RetryPolicy | None = None, **kwargs: Any
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step named ``name`` and return its output.

        A step recorded before (an earlier attempt of this run) is served from the record, rebuilt into
        ``fn``'s declared return type. Async functions run on the event loop; sync ones in a worker
        thread, so that steps gathered with ``asyncio.gather`` run concurrently. A step that fails after
        its retries raises ``StepFailed``. ``retry`` is keyword-only and not passed to ``fn``.
        """
        _require_name(name)
        return await self._engine.step(_scope.get(), name, fn, args, kwargs, retry)


class SyncContext(_Recorded):
    """Handed to a plain ``def`` workflow, which runs in a worker thread: ``ctx.step`` returns the value.

    It drives the same engine as ``Context`` on the run's event loop.
    """

    def __init__(self, engine: RunEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop

    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    def step(
        self, name: str, fn: Callable[..., T], /, *args: Any, retry: RetryPolicy | None = None, **kwargs: Any
    ) -> T: ...

    def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, retry: RetryPolicy | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step (sync or async ``fn``); see ``Context.step``."""
        _require_name(name)
        # A sync function runs in a worker thread, not on the loop: if it takes steps of its own,
        # blocking the loop while it waits for them would deadlock.
        call = self._engine.step(_scope.get(), name, fn, args, kwargs, retry)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()


def _require_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "#" in name:
        raise AgentFlowError(
            f"a step name must be a non-empty string without '/' or '#', got {name!r} "
            "(they separate scopes and counters in keys)"
        )
