"""Running the async core from sync code, including from inside a running event loop (Jupyter)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` to completion and return its result.

    With no loop running in this thread, on a fresh loop here. With one running (a notebook cell), on a
    fresh loop in a helper thread while this thread waits: the caller's loop is never re-entered. An
    interrupt while it waits (KeyboardInterrupt: the notebook's stop button) cancels the coroutine, as
    ``asyncio.run`` does on Ctrl-C, and is raised once it has stopped: a run is left as a crash leaves it,
    to resume later, rather than going on in the helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    interrupted = threading.Event()
    lock = threading.Lock()

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        with lock:
            if interrupted.is_set():  # before it began: it does not begin
                raise asyncio.CancelledError
            running.append((asyncio.get_running_loop(), task))
        return await make()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentflow-sync") as pool:
        future = pool.submit(asyncio.run, main())
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted here while it runs there (else it raised this itself)
                with lock, contextlib.suppress(RuntimeError):  # its loop closed meanwhile: it has ended
                    interrupted.set()
                    for loop, task in running:
                        loop.call_soon_threadsafe(task.cancel)
            raise  # once the helper thread has ended: leaving the ``with`` waits for it
