"""Runs started in the background: the app's own event loop thread, and the handle ``start`` returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._app_core import AppCore
    from ._models import Run, RunStatus

__all__ = ["BackgroundLoop", "RunHandle", "RunRef"]

T = TypeVar("T")


class BackgroundLoop:
    """An event loop on a daemon thread of its own, where started runs (and ``serve``) execute."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agentflow-runs", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class RunRef:
    """What every run handle offers: the run's status and snapshot, and waiting for its end."""

    def __init__(self, app: AppCore, run_id: str) -> None:
        self.app = app
        self.run_id = run_id

    def status(self) -> RunStatus:
        """The run's status now, from the database."""
        return self.app.get_run(self.run_id).status

    def run(self) -> Run:
        """The run as it is now."""
        return self.app.get_run(self.run_id)

    def _wait_until_ended(self, deadline: float | None, timeout: float | None, poll: float) -> Run:
        """Read the run every ``poll`` seconds until it has ended; ``TimeoutError`` at ``deadline``."""
        while True:
            run = self.app.get_run(self.run_id)
            if run.status.is_terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.run_id!r} is {run.status} after {timeout} s")
            time.sleep(poll)


class RunHandle(RunRef):
    """A run started with ``app.start``: ask its status, or wait for its end."""

    def __init__(self, app: AppCore, run_id: str, execution: concurrent.futures.Future[Run]) -> None:
        super().__init__(app, run_id)
        self._execution = execution

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def settled(self, timeout: float | None = None) -> Run:
        """Wait until the run stops executing, ended or suspended (waiting, paused), and return it."""
        try:
            return self._execution.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"run {self.run_id!r} is still executing after {timeout} s") from None

    def result(self, timeout: float | None = None) -> Run:
        """Wait until the run has ended (completed, failed or cancelled) and return it.

        A run that goes waiting (a durable sleep, an event) ends later, when it is woken (``serve``); this
        waits for that too. Raises ``TimeoutError`` after ``timeout`` seconds of real time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._execution.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"run {self.run_id!r} did not end within {timeout} s") from None
        # A run that is waiting ends when another part of the program wakes it.
        return self._wait_until_ended(deadline, timeout, 0.01)
