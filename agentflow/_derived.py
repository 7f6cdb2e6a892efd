"""What a derived run takes from the run it came from, rebuilt from the store whenever it is resumed.

A fork or a live replay serves a non-idempotent call its source run made (same key, same request) from the
source's record rather than make it again; a restarted run does the same with the records its restarts
superseded; a counterfactual answers tool calls from its source's recorded world, each answer once.
Held in memory only, all of that was gone when the process died, and the resumed run made the payment
again. So a derived run's row says where it came from (``forked_from``, ``derived_as``), a restart keeps
what it took out (``superseded_steps``), and ``inherit`` rebuilds the rest from them on every resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ._store import RunRecord, StepRecord, Store
from ._store._records import KEY, StepRow, as_record

__all__ = ["FORK", "Inherited", "SourceRecords", "counterfactual_kind", "enclosed", "inherit", "recorded_world"]

FORK = "fork"  # runs.derived_as of a fork, a live replay, and their child runs
_COUNTERFACTUAL = "counterfactual:"  # + "live" or "missing": a counterfactual and its child runs

World = dict[str, list[StepRecord]]


def counterfactual_kind(missing: Literal["live", "missing"]) -> str:
    """``runs.derived_as`` of a counterfactual run (and of its child runs) for its ``missing`` mode."""
    return _COUNTERFACTUAL + missing


class SourceRecords:
    """Records a derived run serves instead of making a call again, by key, oldest first: its source
    run's, then what its restarts superseded (restart by restart).

    A record serves one call: ``claim`` hands it out once. Concurrent calls (``asyncio.gather``) may
    reach the engine in another order than in the source run, so their keys differ, and so do the keys
    of the calls inside them: a call whose key holds no record of its request takes an unclaimed one of
    the same request made elsewhere, by a call of the same name in the same scope first (a payment made
    under ``work#2/pay#1`` is served to the call now at ``work#3/pay#0``).
    """

    def __init__(self, records: Iterable[StepRow] = ()) -> None:
        # Kept as they come (plain tuples from the store: nothing for the garbage collector to walk), by
        # their index in ``_rows``; a StepRecord is made of one when it is handed out. Indexed on the first
        # question: a replay that diverges nowhere asks none, and 20,000 lists are not made for nothing.
        self._rows: list[StepRow] = list(records)
        self._by_key: dict[str, list[int]] = {}
        self._by_request: dict[str, list[int]] = {}  # by fingerprint, oldest first
        self._indexed = False
        self._claimed: set[int] = set()  # the indexes of the records handed out

    def _index(self) -> None:
        self._indexed = True
        for i, rec in enumerate(map(as_record, self._rows)):
            self._by_key.setdefault(rec.key, []).append(i)
            self._by_request.setdefault(rec.fingerprint, []).append(i)

    def __bool__(self) -> bool:
        return bool(self._rows)

    def _take(self, i: int) -> StepRecord:
        self._claimed.add(i)
        return as_record(self._rows[i])

    def latest(self, key: str) -> StepRecord | None:
        """The newest record at ``key``."""
        if not self._indexed:
            self._index()
        found = self._by_key.get(key)
        return as_record(self._rows[found[-1]]) if found else None

    def claim(self, key: str, fp: str) -> StepRecord | None:
        """The record that serves the call at ``key`` with the request ``fp``, now claimed: the newest
        unclaimed one at ``key`` with that request, else the first unclaimed one of that request made by
        a call of the same name in the same scope, else anywhere. None: the call was not made before."""
        if not self._rows:  # a run derived from nothing: every live tool call asks
            return None
        if not self._indexed:
            self._index()
        for i in reversed(self._by_key.get(key, ())):
            if as_record(self._rows[i]).fingerprint == fp and i not in self._claimed:
                return self._take(i)
        same = self._by_request.get(fp, [])
        family = _slot_family(key)
        for i in [i for i in same if _slot_family(self._rows[i][KEY]) == family] + same:
            if i not in self._claimed:
                return self._take(i)
        return None

    def claimed_by(self, records: Iterable[StepRow]) -> None:
        """A resumed run's own ``records`` (in order) claim what they claimed before the crash: the record
        at the same key with the same request, or, for a copy of a source record (served: same result,
        same times), that record."""
        if not self._indexed:
            self._index()
        for rec in map(as_record, records):
            at_key = self._by_key.get(rec.key, ())
            if any(as_record(self._rows[i]).fingerprint == rec.fingerprint and i not in self._claimed for i in at_key):
                self.claim(rec.key, rec.fingerprint)
                continue
            for i in self._by_request.get(rec.fingerprint, ()):
                if i not in self._claimed and _same_answer(as_record(self._rows[i]), rec):
                    self._claimed.add(i)
                    break

    def first_of_run(self, key: str, run_id: str) -> StepRecord | None:
        """The first record at ``key`` made by the run ``run_id`` itself (before a restart): the call that
        had the key's plain idempotency key."""
        if not self._indexed:
            self._index()
        found = (as_record(self._rows[i]) for i in self._by_key.get(key, ()))
        return next((rec for rec in found if rec.run_id == run_id), None)


def enclosed(records: list[StepRecord]) -> list[StepRecord]:
    """``records`` (a run's, before some point) without those made inside a step that has no record among
    them: a step still in flight at that point. A fork or a restart there runs such a step again whole;
    keeping its nested records would hand them to whichever concurrent call takes its key first."""
    keys = {rec.key for rec in records}
    return [rec for rec in records if all(scope in keys for scope in _enclosing(rec.key))]


def _enclosing(key: str) -> list[str]:
    """The keys of the steps ``key`` was made inside, outermost first: ``a#0`` and ``a#0/b#1`` for ``a#0/b#1/c#0``."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _slot_family(key: str) -> str:
    """``scope/name`` of the key ``scope/name#n``: the calls of one name in one scope."""
    return key.rpartition("#")[0]


@dataclass
class Inherited:
    """What ``inherit`` found for a run: records to serve, and a counterfactual's world."""

    source: SourceRecords
    world: World | None = None
    world_missing: Literal["live", "missing"] = "live"


def inherit(store: Store, record: RunRecord, own: Iterable[StepRow] = (), *, world: bool = True) -> Inherited:
    """What the run ``record``, holding the records ``own``, inherits, as it stands in the store now; its
    world only with ``world`` (a child run resumed by its parent shares the parent's)."""
    kind = record.derived_as or ""
    records: list[StepRow] = []
    if kind == FORK and record.forked_from is not None:
        records += store.load_step_rows(record.forked_from)
    records += [kept.record for kept in store.load_superseded(record.id)]
    inherited = Inherited(SourceRecords(records))
    if inherited.source:
        inherited.source.claimed_by(own)
    if world and kind.startswith(_COUNTERFACTUAL) and record.forked_from is not None:
        missing: Literal["live", "missing"] = "missing" if kind == counterfactual_kind("missing") else "live"
        answers_by_fp = recorded_world(store, record.forked_from)
        # The answers its tree of runs (the counterfactual and its child runs share one world) used already.
        for used in _tree_tool_records(store, _derived_root(store, record)):
            answers = answers_by_fp.get(used.fingerprint, [])
            taken = next((i for i, answer in enumerate(answers) if _same_answer(answer, used)), None)
            if taken is not None:
                del answers[taken]
        inherited.world, inherited.world_missing = answers_by_fp, missing
    return inherited


def recorded_world(store: Store, source_run_id: str) -> World:
    """The tool results of ``source_run_id`` and its child runs, by request fingerprint, in order."""
    world: World = {}
    for run_id in _tree(store, source_run_id):
        for rec in store.load_steps(run_id):
            if rec.kind == "tool":
                world.setdefault(rec.fingerprint, []).append(rec)
    return world


def _tree(store: Store, root: str) -> list[str]:
    """``root`` and its child runs, theirs too, parents first."""
    runs, pending = [], [root]
    while pending:
        run_id = pending.pop(0)
        runs.append(run_id)
        pending += [child.id for child in store.child_runs(run_id)]
    return runs


def _derived_root(store: Store, record: RunRecord) -> str:
    """The counterfactual run whose tree ``record`` belongs to: itself, or its nearest ancestor of that kind."""
    root = record
    while root.parent_id is not None:
        parent = store.get_run(root.parent_id)
        if parent is None or parent.derived_as != record.derived_as or parent.forked_from != record.forked_from:
            break
        root = parent
    return root.id


def _tree_tool_records(store: Store, root: str) -> list[StepRecord]:
    return [rec for run_id in _tree(store, root) for rec in store.load_steps(run_id) if rec.kind == "tool"]


def _same_answer(answer: StepRecord, used: StepRecord) -> bool:
    """Whether ``used`` is ``answer`` served: a served answer is recorded with its source's result and times."""
    return (answer.output, answer.error, answer.started_at, answer.finished_at) == (
        used.output,
        used.error,
        used.started_at,
        used.finished_at,
    )
