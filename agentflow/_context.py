"""``Context`` and ``SyncContext``: what a workflow uses to take durable steps, call tools and models.

Both are thin faces of one ``RunEngine``; ``SyncContext`` serves plain ``def`` workflows, which run in a
worker thread, by driving the engine on the run's event loop.
"""

from __future__ import annotations

import asyncio
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar, overload

from ._engine import RunEngine
from ._graph import Graph, SyncGraph
from ._llm import LLMResponse, StreamChunk
from ._llm_calls import LLMStream, call_llm, prepare_llm_call
from ._retry import RetryPolicy
from ._scope import current_scope, owning
from ._tool import Tool, ToolResult, tool
from .errors import AgentFlowError

__all__ = ["Context", "Facts", "SyncContext", "SyncLLMStream"]

T = TypeVar("T")
ToolSpec = Tool | Mapping[str, Any]


def _as_tool(engine: RunEngine, fn: Tool | Callable[..., Any]) -> Tool:
    if isinstance(fn, Tool):
        return fn
    cache = engine.extras.tools
    made = cache.get(fn)
    if made is None:
        made = cache[fn] = tool(fn)
    return made


def _tool_arguments(
    tool: Tool, arguments: Mapping[str, Any] | None, keywords: dict[str, Any], retry: Any
) -> dict[str, Any]:
    """The arguments of a ``ctx.tool`` call: the mapping given, or the keywords, not both."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise AgentFlowError(
            f"ctx.tool(..., retry=...) is the call's RetryPolicy, not an argument of tool {tool.name!r} "
            f"(got {retry!r}); pass the tool's arguments as a mapping: ctx.tool(fn, {{'retry': ...}})"
        )
    if arguments is None:
        return keywords
    if keywords:
        raise AgentFlowError(
            f"ctx.tool({tool.name!r}, ...) takes the tool's arguments as one mapping or as keywords, not both "
            f"(mapping: {sorted(arguments)}, keywords: {sorted(keywords)})"
        )
    if not isinstance(arguments, Mapping):
        raise AgentFlowError(
            f"ctx.tool({tool.name!r}, arguments): arguments must be a mapping of names to values, "
            f"not {type(arguments).__name__}"
        )
    return dict(arguments)


class _Common:
    """What both contexts offer the same way: the recorded clock, uuid and random values."""

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

    @property
    def facts(self) -> Facts:
        """Durable facts (long-term memory) in this run's database; plain calls, not recorded steps."""
        return Facts(self._engine)

    def checkpoint(self, name: str, state: Mapping[str, Any], *, snapshot_every: int = 10) -> Any:
        """Record ``state`` (JSON data) as the next checkpoint named ``name``; returns it as recorded.

        Stored as a JSON patch against the previous checkpoint of that name, or a full snapshot every
        ``snapshot_every`` checkpoints (and when the patch would be the larger). ``run.state_at(step)``
        rebuilds the state at any step. Resumed, a recorded checkpoint is not written again and its
        recorded state is returned: different from ``state`` only where a fork overrode it, and then the
        workflow should go on from the returned state.
        """
        _require_name(name)
        from ._checkpoint import record_checkpoint

        return record_checkpoint(self._engine, current_scope(), name, state, every=snapshot_every)

    def _prepare(
        self,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None,
        response_format: Any,
        retry: RetryPolicy | None,
        secret_params: Sequence[str],
        params: dict[str, Any],
        stream: bool,
    ) -> Any:
        return prepare_llm_call(
            self._engine,
            current_scope(),
            model=model,
            messages=messages,
            tools=tools,
            response_format=response_format,
            retry=retry,
            secret_params=secret_params,
            params=params,
            stream=stream,
        )


class Context(_Common):
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
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step named ``name`` and return its output.

        A step recorded before (an earlier attempt of this run) is served from the record, rebuilt into
        ``fn``'s declared return type. Async functions run on the event loop; sync ones in a worker
        thread, so that steps gathered with ``asyncio.gather`` run concurrently. A step that fails after
        its retries raises ``StepFailed``. ``retry`` is keyword-only and not passed to ``fn``.

        ``compensate`` registers an undo: when the run fails or is cancelled, ``compensate(output)`` runs
        for every completed step that registered one, newest first, each a recorded step retried by
        ``retry`` (the saga pattern). ``run.rollback`` says how it went.
        """
        _require_name(name)
        return await self._engine.step(current_scope(), name, fn, args, kwargs, retry, compensate)

    async def sleep(self, name: str, seconds: float | timedelta) -> None:
        """Sleep durably: the run is suspended (status ``waiting``, holding no thread, task or memory)
        and wakes after ``seconds``, across restarts (``app.serve`` or ``app.recover`` picks it up)."""
        _require_name(name)
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        until = self._engine.value(f"{name}.start", self._engine.clock.time) + delta
        await self._engine.sleep_until(current_scope(), name, until)

    async def sleep_until(self, name: str, when: datetime | float) -> None:
        """Sleep durably until ``when`` (an aware datetime, or seconds since the epoch); see ``sleep``."""
        _require_name(name)
        until = when.timestamp() if isinstance(when, datetime) else float(when)
        await self._engine.sleep_until(current_scope(), name, until)

    async def wait_for_event(self, name: str, *, type: str, timeout: float | timedelta | None = None) -> Any:
        """Wait durably for an event of ``type`` sent with ``app.send_event(run_id, type, payload)`` and
        return its payload. An event sent before the wait is kept in the run's inbox; each event is
        delivered once and recorded, so a resume or a replay sees the same payload. The run is suspended
        while it waits; after ``timeout`` it raises ``EventTimeout``."""
        _require_name(name)
        limit = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return await self._engine.wait_for_event(current_scope(), name, type, limit)

    async def child(self, workflow: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``workflow(*args, **kwargs)`` (a registered workflow, or an Agent) as a child run with a
        deterministic id (``<run id>/<key>``) and return its output. A child that waits suspends its
        parent until it ends; cancelling the parent cancels its children."""
        return await self._engine.child(current_scope(), workflow, args, kwargs)

    def graph(self, name: str, /, *, concurrency: int | None = None) -> Graph:
        """A new step graph named ``name``: declare nodes with ``add``, then ``await graph.run()``.

        Independent nodes run concurrently, at most ``concurrency`` at once (None: no limit); each is a
        durable step named ``<name>.<node id>``. See ``Graph``.
        """
        return Graph(self._engine, name, concurrency=concurrency)

    async def tool(
        self,
        fn: Tool | Callable[..., Any],
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        **keywords: Any,
    ) -> ToolResult:
        """Call a tool (a ``@tool`` or any typed function) as a recorded step, with its arguments as
        keywords (``ctx.tool(fn, city="Paris")``) or as one mapping (``ctx.tool(fn, call.args())``: the
        form for arguments a model chose, whatever their names; ``retry`` is this call's retry policy).

        Arguments are validated against the tool's schema first. Invalid arguments, and a tool that
        fails after its retries, give ``ToolResult(ok=False, error=...)``: a message the model can read,
        not an exception. The key is ``scope/<tool name>#n``.
        """
        t = _as_tool(self._engine, fn)
        return await self._engine.tool(current_scope(), t, _tool_arguments(t, arguments, keywords, retry), retry)

    @overload
    async def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: Literal[False] = False,
        **params: Any,
    ) -> LLMResponse: ...

    @overload
    async def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: Literal[True],
        **params: Any,
    ) -> LLMStream: ...

    @overload
    async def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: bool,
        **params: Any,
    ) -> LLMResponse | LLMStream: ...

    async def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: bool = False,
        **params: Any,
    ) -> LLMResponse | LLMStream:
        """Call a model through litellm as a recorded step (key ``scope/llm#n``).

        ``params`` go to ``litellm.acompletion`` (``temperature``, ``max_tokens``, ``api_key``, ...). API
        keys, auth headers and the parameters named in ``secret_params`` reach the provider but are never
        recorded. ``response_format`` may be a pydantic model: the answer is parsed into ``parsed``.
        Provider errors follow ``retry`` (default: the app's ``llm_retry``); a 429 waits at least its
        Retry-After. A recorded call is served without calling the provider.

        ``stream=True`` returns the ``LLMStream`` that ``llm_stream`` returns (as litellm's
        ``await acompletion(stream=True)`` does): ``async for chunk in await ctx.llm(..., stream=True)``;
        ``pace=True`` then works as it does there.
        """
        if stream:
            return self.llm_stream(
                model=model, messages=messages, tools=tools, response_format=response_format, retry=retry,
                secret_params=secret_params, **params,
            )  # fmt: skip
        call = self._prepare(model, messages, tools, response_format, retry, secret_params, params, False)
        return await call_llm(self._engine, call)

    def llm_stream(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        pace: bool = False,
        **params: Any,
    ) -> LLMStream:
        """A streamed model call: ``async with ctx.llm_stream(...) as s: async for chunk in s: ...``.

        The key is taken when this is called. Chunks are recorded with their arrival offsets; served from
        the record, the same chunks come back, waiting out the recorded timing when ``pace`` is true.
        """
        call = self._prepare(model, messages, tools, response_format, retry, secret_params, params, True)
        return LLMStream(self._engine, call, pace)


class SyncContext(_Common):
    """Handed to a plain ``def`` workflow, which runs in a worker thread: the calls return values.

    It drives the same engine as ``Context`` on the run's event loop.
    """

    def __init__(self, engine: RunEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop

    def _wait(self, coro: Any) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # waiting here for the loop this very thread runs would block for ever
            coro.close()
            raise AgentFlowError(
                "a SyncContext was called from async code running on the run's event loop (an async step "
                "of a plain def workflow, say): there, use await with a Context (make the workflow async), "
                "or make the helper a plain def"
            )
        # In a task of its own on the run's loop, which owns the scope: a sync workflow is sequential.
        return asyncio.run_coroutine_threadsafe(owning(coro), self._loop).result()

    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step (sync or async ``fn``); see ``Context.step``."""
        _require_name(name)
        # A sync function runs in a worker thread, not on the loop: if it takes steps of its own,
        # blocking the loop while it waits for them would deadlock.
        return self._wait(self._engine.step(current_scope(), name, fn, args, kwargs, retry, compensate))

    def sleep(self, name: str, seconds: float | timedelta) -> None:
        """Sleep durably; see ``Context.sleep``."""
        _require_name(name)
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        until = self._engine.value(f"{name}.start", self._engine.clock.time) + delta
        self._wait(self._engine.sleep_until(current_scope(), name, until))

    def sleep_until(self, name: str, when: datetime | float) -> None:
        """Sleep durably until ``when``; see ``Context.sleep_until``."""
        _require_name(name)
        until = when.timestamp() if isinstance(when, datetime) else float(when)
        self._wait(self._engine.sleep_until(current_scope(), name, until))

    def wait_for_event(self, name: str, *, type: str, timeout: float | timedelta | None = None) -> Any:
        """Wait durably for an event; see ``Context.wait_for_event``."""
        _require_name(name)
        limit = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return self._wait(self._engine.wait_for_event(current_scope(), name, type, limit))

    def child(self, workflow: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run a child workflow; see ``Context.child``."""
        return self._wait(self._engine.child(current_scope(), workflow, args, kwargs))

    def graph(self, name: str, /, *, concurrency: int | None = None) -> SyncGraph:
        """A new step graph whose ``run()`` blocks and returns the outputs; see ``Context.graph``."""
        return SyncGraph(self._engine, name, self._wait, concurrency=concurrency)

    def tool(
        self,
        fn: Tool | Callable[..., Any],
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        **keywords: Any,
    ) -> ToolResult:
        """Call a tool as a recorded step; see ``Context.tool``."""
        t = _as_tool(self._engine, fn)
        call = self._engine.tool(current_scope(), t, _tool_arguments(t, arguments, keywords, retry), retry)
        result: ToolResult = self._wait(call)
        return result

    @overload
    def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: Literal[False] = False,
        **params: Any,
    ) -> LLMResponse: ...

    @overload
    def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: Literal[True],
        **params: Any,
    ) -> SyncLLMStream: ...

    @overload
    def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: bool,
        **params: Any,
    ) -> LLMResponse | SyncLLMStream: ...

    def llm(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        stream: bool = False,
        **params: Any,
    ) -> LLMResponse | SyncLLMStream:
        """Call a model as a recorded step; see ``Context.llm``. ``stream=True`` returns the
        ``SyncLLMStream`` that ``llm_stream`` returns."""
        if stream:
            return self.llm_stream(
                model=model, messages=messages, tools=tools, response_format=response_format, retry=retry,
                secret_params=secret_params, **params,
            )  # fmt: skip
        call = self._prepare(model, messages, tools, response_format, retry, secret_params, params, False)
        response: LLMResponse = self._wait(call_llm(self._engine, call))
        return response

    def llm_stream(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[ToolSpec] | None = None,
        response_format: Any = None,
        retry: RetryPolicy | None = None,
        secret_params: Sequence[str] = (),
        pace: bool = False,
        **params: Any,
    ) -> SyncLLMStream:
        """A streamed model call for sync code: ``for chunk in ctx.llm_stream(...)``; see ``Context.llm_stream``."""
        call = self._prepare(model, messages, tools, response_format, retry, secret_params, params, True)
        return SyncLLMStream(LLMStream(self._engine, call, pace), self)


class SyncLLMStream:
    """``LLMStream`` for sync workflows: a plain iterator of ``StreamChunk``.

        with ctx.llm_stream(model=..., messages=...) as stream:
            for chunk in stream:
                print(chunk.text or "", end="")
        print(stream.response.usage)

    Recorded whole however it is left, as the async stream is: leaving the ``with`` block, or a ``for``
    loop left early (``break``, an exception in its body), reads the rest of the stream first, so the
    call is recorded and the keys after it stay where they were. ``close()`` does the same by hand. A
    failure of the rest is raised by ``with`` and ``close()``; a loop left early without them cannot
    raise it (Python ignores errors while closing a generator), though it is recorded.
    """

    def __init__(self, stream: LLMStream, ctx: SyncContext) -> None:
        self._stream = stream
        self._ctx = ctx

    def __iter__(self) -> Iterator[StreamChunk]:
        iterator = self._stream.__aiter__()
        while True:
            try:
                chunk: StreamChunk = self._ctx._wait(iterator.__anext__())
            except StopAsyncIteration:
                return
            try:
                yield chunk
            except GeneratorExit:  # the loop was left early
                if self._can_wait():
                    self.close()
                raise

    def __enter__(self) -> SyncLLMStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def close(self) -> None:
        """Read what is left of the stream, so that the call is recorded whole."""
        self.finish()

    def _can_wait(self) -> bool:
        # A loop left early is closed where its generator is freed: in the workflow's thread as a rule,
        # but not always (a generator kept past the run). Waiting on the run's loop from that loop's own
        # thread, or on a loop that has stopped, would block for ever.
        loop = self._ctx._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        return loop.is_running() and running is not loop

    @property
    def response(self) -> LLMResponse:
        """The assembled response; available once the stream has been read to its end."""
        return self._stream.response

    def finish(self) -> LLMResponse:
        """Read what is left of the stream and return the assembled response."""
        response: LLMResponse = self._ctx._wait(self._stream.finish())
        return response


def _require_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "#" in name:
        raise AgentFlowError(
            f"a step name must be a non-empty string without '/' or '#', got {name!r} "
            "(they separate scopes and counters in keys)"
        )


class Facts:
    """Durable facts by namespace and key, in the run's database and shared by every run that uses it.

    Reads and writes are plain database calls, not recorded: take them inside a step (as
    ``agentflow.memory.LongTermMemory`` does) so that a resumed or replayed run sees what was read the
    first time. Values are JSON data; a write records which run made it.
    """

    def __init__(self, engine: RunEngine) -> None:
        self._engine = engine
        self._store = engine.journal.store  # the database the run records its steps in

    def put(self, namespace: str, key: str, value: Any) -> None:
        """Set ``key`` in ``namespace`` to ``value``, replacing what it held."""
        text = self._engine.codec.encode(value, f"fact {key!r} of namespace {namespace!r}")
        self._store.put_fact(namespace, key, text, self._engine.run_id, updated_at=self._engine.clock.time())

    def get(self, namespace: str, *, keys: Sequence[str] | None = None, prefix: str | None = None) -> dict[str, Any]:
        """The facts of ``namespace`` in key order: all, those named in ``keys``, or those under ``prefix``."""
        found = self._store.get_facts(namespace, keys=keys, prefix=prefix)
        return {key: self._engine.codec.decode(text) for key, text in found.items()}

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key`` from ``namespace``; False when it was not there."""
        return self._store.delete_fact(namespace, key)
