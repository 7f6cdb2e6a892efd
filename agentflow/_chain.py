"""The hash chain over a run's step records: tamper evidence for the audit trail.

Each record links to the one before it in the run when it was written:
``chain = sha256(previous chain, key, kind, fingerprint, status, output, error)``, the first to ``genesis``.

A restart takes records out of the run (into its superseded records, kept): the ones from a step on, and
the records of steps that were still in flight before that step, which can sit in the middle of the run. A
record kept after such a one still links to it, so the run's chain is checked with its superseded records:
a record follows the record before it in the run, or one a restart took out from between the two. The
superseded records are checked the same way, each against the run's records of every restart before it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ._codec import sha256
from ._store import StepRecord
from ._store._records import SupersededStep

__all__ = ["chain_hash", "first_broken_link", "genesis"]

_SEP = "\x1f"


def genesis(run_id: str) -> str:
    """The chain value before a run's first step."""
    return sha256(f"agentflow-run{_SEP}{run_id}".encode()).hexdigest()  # type: ignore[no-any-return]


def chain_hash(
    previous: str, key: str, kind: str, fingerprint: str, status: str, output: str | None, error: str | None
) -> str:
    parts = (previous, key, kind, fingerprint, status, output or "", error or "")
    return sha256(_SEP.join(parts).encode()).hexdigest()  # type: ignore[no-any-return]


def first_broken_link(
    run_id: str, records: Sequence[StepRecord], superseded: Sequence[SupersededStep] = ()
) -> str | None:
    """Where the run's hash chain breaks: the key of the first record (``records``, in ``seq`` order) that
    does not follow from the ones before it, else of the first superseded record that does not (said as
    ``"key (taken out by restart n)"``); None when all hold."""
    history = _History(records, superseded)
    if (broken := history.first_not_following(run_id, records)) is not None:
        return broken.key
    by_restart: dict[int, list[StepRecord]] = {}
    for kept in superseded:
        by_restart.setdefault(kept.restart, []).append(kept.record)
    for restart, taken in sorted(by_restart.items()):
        taken.sort(key=lambda rec: rec.seq)
        if (broken := history.first_not_following(run_id, taken)) is not None:
            return f"{broken.key} (taken out by restart {restart})"
    return None


def _link(previous: str, rec: StepRecord) -> str:
    return chain_hash(previous, rec.key, rec.kind, rec.fingerprint, rec.status, rec.output, rec.error)


class _History:
    """Every record the run ever held, current and superseded, by ``seq`` (several records can share one
    ``seq``: the records made after a restart reuse the numbers of the ones it took out)."""

    def __init__(self, records: Sequence[StepRecord], superseded: Sequence[SupersededStep]) -> None:
        every = sorted([*records, *(kept.record for kept in superseded)], key=lambda rec: rec.seq)
        self._records = every
        self._seqs = [rec.seq for rec in every]

    def first_not_following(self, run_id: str, group: Sequence[StepRecord]) -> StepRecord | None:
        """The first record of ``group`` (the run's records, or one restart's, by ``seq``) that links neither
        to the record before it in ``group`` nor to a record of the history between that one and itself.
        The first of a group may link to the genesis or to any earlier record. Without superseded records
        this is the plain chain: each record links to the one before it, the first to the genesis.

        The nearest candidates are tried first: a record that holds links to one a ``seq`` or so below it.
        """
        origin = genesis(run_id)
        floor: int | None = None
        for rec in group:
            if not (floor is None and rec.chain == _link(origin, rec)) and not self._links_back(rec, floor):
                return rec
            floor = rec.seq
        return None

    def _links_back(self, rec: StepRecord, floor: int | None) -> bool:
        index = bisect.bisect_left(self._seqs, rec.seq) - 1
        while index >= 0 and (floor is None or self._seqs[index] >= floor):
            if rec.chain == _link(self._records[index].chain, rec):
                return True
            index -= 1
        return False
