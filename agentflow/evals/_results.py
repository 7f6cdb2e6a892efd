"""Eval results: per case and in aggregate; kept in the database (``evals``, ``eval_cases``) and read back.

A ``CaseResult`` holds what a comparison needs without the run itself: the scores, the trajectory as a list
of plain events, the answer, tokens, cost and latency. So evals stay comparable when the runs they scored
came from bundle files, or were cleaned up since.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import AgentFlowError, ConfigurationError
from ._scorers import Score

if TYPE_CHECKING:
    from .._app import AgentFlow
    from .._store._eval_records import EvalCaseRecord, EvalRecord

__all__ = ["CaseResult", "EvalResult", "EvalSummary", "list_results", "load_result", "save_result"]


@dataclass(frozen=True)
class CaseResult:
    """How one case did. ``run_id`` is the run that was scored (the recorded one when re-scoring, the new
    one otherwise); ``status`` is its status, or ``error`` when the eval could not make the run (then
    ``error`` says why). ``path`` is its trajectory as plain events (see ``Trajectory.path``)."""

    case_id: str
    source_run_id: str | None
    run_id: str | None
    status: str
    passed: bool
    scores: tuple[Score, ...]
    path: tuple[dict[str, Any], ...] = ()
    output: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def score(self, name: str) -> Score | None:
        """The score named ``name``, or None when this case has none by that name."""
        for s in self.scores:
            if s.name == name:
                return s
        return None

    @property
    def failures(self) -> list[Score]:
        """The scores that failed."""
        return [s for s in self.scores if s.passed is False]


@dataclass(frozen=True, repr=False)
class EvalResult:
    """An eval of a dataset: every case's result, and aggregates over them.

    ``mode`` is how the runs came about: ``rescore`` (the recorded runs, nothing ran), ``counterfactual``
    (a new version against the recorded world) or ``fresh`` (new runs on the recorded inputs).
    ``candidate`` describes the version that ran (an agent's name and code version). ``thresholds`` are
    the minimums the eval was held to (``pass_rate``, or a scorer's name for the share of cases it passed).
    """

    id: str
    suite: str
    mode: str
    created_at: float
    dataset: str
    cases: tuple[CaseResult, ...]
    candidate: str | None = None
    baseline_id: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:  # short: a result holds every case (asyncio reprs a finished task's result)
        return f"<EvalResult {self.id} {self.mode}: {self.passed_count}/{len(self.cases)} cases passed>"

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)

    @property
    def passed_count(self) -> int:
        return sum(1 for c in self.cases if c.passed)

    @property
    def pass_rate(self) -> float:
        """The share of cases that passed every scorer with a verdict (1.0 for no cases)."""
        return self.passed_count / len(self.cases) if self.cases else 1.0

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.cases)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.cases)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.cases)

    @property
    def scorer_names(self) -> list[str]:
        """Every scorer's name, in the order the scores came."""
        return list(dict.fromkeys(s.name for c in self.cases for s in c.scores))

    def case(self, case_id: str) -> CaseResult:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"eval {self.id} has no case {case_id!r}")

    def mean(self, scorer: str) -> float | None:
        """The mean value of a scorer over the cases it scored; None when it scored none."""
        values = [s.value for c in self.cases if (s := c.score(scorer)) is not None]
        return sum(values) / len(values) if values else None

    def pass_rate_of(self, scorer: str) -> float | None:
        """The share of cases a scorer passed, among those it gave a verdict on; None when it gave none."""
        verdicts = [s.passed for c in self.cases if (s := c.score(scorer)) is not None and s.passed is not None]
        return sum(1 for v in verdicts if v) / len(verdicts) if verdicts else None

    def aggregates(self) -> dict[str, dict[str, float | None]]:
        """Per scorer: its ``mean`` value and ``pass_rate``."""
        return {name: {"mean": self.mean(name), "pass_rate": self.pass_rate_of(name)} for name in self.scorer_names}

    def check(self, thresholds: Mapping[str, float] | None = None) -> list[str]:
        """The thresholds this result misses (default: its own), each said in a sentence; [] when it meets
        them all. ``pass_rate`` is the share of passing cases; any other key names a scorer and bounds the
        share of cases it passed. An unknown scorer name is a ``ConfigurationError``."""
        problems = []
        for key, minimum in (self.thresholds if thresholds is None else thresholds).items():
            if key == "pass_rate":
                value: float | None = self.pass_rate
            else:
                if key not in self.scorer_names and self.cases:
                    raise ConfigurationError(
                        f"threshold {key!r} names no scorer of eval {self.id}; its scorers: "
                        f"{', '.join(self.scorer_names)} (or use 'pass_rate')"
                    )
                value = self.pass_rate_of(key)
            if value is not None and value < minimum:
                problems.append(f"{key} {value:.0%} is below the threshold {minimum:.0%}")
        return problems


@dataclass(frozen=True)
class EvalSummary:
    """A stored eval, without its cases: what ``list_results`` gives."""

    id: str
    suite: str
    mode: str
    created_at: float
    dataset: str
    candidate: str | None
    baseline_id: str | None
    case_count: int
    passed_count: int
    prompt_tokens: int
    completion_tokens: int
    cost: float

    @property
    def pass_rate(self) -> float:
        return self.passed_count / self.case_count if self.case_count else 1.0

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)


# -- storage ----------------------------------------------------------------------------------------------


def _records(result: EvalResult) -> tuple[EvalRecord, list[EvalCaseRecord]]:
    from .._store._eval_records import EvalCaseRecord, EvalRecord

    summary = {"aggregates": result.aggregates(), "thresholds": dict(result.thresholds)}
    record = EvalRecord(
        id=result.id,
        suite=result.suite,
        mode=result.mode,
        created_at=result.created_at,
        dataset=result.dataset,
        candidate=result.candidate,
        baseline_id=result.baseline_id,
        case_count=len(result.cases),
        passed_count=result.passed_count,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cost=result.cost,
        summary=json.dumps(summary, sort_keys=True),
    )
    cases = [
        EvalCaseRecord(
            eval_id=result.id,
            case_id=c.case_id,
            seq=seq,
            source_run_id=c.source_run_id,
            run_id=c.run_id,
            status=c.status,
            passed=c.passed,
            scores=json.dumps([s.to_json() for s in c.scores]),
            trajectory=json.dumps(list(c.path), default=str),
            output=None if c.output is None else json.dumps(c.output, default=str),
            error=c.error,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cost=c.cost,
            latency=c.latency,
        )
        for seq, c in enumerate(result.cases)
    ]
    return record, cases


def save_result(app: AgentFlow, result: EvalResult) -> None:
    """Keep ``result`` in ``app``'s database (``StoreError`` if an eval with its id is there already)."""
    record, cases = _records(result)
    app._store.insert_eval(record, cases)


def load_result(app: AgentFlow, eval_id: str) -> EvalResult:
    """The stored eval ``eval_id`` with its cases; ``AgentFlowError`` naming the stored ones if none."""
    store = app._store
    record = store.get_eval(eval_id)
    if record is None:
        known = ", ".join(r.id for r in store.list_evals(limit=5)) or "none yet"
        raise AgentFlowError(f"there is no eval {eval_id!r} in {store.url}; the newest: {known}")
    summary = json.loads(record.summary or "{}")
    cases = tuple(
        CaseResult(
            case_id=c.case_id,
            source_run_id=c.source_run_id,
            run_id=c.run_id,
            status=c.status,
            passed=c.passed,
            scores=tuple(Score.from_json(s) for s in json.loads(c.scores)),
            path=tuple(json.loads(c.trajectory)),
            output=None if c.output is None else json.loads(c.output),
            error=c.error,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cost=c.cost,
            latency=c.latency,
        )
        for c in store.load_eval_cases(eval_id)
    )
    return EvalResult(
        id=record.id,
        suite=record.suite,
        mode=record.mode,
        created_at=record.created_at,
        dataset=record.dataset,
        cases=cases,
        candidate=record.candidate,
        baseline_id=record.baseline_id,
        thresholds=dict(summary.get("thresholds") or {}),
    )


def list_results(app: AgentFlow, *, suite: str | None = None, limit: int | None = 50) -> list[EvalSummary]:
    """Stored evals, newest first, optionally of one suite."""
    return [
        EvalSummary(
            id=r.id,
            suite=r.suite,
            mode=r.mode,
            created_at=r.created_at,
            dataset=r.dataset,
            candidate=r.candidate,
            baseline_id=r.baseline_id,
            case_count=r.case_count,
            passed_count=r.passed_count,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost=r.cost,
        )
        for r in app._store.list_evals(suite=suite, limit=limit)
    ]


def case_passed(status: str, scores: Sequence[Score]) -> bool:
    """A case passes when its run was made and every scorer with a verdict passed it."""
    return status != "error" and all(s.passed is not False for s in scores)
