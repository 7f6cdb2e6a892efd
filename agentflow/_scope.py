"""Where a call stands: the key of the step whose function is running (its scope, under which the calls it
makes take their keys) and the task that owns that scope. A call from another task under the same scope
(a coroutine of one ``asyncio.gather``) runs beside siblings; see ``yield_to_siblings``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

__all__ = [
    "current_scope",
    "enter_scope",
    "in_sibling_task",
    "leave_scope",
    "owning",
    "run_task",
    "top_level",
    "yield_to_siblings",
]

T = TypeVar("T")

# The key of the step whose function is running, so that steps it takes are scoped under it.
_scope: ContextVar[str] = ContextVar("agentflow_scope", default="")
# The task that runs the code of that scope (the run's own task at the top). A call made from another
# task (a coroutine under asyncio.gather) runs beside siblings that share its scope: see yield_to_siblings.
_scope_task: ContextVar[asyncio.Task[Any] | None] = ContextVar("agentflow_scope_task", default=None)


def current_scope() -> str:
    return _scope.get()


@contextlib.contextmanager
def run_task() -> Iterator[None]:
    """Mark the running task as the one that runs a workflow's top-level code."""
    token = _scope_task.set(asyncio.current_task())
    try:
        yield
    finally:
        _scope_task.reset(token)


@contextlib.contextmanager
def top_level() -> Iterator[None]:
    """Run a workflow's top-level code in the running task: at the top scope, which the task owns. A
    child run's task is made inside its parent's step and would otherwise take that step's scope: its
    keys would then depend on where it was started from, and a resume of the child on its own (``recover``)
    would find none of its records."""
    token = _scope.set("")
    try:
        with run_task():
            yield
    finally:
        _scope.reset(token)


async def owning(call: Awaitable[T]) -> T:
    """Await ``call`` in a task that owns its scope: a graph node (one key of its own), or a sync
    workflow's call (sequential code), so that it is not taken for a sibling under asyncio.gather."""
    with run_task():
        return await call


def in_sibling_task() -> bool:
    """True in a task that does not own the current scope: a coroutine under asyncio.gather."""
    try:
        current = asyncio.current_task()
    except RuntimeError:  # no loop running in this thread
        return False
    owner = _scope_task.get()
    return owner is not None and current is not owner


async def yield_to_siblings() -> None:
    """Served from the record, a call returns at once; live, it waits for the outside world and
    concurrent siblings (other coroutines of one ``asyncio.gather``) take their next keys meanwhile.
    One pass of the event loop here lets them do so in a replay too, so that keys are taken in the
    recorded order. A call in the task that owns its scope (sequential code) does not pay for it."""
    if in_sibling_task():
        await asyncio.sleep(0)


def enter_scope(key: str) -> tuple[Token[str], Token[asyncio.Task[Any] | None]]:
    """Run the calls that follow under the step ``key``, owned by the running task; ``leave_scope`` undoes it."""
    return _scope.set(key), _scope_task.set(asyncio.current_task())


def leave_scope(tokens: tuple[Token[str], Token[asyncio.Task[Any] | None]]) -> None:
    scope, task = tokens
    _scope_task.reset(task)
    _scope.reset(scope)
