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

__all__ = ["FORK", "Inherited", "SourceRecords", "counterfactual_kind", "inherit", "recorded_world"]

FORK = "fork"  # runs.derived_as of a fork, a live replay, and their child runs
_COUNTERFACTUAL = "counterfactual:"  # + "live" or "missing": a counterfactual and its child runs

World = dict[str, list[StepRecord]]


def counterfactual_kind(missing: Literal["live", "missing"]) -> str:
    """``runs.derived_as`` of a counterfactual run (and of its child runs) for its ``missing`` mode."""
    return _COUNTERFACTUAL + missing


class SourceRecords:
    """Records a derived run serves instead of making a call again, by key, oldest first: its source
    run's, then what its restarts superseded (restart by restart)."""

    def __init__(self, records: Iterable[StepRecord] = ()) -> None:
        self._by_key: dict[str, list[StepRecord]] = {}
        for rec in records:
            self._by_key.setdefault(rec.key, []).append(rec)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def latest(self, key: str) -> StepRecord | None:
        """The newest record at ``key``."""
        found = self._by_key.get(key)
        return found[-1] if found else None

    def matching(self, key: str, fp: str) -> StepRecord | None:
        """The newest record at ``key`` of a call with the request ``fp``: the same call, made before."""
        for rec in reversed(self._by_key.get(key, ())):
            if rec.fingerprint == fp:
                return rec
        return None

    def first_of_run(self, key: str, run_id: str) -> StepRecord | None:
        """The first record at ``key`` made by the run ``run_id`` itself (before a restart): the call that
        had the key's plain idempotency key."""
        return next((rec for rec in self._by_key.get(key, ()) if rec.run_id == run_id), None)


@dataclass
class Inherited:
    """What ``inherit`` found for a run: records to serve, and a counterfactual's world."""

    source: SourceRecords
    world: World | None = None
    world_missing: Literal["live", "missing"] = "live"


def inherit(store: Store, record: RunRecord, *, world: bool = True) -> Inherited:
    """What the run ``record`` inherits, as it stands in the store now; its world only with ``world`` (a
    child run resumed by its parent shares the parent's)."""
    kind = record.derived_as or ""
    records: list[StepRecord] = []
    if kind == FORK and record.forked_from is not None:
        records += store.load_steps(record.forked_from)
    records += [kept.record for kept in store.load_superseded(record.id)]
    inherited = Inherited(SourceRecords(records))
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
