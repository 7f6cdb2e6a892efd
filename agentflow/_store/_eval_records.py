"""Records of eval results that cross the store's boundary, and what the store offers the eval layer.

An eval result is one row of ``evals`` (the suite, how it ran, totals, and a JSON summary) and one row of
``eval_cases`` per case (the run that was scored, its scores and its trajectory as JSON), so that results
can be listed and compared long after the runs were made, even when the runs themselves live elsewhere
(re-scored from bundle files). The eval layer reaches them only through these methods; it never sees SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._records import RunRecord, StepRecord

__all__ = ["EVAL_CASE_COLUMNS", "EVAL_COLUMNS", "EvalCaseRecord", "EvalRecord", "EvalStore"]


@dataclass(frozen=True)
class EvalRecord:
    """One row of ``evals``: an eval of a suite's cases. ``summary`` is JSON text (per-scorer aggregates,
    thresholds, the verdict); ``baseline_id`` names the eval this one was compared with when it ran."""

    id: str
    suite: str
    mode: str
    created_at: float
    dataset: str = ""
    candidate: str | None = None
    baseline_id: str | None = None
    case_count: int = 0
    passed_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    summary: str = "{}"


@dataclass(frozen=True)
class EvalCaseRecord:
    """One row of ``eval_cases``: a case of an eval. ``scores`` and ``trajectory`` are JSON text (a list of
    ``{name, value, passed, explanation}``; a list of model-turn and tool-call events); ``output`` is the
    answer as JSON text."""

    eval_id: str
    case_id: str
    seq: int
    source_run_id: str | None
    run_id: str | None
    status: str
    passed: bool
    scores: str
    trajectory: str
    output: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0


EVAL_COLUMNS: tuple[str, ...] = tuple(EvalRecord.__dataclass_fields__)
EVAL_CASE_COLUMNS: tuple[str, ...] = tuple(EvalCaseRecord.__dataclass_fields__)


class EvalStore(Protocol):
    """What the eval layer needs from a database: runs read in bulk, and eval results kept."""

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs with these ids that exist, in the order asked."""
        ...

    def load_steps_of(self, run_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """The recorded steps of many runs at once (a few queries, not one per run), each run's in ``seq``
        order; a run without steps maps to an empty list."""
        ...

    def insert_eval(self, record: EvalRecord, cases: Sequence[EvalCaseRecord]) -> None:
        """Write an eval and its cases in one transaction; ``StoreError`` if its id is taken."""
        ...

    def get_eval(self, eval_id: str) -> EvalRecord | None: ...

    def list_evals(self, *, suite: str | None = None, limit: int | None = None) -> list[EvalRecord]:
        """Evals, newest first, optionally of one suite."""
        ...

    def load_eval_cases(self, eval_id: str) -> list[EvalCaseRecord]:
        """An eval's cases in ``seq`` order."""
        ...
