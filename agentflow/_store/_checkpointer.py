"""Checkpoints of a SQLite WAL file, made off the step writer's path.

In WAL mode every commit appends its pages to the ``-wal`` file; a checkpoint copies them back into the
database file (and, with ``synchronous=NORMAL``, syncs both). By default SQLite makes the commit that takes
the WAL past 1,000 pages do that copy itself: about one step in 250 took milliseconds longer than the rest
(``benchmarks/llm_overhead.py``: the slowest recorded calls of every round, 3-20 ms against ~5 ms).

So the step writer's connection turns automatic checkpoints off, and a thread of the store's own
(``agentflow-checkpoint``, started on first need) makes a PASSIVE checkpoint on its own connection after
every ``every`` step commits. PASSIVE never blocks a writer or a reader; the thread holds no lock of the
writer's, and sqlite3 lets go of the GIL while it copies and syncs. Every other connection keeps SQLite's
automatic checkpoint, so should this thread fall behind or fail, the WAL is still checkpointed by the
store's next run update. A failure is logged (``agentflow.store``) and kept in ``last_error``; the next
trigger tries again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["WalCheckpointer"]

log = logging.getLogger("agentflow.store")


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite file at ``path`` after every ``every`` commits, on a thread."""

    def __init__(self, path: str, every: int = 250) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.path = path
        self.every = every
        self.checkpoints = 0  # checkpoints made (each a PASSIVE one: it may leave frames a reader holds)
        self.last_error: Exception | None = None
        self._commits = 0
        self._asked = 0  # checkpoints asked for
        self._done = 0  # of those, made or failed
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def committed(self) -> None:
        """One more commit on the writer; every ``every``-th asks the thread for a checkpoint."""
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            self.request()

    def request(self) -> None:
        """Ask for a checkpoint now (the thread makes it; ``wait`` waits for it)."""
        with self._cond:
            if self._closed:
                return
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agentflow-checkpoint", daemon=True)
                self._thread.start()
            self._cond.notify()

    def wait(self) -> None:
        """Block until every checkpoint asked for so far has been made (or has failed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._done >= self._asked or self._thread is None)

    def close(self) -> None:
        """Stop the thread (after the checkpoint it is making, if any) and close its connection."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._done < self._asked)
                    if self._closed:
                        return
                    target = self._asked
                made = 0
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    made = 1
                except sqlite3.Error as exc:
                    self.last_error = exc
                    log.warning("checkpoint of %s failed (SQLite's own checkpoints go on): %s", self.path, exc)
                with self._cond:
                    self.checkpoints += made
                    self._done = target
                    self._cond.notify_all()
        finally:
            if conn is not None:
                conn.close()
            with self._cond:
                self._thread = None
                self._cond.notify_all()
