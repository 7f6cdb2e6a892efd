"""Plain records that cross the store's boundary, and the interface the store offers the engine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from ._eval_records import EvalStore

__all__ = ["STEP_COLUMNS", "RunRecord", "StepRecord", "StepRow", "Store", "SupersededStep", "as_record", "build_frozen"]

_T = TypeVar("_T")


def build_frozen(cls: type[_T], values: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass ``cls`` holding ``values``, which name every field.

    For the hot path: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (3.5 us for 17 fields in a tight loop, where one dict update takes 0.8; every model call makes an
    ``LLMResponse``). No defaults are filled in and no ``__post_init__`` runs: callers pass every field
    (tests compare with the class's own ``__init__``).
    """
    made: _T = object.__new__(cls)
    made.__dict__.update(values)
    return made


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``. Times are seconds since the epoch; JSON fields are JSON text."""

    id: str
    workflow: str
    status: str
    input: str
    created_at: float
    updated_at: float
    output: str | None = None
    error: str | None = None
    code_version: str | None = None
    parent_id: str | None = None
    forked_from: str | None = None
    forked_at: str | None = None
    derived_as: str | None = None  # "fork", "counterfactual:live" or "counterfactual:missing" (see RunRow)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    lease_token: int = 0
    workflow_ref: str | None = None
    wake_at: float | None = None
    waiting_for: str | None = None
    deadline_at: float | None = None
    control: str | None = None
    rollback: str | None = None
    queue: str | None = None
    priority: int = 0
    dedup_id: str | None = None


class StepRecord(NamedTuple):
    """One row of ``steps``: a recorded step, found by ``key`` and proven by ``fingerprint``.

    ``chain`` is sha256 over the previous step's chain and this step's content (see ``_journal``), so a
    changed or removed record breaks the chain of everything after it.

    A named tuple, not a dataclass: its fields are all strings and numbers, so a run's journal can keep
    them as plain tuples, which the garbage collector stops tracking (see ``Journal``). A run of 10,000
    steps otherwise keeps 10,000 tracked objects, and a full collection over them lands in some step.
    """

    run_id: str
    key: str
    seq: int
    kind: str
    name: str
    fingerprint: str
    request: str | None
    status: str
    attempt: int
    output: str | None
    error: str | None
    started_at: float
    finished_at: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    chain: str


@dataclass(frozen=True)
class EventRecord:
    """An event sent to a run (``send_event``), kept until a wait takes it: ``delivered_key`` is the key of
    the wait that took it, None while none has."""

    run_id: str
    type: str
    payload: str
    sent_at: float
    delivered_key: str | None = None


@dataclass(frozen=True)
class SupersededStep:
    """A step record a restart took out of its run: the run's ``restart``-th restart (1, 2, ...), at
    ``superseded_at``."""

    restart: int
    superseded_at: float
    record: StepRecord


# Column order of the hot-path insert; StepRecord's fields in declaration order.
STEP_COLUMNS: tuple[str, ...] = StepRecord._fields

StepRow = tuple[Any, ...]
"""A step record where the engine keeps many: a ``StepRecord``, or its fields as a plain tuple. A plain
tuple of strings and numbers is not tracked by the garbage collector once a collection has seen it, so a
run's 10,000 records add nothing to the heap that every full collection walks (``Store.load_step_rows``)."""
KEY = STEP_COLUMNS.index("key")
_new_tuple = tuple.__new__


def as_record(row: StepRow) -> StepRecord:
    """``row`` as a ``StepRecord`` (~0.15 us for a plain tuple)."""
    return row if type(row) is StepRecord else _new_tuple(StepRecord, row)


class Store(EvalStore, Protocol):
    """What the engine needs from a database (and, through ``EvalStore``, what the eval layer needs)."""

    @property
    def url(self) -> str: ...

    @property
    def dialect(self) -> str: ...

    def insert_run(self, run: RunRecord) -> bool:
        """Insert ``run``; False (and nothing written) if a run with its id exists already."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def run_control(self, run_id: str) -> str | None:
        """The run's ``control`` column (a pause or cancel asked for it), or None; also None for no such run.
        A running run reads it before its live steps, so it is one small read."""
        ...

    def list_runs(
        self,
        *,
        statuses: Sequence[str] | None = None,
        workflow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first, filtered by status and workflow name."""
        ...

    def update_run(
        self,
        run_id: str,
        fields: Mapping[str, object],
        *,
        lease_token: int | None = None,
        lease_of: str | None = None,
        if_status: Sequence[str] | None = None,
    ) -> bool:
        """Set ``fields`` (column name to value) on one run; with ``lease_token``, only while the lease token
        of the run ``lease_of`` (the run itself by default; a child run's root) is that one (else
        ``LeaseLost``, nothing written); with ``if_status``, only while the run's status is one of those
        (checked in the same statement). Whether the run's row was written."""
        ...

    def end_run(
        self,
        run_id: str,
        fields: Mapping[str, object],
        *,
        at: float,
        parent_id: str | None = None,
        lease_token: int | None = None,
        lease_of: str | None = None,
    ) -> None:
        """A run's last write, in one transaction: ``fields`` (its end: status, output or error, totals), fenced
        as ``update_run``; its reservations dropped (none of its calls is in flight any more); the lease it
        holds itself (``lease_token`` without ``lease_of``) closed at ``at`` with its status as the outcome;
        and for a child run the event ``child:<run_id>`` to its parent ``parent_id``, which wakes the parent
        if it waits for it. A process that dies around this write leaves all of it or none: never a parent
        that waits for a child that has ended."""
        ...

    def load_steps(self, run_id: str) -> list[StepRecord]:
        """All recorded steps of a run in ``seq`` order."""
        ...

    def load_step_rows(self, run_id: str) -> list[StepRow]:
        """``load_steps`` as plain tuples (see ``StepRow``): for a run resumed or replayed, whose journal
        keeps every record of it."""
        ...

    def write_step(
        self,
        step: StepRecord,
        blobs: Mapping[str, bytes] | None = None,
        lease_token: int | None = None,
        lease_of: str | None = None,
        reservations: Sequence[tuple[str, str, float]] = (),
    ) -> None:
        """Append one step record, and the blobs it refers to, in one commit: the hot path.

        Blobs already stored are left as they are. Safe from several threads. With ``lease_token`` (a run
        held by a worker) the record is written only while the lease token of the run ``lease_of`` (the
        step's own run by default; for a child run, the root run the worker holds) is still that one; else
        ``LeaseLost`` is raised and nothing is written. ``reservations`` (``(key, fingerprint, at)`` of the
        step's run, see ``reserve_keys``) are kept in the same commit.
        """
        ...

    def reserve_keys(self, run_id: str, reservations: Sequence[tuple[str, str, float]]) -> None:
        """Keep, in one commit, that the calls about to run at these keys ask for these fingerprints:
        ``(key, fingerprint, reserved at)``. A key reserved already keeps its first reservation."""
        ...

    def load_reservations(self, run_id: str) -> dict[str, str]:
        """The run's reserved keys and the fingerprints they were reserved for."""
        ...

    def drop_reservations(self, run_id: str) -> None:
        """Forget the run's reserved keys (it has ended: nothing of it is in flight any more)."""
        ...

    def send_event(self, run_id: str, type: str, payload: str, sent_at: float) -> int:
        """Keep an event for ``run_id``; a run waiting for ``type`` becomes due at ``sent_at``. Its id."""
        ...

    def claim_event(self, run_id: str, type: str, key: str) -> tuple[int, str] | None:
        """The event delivered to the wait ``key``: the one it claimed before, else the oldest undelivered
        event of ``type`` for the run, now claimed. ``(id, payload)``, or None when there is none."""
        ...

    def load_events(self, run_id: str) -> list[EventRecord]:
        """The events sent to the run, taken by a wait or not, in the order they were sent."""
        ...

    def suspend_run(
        self,
        run_id: str,
        *,
        status: str,
        wake_at: float | None,
        waiting_for: str | None,
        updated_at: float,
        usage: tuple[int, int, float],
        lease_token: int | None = None,
        lease_of: str | None = None,
    ) -> None:
        """Mark a run waiting (or paused). If an event it waits for is in its inbox already (sent while it
        was getting there), it is due at once: no event is missed between the wait and the status. With
        ``lease_token``, only while the lease token of ``lease_of`` (the run itself by default) is that one
        (else ``LeaseLost``)."""
        ...

    def due_runs(self, now: float, limit: int | None = None) -> list[RunRecord]:
        """Waiting runs whose ``wake_at`` has come, the earliest first."""
        ...

    def supersede_steps_from(self, run_id: str, seq: int, at: float, also: Sequence[str] = ()) -> int:
        """A restart: move the run's step records from ``seq`` on, and those at the keys ``also``, in one
        transaction, out of the run and into its superseded records (kept, see ``load_superseded``), and
        forget its reservations. Returns the restart's number: 1 for the run's first, 2 for the next..."""
        ...

    def load_superseded(self, run_id: str) -> list[SupersededStep]:
        """The records the run's restarts took out of it, by restart, then in the order they were made."""
        ...

    def put_blobs(self, blobs: Mapping[str, bytes]) -> None:
        """Store content-addressed payloads (sha256 hex to bytes); present ones are left as they are."""
        ...

    def get_blobs(self, hashes: Iterable[str]) -> dict[str, bytes]: ...

    def put_fact(
        self, namespace: str, key: str, value_json: str, run_id: str | None, *, updated_at: float | None = None
    ) -> None:
        """Set the fact ``key`` of ``namespace`` to ``value_json`` (JSON text), replacing any value it had.

        ``run_id`` is the run that writes it; ``updated_at`` defaults to now (seconds since the epoch).
        """
        ...

    def get_facts(
        self, namespace: str, *, keys: Iterable[str] | None = None, prefix: str | None = None
    ) -> dict[str, str]:
        """The facts of ``namespace`` (key to JSON text), in key order: all of them, those named in
        ``keys``, or those whose key starts with ``prefix`` (taken literally: ``%`` and ``_`` are not
        wildcards). ``keys`` and ``prefix`` together give the named keys that have the prefix."""
        ...

    def delete_fact(self, namespace: str, key: str) -> bool:
        """Remove one fact; False when there was none."""
        ...

    def child_runs(self, run_id: str) -> list[RunRecord]:
        """The runs whose ``parent_id`` is ``run_id``, oldest first."""
        ...

    def import_runs(
        self,
        runs: Sequence[RunRecord],
        steps: Sequence[StepRecord],
        blobs: Mapping[str, bytes],
        superseded: Sequence[SupersededStep] = (),
        events: Sequence[EventRecord] = (),
    ) -> list[str]:
        """Write runs, their steps, the records their restarts superseded, their events and the blobs they
        refer to, in one transaction; the ids it inserted.

        A run already present with the same record, steps and superseded records is skipped (its events
        too: they may have been taken since); one present with other content raises ``RunConflict`` and
        nothing is written. Blobs already stored are left as they are.
        """
        ...

    def close(self) -> None: ...
