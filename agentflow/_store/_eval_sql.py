"""The eval half of the SQL store: runs read in bulk for datasets, and eval results written and read back.

A mixin of ``SQLStore`` (``_sql``): it uses the store's ``_connect`` and nothing else of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Protocol

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from ..errors import StoreError
from ._eval_records import EVAL_CASE_COLUMNS, EVAL_COLUMNS, EvalCaseRecord, EvalRecord
from ._packing import unpacked_step
from ._records import STEP_COLUMNS, RunRecord, StepRecord
from ._tables import EvalCaseRow, EvalRow, RunRow, StepRow

__all__ = ["EvalSQL"]

_CHUNK = 500  # ids per IN (...) list: well under SQLite's limit on bound parameters


class _Connects(Protocol):
    def _connect(self, *, begin: bool = False) -> AbstractContextManager[Connection]: ...


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _CHUNK):
        yield unique[start : start + _CHUNK]


class EvalSQL:
    """``EvalStore`` on SQLAlchemy Core."""

    def get_runs(self: _Connects, run_ids: Sequence[str]) -> list[RunRecord]:
        table = RunRow.__table__  # type: ignore[attr-defined]
        found: dict[str, RunRecord] = {}
        with self._connect() as conn:
            for chunk in _chunks(run_ids):
                for row in conn.execute(select(table).where(table.c.id.in_(chunk))).mappings():
                    found[row["id"]] = RunRecord(**row)
        return [found[run_id] for run_id in dict.fromkeys(run_ids) if run_id in found]

    def load_steps_of(self: _Connects, run_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        table = StepRow.__table__  # type: ignore[attr-defined]
        columns = [table.c[name] for name in STEP_COLUMNS]
        out: dict[str, list[StepRecord]] = {run_id: [] for run_id in run_ids}
        with self._connect() as conn:
            for chunk in _chunks(run_ids):
                query = select(*columns).where(table.c.run_id.in_(chunk)).order_by(table.c.run_id, table.c.seq)
                for row in conn.execute(query):
                    out[row[0]].append(unpacked_step(row))
        return out

    def insert_eval(self: _Connects, record: EvalRecord, cases: Sequence[EvalCaseRecord]) -> None:
        evals, eval_cases = EvalRow.__table__, EvalCaseRow.__table__  # type: ignore[attr-defined]
        try:
            with self._connect(begin=True) as conn:
                conn.execute(insert(evals).values(asdict(record)))
                if cases:
                    conn.execute(insert(eval_cases), [asdict(case) for case in cases])
        except IntegrityError as exc:
            raise StoreError(
                f"an eval with id {record.id!r} is stored already; nothing was written. Give this one another id"
            ) from exc

    def get_eval(self: _Connects, eval_id: str) -> EvalRecord | None:
        table = EvalRow.__table__  # type: ignore[attr-defined]
        with self._connect() as conn:
            row = conn.execute(select(table).where(table.c.id == eval_id)).mappings().first()
        return None if row is None else EvalRecord(**{name: row[name] for name in EVAL_COLUMNS})

    def list_evals(self: _Connects, *, suite: str | None = None, limit: int | None = None) -> list[EvalRecord]:
        table = EvalRow.__table__  # type: ignore[attr-defined]
        query = select(table).order_by(table.c.created_at.desc(), table.c.id)
        if suite:
            query = query.where(table.c.suite == suite)
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [EvalRecord(**{name: row[name] for name in EVAL_COLUMNS}) for row in rows]

    def load_eval_cases(self: _Connects, eval_id: str) -> list[EvalCaseRecord]:
        table = EvalCaseRow.__table__  # type: ignore[attr-defined]
        query = select(*(table.c[name] for name in EVAL_CASE_COLUMNS)).where(table.c.eval_id == eval_id)
        with self._connect() as conn:
            rows = conn.execute(query.order_by(table.c.seq)).all()
        return [EvalCaseRecord(**{**row._asdict(), "passed": bool(row.passed)}) for row in rows]
