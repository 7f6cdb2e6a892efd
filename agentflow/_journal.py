"""The journal of one run: finds recorded steps by key, hands out keys, appends new records.

It reads the run's record once when the run starts and keeps it in memory; each new step is one write
and nothing re-reads the history, so step 10,000 costs what step 10 costs. The records are kept as plain
tuples of strings and numbers (``StepRow``: the store loads them so, and the ones appended are kept so),
which the garbage collector stops tracking after its next pass: a long run does not grow the heap that
full collections walk. A ``StepRecord`` is made again, ~0.15 us, when one is asked for.

Keys are ``scope/name#n``: ``scope`` is the key of the enclosing step (empty at the top), ``n`` counts the
earlier uses of ``name`` in that scope. The hash chain links each record to the one before it:
``chain = sha256(previous chain, key, kind, fingerprint, status, output, error)`` (``_chain``).

Reservations are not records: a call about to run keeps its key with its fingerprint (``reserve``), so
that if the process dies while it is in flight, the resumed call takes that key again even when a
concurrent sibling reaches the engine first (``reserved_match``). They are outside the chain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._chain import chain_hash, genesis
from ._store import StepRecord, Store
from ._store._records import KEY, StepRow, as_record

__all__ = ["Journal"]


class Journal:
    def __init__(
        self, run_id: str, store: Store, records: Sequence[StepRow], reservations: Mapping[str, str] | None = None
    ) -> None:
        self.run_id = run_id
        self._store = store
        self._recorded: dict[str, StepRow] = {r[KEY]: r for r in records}
        last = as_record(records[-1]) if records else None
        self._next_seq = last.seq + 1 if last else 0
        self._chain = last.chain if last else genesis(run_id)
        # Per ``scope/name``: the lowest index not handed out yet, and the indexes above it handed out
        # out of turn (a call served from the record of a concurrent sibling's slot, see ``claim``).
        self._counters: dict[str, int] = {}
        self._ahead: dict[str, set[int]] = {}
        self._unclaimed = set(self._recorded)  # recorded keys not handed out yet in this execution
        self._retried: set[str] = set()  # "scope/" of the steps tried again (see retry_scope)
        self._top: dict[str, int] = {}  # per scope/name, the highest index recorded
        for key in self._recorded:
            self._raise_top(key)
        self._by_base: dict[str, list[StepRecord]] | None = None  # built on the first out-of-turn lookup
        # Keys reserved by calls that an earlier execution started and never recorded (in flight when it
        # died), with their fingerprints; a key leaves when it is handed out (see ``reserved_match``).
        self._reserved = {k: fp for k, fp in (reservations or {}).items() if k not in self._recorded}
        # Reservations of calls running now, not written yet: they go with the run's next write (a call's
        # own record makes its reservation needless: it leaves here then). See ``reserve``.
        self._pending: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()  # a sync workflow's thread and the event loop may both append
        # Set when a worker holds the run under a lease: every write is fenced by this token, the token of
        # the run ``lease_of`` when that is another run (a child run is executed under its root's lease).
        self.lease_token: int | None = None
        self.lease_of: str | None = None

    @property
    def lease(self) -> tuple[str, int] | None:
        """The lease this run's writes are fenced by, ``(run id, token)``; None outside a worker."""
        if self.lease_token is None:
            return None
        return (self.lease_of or self.run_id, self.lease_token)

    @property
    def store(self) -> Store:
        """The database this run records its steps in."""
        return self._store

    def next_key(self, scope: str, name: str) -> str:
        """The key of the next use of ``name`` in ``scope``; call it in program order, before any await."""
        key = self.peek_key(scope, name)
        self.claim(key)
        return key

    def peek_key(self, scope: str, name: str) -> str:
        """The key ``next_key`` would hand out, without handing it out."""
        base = f"{scope}/{name}" if scope else name
        return f"{base}#{self._counters.get(base, 0)}"

    def claim(self, key: str) -> None:
        """Hand out ``key``: no later call of this execution gets it."""
        self._unclaimed.discard(key)
        if self._reserved:
            self._reserved.pop(key, None)
        base, _, index = key.rpartition("#")
        n = int(index)
        lowest = self._counters.get(base, 0)
        if n != lowest:
            self._ahead.setdefault(base, set()).add(n)
            return
        lowest += 1
        ahead = self._ahead.get(base)
        while ahead and lowest in ahead:
            ahead.remove(lowest)
            lowest += 1
        self._counters[base] = lowest

    def retry_scope(self, scope: str) -> None:
        """A step is tried again: the calls it makes inside take the keys they took in its earlier
        attempt (``scope/charge#0`` again), so what they completed is served, not done twice, and a
        non-idempotent tool gets the same idempotency key. What failed there is taken again (``retrying``)."""
        prefix = scope + "/"
        for base in [b for b in self._counters if b.startswith(prefix)]:
            del self._counters[base]
            self._ahead.pop(base, None)
        self._retried.add(prefix)

    def retry_scope_done(self, scope: str) -> None:
        """The step ``scope`` is done trying: no call is made inside it any more."""
        self._retried.discard(scope + "/")

    def retrying(self, key: str) -> bool:
        """Whether ``key`` lies inside a step that is being tried again (see ``retry_scope``)."""
        return bool(self._retried) and any(key.startswith(prefix) for prefix in self._retried)

    def retried_matches(
        self, key: str, fingerprint: str, earlier: Callable[[StepRecord], bool]
    ) -> tuple[StepRecord | None, StepRecord | None, StepRecord | None]:
        """Inside a step tried again, the records of ``key``'s ``scope/name`` with the same request:
        ``(the first that failed, the first that failed that no call of this execution was handed yet and
        that is not ``earlier`` (an earlier attempt's), the one that completed)``. Gathered calls may
        reach the engine in another order in each attempt, so a call's records are found by its request,
        not its slot."""
        base = key.rpartition("#")[0]
        first_failed: StepRecord | None = None
        pending: StepRecord | None = None
        for n in range(self._top.get(base, -1) + 1):
            row = self._recorded.get(f"{base}#{n}")
            if row is None:
                continue
            rec = as_record(row)
            if rec.fingerprint != fingerprint:
                continue
            if rec.status != "failed":
                return first_failed, pending, rec
            first_failed = first_failed or rec
            if pending is None and rec.key in self._unclaimed and not earlier(rec):
                pending = rec  # loaded, and no call was handed it yet: this attempt's, before a crash
        return first_failed, pending, None

    def _raise_top(self, key: str) -> None:
        base, _, index = key.rpartition("#")
        if index.isdigit() and int(index) > self._top.get(base, -1):
            self._top[base] = int(index)

    def free_key(self, key: str) -> str:
        """The first key of ``key``'s ``scope/name`` that is neither handed out, recorded nor reserved."""
        base = key.rpartition("#")[0]
        n = self._counters.get(base, 0)
        ahead = self._ahead.get(base, set())
        while n in ahead or f"{base}#{n}" in self._recorded or f"{base}#{n}" in self._reserved:
            n += 1
        return f"{base}#{n}"

    def reserve(self, key: str, fingerprint: str, at: float, *, now: bool) -> None:
        """Keep that the call about to run at ``key`` is this request's (see ``reserved_match``).

        ``now``: committed before this returns, for a call whose key leaves the process (a payment's
        idempotency key, a child run's id). Else it goes with the run's next write, which is soon enough
        for a step: only what the step records inside needs its scope, and that is such a write; a step
        that records nothing inside runs again in any free slot alike. A call recorded first needs none.
        """
        with self._lock:
            self._pending[key] = (fingerprint, at)
            if now:
                self._store.reserve_keys(self.run_id, self._take_pending())

    def flush_reservations(self) -> None:
        """Commit the reservations waiting for the run's next write now (before a child run, whose records
        are its own run's, starts inside a gathered step)."""
        with self._lock:
            if self._pending:
                self._store.reserve_keys(self.run_id, self._take_pending())

    def _take_pending(self) -> list[tuple[str, str, float]]:
        """The reservations waiting to be written, handed over (hold ``_lock``)."""
        pending = [(key, fp, at) for key, (fp, at) in self._pending.items()]
        self._pending.clear()
        return pending

    def reserved_match(self, key: str, fingerprint: str) -> str | None:
        """The key of ``key``'s ``scope/name`` that a call with ``fingerprint`` reserved in an earlier
        execution and left unrecorded (it was in flight when the process died), not handed out yet.

        Resumed, gathered calls may reach the engine in another order: such a call takes the key it had,
        so a payment made again gets the idempotency key it was made with, and a nested step its scope."""
        if not self._reserved:  # the usual case: nothing was in flight, or it has been handed out
            return None
        base = key.rpartition("#")[0]
        mine = [k for k, fp in self._reserved.items() if fp == fingerprint and k.rpartition("#")[0] == base]
        return min(mine, key=lambda k: int(k.rpartition("#")[2]), default=None)

    def reserved_by_another(self, key: str, fingerprint: str) -> bool:
        """Whether ``key`` is reserved, unrecorded, by a call with another request."""
        return key in self._reserved and self._reserved[key] != fingerprint

    def unclaimed_match(self, key: str, fingerprint: str) -> StepRecord | None:
        """The first record of ``key``'s ``scope/name`` not handed out yet whose request has
        ``fingerprint``. Calls made concurrently (``asyncio.gather``) take their keys in the order they
        reach the engine, which a replay, where recorded calls return at once, need not repeat: a call
        whose slot holds a sibling's record finds its own this way."""
        if not self._unclaimed:  # the usual case: every recorded step has been served (or none was)
            return None
        if self._by_base is None:
            grouped: dict[str, list[StepRecord]] = {}
            for rec in sorted(map(as_record, self._recorded.values()), key=lambda r: r.seq):
                grouped.setdefault(rec.key.rpartition("#")[0], []).append(rec)
            self._by_base = grouped
        for rec in self._by_base.get(key.rpartition("#")[0], ()):
            if rec.fingerprint == fingerprint and rec.key in self._unclaimed:
                return rec
        return None

    def recorded(self, key: str) -> StepRecord | None:
        row = self._recorded.get(key)
        return None if row is None else as_record(row)

    def usage(self) -> tuple[int, int, float]:
        """The prompt tokens, completion tokens and cost the records so far add up to."""
        prompt, completion, cost = 0, 0, 0.0
        for rec in map(as_record, self._recorded.values()):  # one at a time: no list of 10,000 records
            prompt += rec.prompt_tokens
            completion += rec.completion_tokens
            cost += rec.cost
        return prompt, completion, cost

    def append(
        self,
        *,
        key: str,
        kind: str,
        name: str,
        fingerprint: str,
        request: str | None,
        status: str,
        attempt: int,
        output: str | None,
        error: str | None,
        started_at: float,
        finished_at: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
        blobs: Mapping[str, bytes] | None = None,
    ) -> StepRecord:
        """Record a step (and the blobs it refers to) in one commit; it counts once the commit succeeded."""
        with self._lock:
            chain = chain_hash(self._chain, key, kind, fingerprint, status, output, error)
            row = (self.run_id, key, self._next_seq, kind, name, fingerprint, request, status, attempt, output,
                   error, started_at, finished_at, prompt_tokens, completion_tokens, cost, chain)  # fmt: skip
            record = as_record(row)
            extra: dict[str, Any] = {}
            if self.lease_token is not None:  # a worker's run: written only while the worker holds its lease
                extra.update(lease_token=self.lease_token, lease_of=self.lease_of)
            if self._pending:  # gathered steps running now: kept before anything they record inside
                self._pending.pop(key, None)
                if self._pending:
                    extra["reservations"] = self._take_pending()
            self._store.write_step(record, blobs, **extra)
            self._next_seq += 1
            self._chain = chain
            self._recorded[key] = row
            self._raise_top(key)
            return record

    def rebase(self, run_id: str, keep: list[StepRecord]) -> list[StepRecord]:
        """Become the journal of a new run ``run_id`` that starts with copies of ``keep`` (in their order).

        For a fork, or a live replay that diverged: the copies are renumbered, chained anew under the
        new run id (the chain starts from the run's id) and written; nothing else of the old record is
        served any more. Returns the copies.
        """
        with self._lock:
            chain = genesis(run_id)
            copies: list[StepRecord] = []
            for seq, rec in enumerate(keep):
                chain = chain_hash(chain, rec.key, rec.kind, rec.fingerprint, rec.status, rec.output, rec.error)
                copies.append(rec._replace(run_id=run_id, seq=seq, chain=chain))
            for copy in copies:
                self._store.write_step(copy, None)
            self.run_id = run_id
            self._reserved.clear()  # the old run's: the new one runs the rest live, under its own keys
            self._pending.clear()
            self._recorded = {c.key: tuple(c) for c in copies}
            self._unclaimed &= set(self._recorded)
            self._by_base = None
            self._next_seq = len(copies)
            self._chain = chain
            return copies
