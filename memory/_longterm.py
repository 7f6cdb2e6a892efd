"""``LongTermMemory``: durable facts an agent keeps across runs, read and written as recorded steps.

Facts live in the ``facts`` table of the run's database, by namespace (an agent's name, say) and key;
the engine reaches them through ``ctx.facts``. Every read and write here is a step, so a resumed or
replayed run is served what the first attempt read, even if the table changed in between, and a write
that was recorded is not made again.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, overload

from agentflow._context import Context, SyncContext
from agentflow._tool import Tool, tool
from agentflow.errors import ConfigurationError, NonRetryableError

__all__ = ["LongTermMemory"]

AnyContext = Context | SyncContext


class LongTermMemory:
    """Durable facts under one ``namespace``, shared by every run on the same database.

        memory = LongTermMemory("support-agent")

        @app.workflow()
        async def chat(ctx: Context, user: str, text: str) -> str:
            await memory.remember(ctx, f"{user}/language", "fr")
            language = await memory.recall(ctx, f"{user}/language", default="en")
            profile = await memory.recall_all(ctx, prefix=f"{user}/")

    Values are JSON data (pydantic models and dataclasses are stored as their JSON, and read back as
    plain dicts). Each call is a recorded step (``memory.remember#n``, ``memory.recall#n``, ...), so with a
    ``Context`` it is awaited; with a ``SyncContext`` (a ``def`` workflow) it returns its value directly.
    """

    def __init__(self, namespace: str) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"a LongTermMemory namespace is a non-empty string, got {namespace!r}")
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"LongTermMemory({self.namespace!r})"

    @overload
    def remember(self, ctx: Context, key: str, value: Any) -> Coroutine[Any, Any, None]: ...
    @overload
    def remember(self, ctx: SyncContext, key: str, value: Any) -> None: ...

    def remember(self, ctx: AnyContext, key: str, value: Any) -> Coroutine[Any, Any, None] | None:
        """Store ``value`` under ``key``, replacing what the key held."""
        _require_key(key)
        facts = ctx.facts

        def write(namespace: str, key: str, value: Any) -> None:
            facts.put(namespace, key, value)

        return ctx.step("memory.remember", write, self.namespace, key, value)

    @overload
    def recall(self, ctx: Context, key: str, default: Any = None) -> Coroutine[Any, Any, Any]: ...
    @overload
    def recall(self, ctx: SyncContext, key: str, default: Any = None) -> Any: ...

    def recall(self, ctx: AnyContext, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        _require_key(key)
        facts = ctx.facts

        def read(namespace: str, key: str) -> dict[str, Any]:
            return facts.get(namespace, keys=[key])

        # The default is applied outside the step: it is not part of what was read.
        if isinstance(ctx, SyncContext):
            return ctx.step("memory.recall", read, self.namespace, key).get(key, default)

        async def recall() -> Any:
            found = await ctx.step("memory.recall", read, self.namespace, key)
            return found.get(key, default)

        return recall()

    @overload
    def recall_all(self, ctx: Context, prefix: str | None = None) -> Coroutine[Any, Any, dict[str, Any]]: ...
    @overload
    def recall_all(self, ctx: SyncContext, prefix: str | None = None) -> dict[str, Any]: ...

    def recall_all(
        self, ctx: AnyContext, prefix: str | None = None
    ) -> Coroutine[Any, Any, dict[str, Any]] | dict[str, Any]:
        """Every fact of the namespace (or those whose key starts with ``prefix``), by key in key order."""
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigurationError(f"a key prefix is a string, got {prefix!r}")
        facts = ctx.facts

        def read_all(namespace: str, prefix: str | None) -> dict[str, Any]:
            return facts.get(namespace, prefix=prefix)

        return ctx.step("memory.recall_all", read_all, self.namespace, prefix)

    @overload
    def forget(self, ctx: Context, key: str) -> Coroutine[Any, Any, bool]: ...
    @overload
    def forget(self, ctx: SyncContext, key: str) -> bool: ...

    def forget(self, ctx: AnyContext, key: str) -> Coroutine[Any, Any, bool] | bool:
        """Remove ``key``; True when it was there."""
        _require_key(key)
        facts = ctx.facts

        def delete(namespace: str, key: str) -> bool:
            return facts.delete(namespace, key)

        return ctx.step("memory.forget", delete, self.namespace, key)

    def as_tools(self, ctx: AnyContext) -> list[Tool]:
        """Two tools a model can call to keep and look up facts in this memory during ``ctx``'s run.

        ``remember_fact(key, value)`` and ``recall_facts(prefix=None)``; pass them to ``ctx.llm(tools=...)``
        and run the calls the model makes with ``ctx.tool``: the tool call is the recorded step.
        """
        facts = ctx.facts
        namespace = self.namespace

        @tool
        def remember_fact(key: str, value: str) -> str:
            """Keep a fact for later conversations: a short key (like "user/language") and its value."""
            if not key:
                raise NonRetryableError("the key must not be empty")
            facts.put(namespace, key, value)
            return f"remembered {key}"

        @tool
        def recall_facts(prefix: str | None = None) -> dict[str, Any]:
            """The facts kept so far, by key; give a prefix (like "user/") to get only those keys."""
            return facts.get(namespace, prefix=prefix or None)

        return [remember_fact, recall_facts]


def _require_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"a fact key is a non-empty string, got {key!r}")
