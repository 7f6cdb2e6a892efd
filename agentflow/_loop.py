"""Running the async core from sync code, including from inside a running event loop (Jupyter)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` to completion and return its result.

    With no loop running in this thread, on a fresh loop here. With one running (a notebook cell), on a
    fresh loop in a helper thread while this thread waits: the caller's loop is never re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-sync") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
