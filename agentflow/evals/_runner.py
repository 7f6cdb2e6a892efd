"""Evaluating a dataset three ways: re-score the recorded runs, run a new version counterfactually against
the recorded world, or run it fresh on the recorded inputs; then score every case.

Cases run concurrently, at most ``concurrency`` at a time. A run that fails is scored as it ended (its
error is part of its trajectory); a case whose run cannot even be started (agentflow refused it: its
input does not encode, its id is taken) is a failed case with the reason, not a crashed eval.
The events a recorded run received (a person's approval) are part of its world: a new run of the case
finds them in its inbox, so it does not stop to wait for them again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._loop import run_sync
from ..errors import AgentFlowError, ConfigurationError, RunNotFound
from ._dataset import Case, Dataset
from ._judge import LLMJudge
from ._results import CaseResult, EvalResult, case_passed, save_result
from ._scorers import Score, Scorer
from ._trajectory import Trajectory, answer_of, events_by_type, trajectory_from_run

if TYPE_CHECKING:
    from .._app import AgentFlow

__all__ = ["Mode", "describe_candidate", "evaluate", "evaluate_async", "score_case"]

Mode = Literal["rescore", "counterfactual", "fresh"]
_MODES = ("rescore", "counterfactual", "fresh")


def evaluate(
    dataset: Dataset,
    scorers: Sequence[Scorer],
    *,
    app: AgentFlow | None = None,
    agent: Any = None,
    mode: Mode | None = None,
    missing: Literal["live", "missing"] = "missing",
    concurrency: int = 4,
    suite: str | None = None,
    eval_id: str | None = None,
    thresholds: dict[str, float] | None = None,
    baseline_id: str | None = None,
    save: bool = True,
    on_case: Callable[[CaseResult], None] | None = None,
) -> EvalResult:
    """Evaluate ``dataset`` with ``scorers`` and return the ``EvalResult`` (kept in ``app``'s database
    when there is an app and ``save``).

    ``mode`` (default: ``counterfactual`` when an ``agent`` is given, else ``rescore``):

    - ``rescore``: score the recorded runs as they are; nothing runs (no app needed, unless a scorer is
      an LLM judge, whose calls are recorded in it).
    - ``counterfactual``: run ``agent`` (a new version: another prompt, model or code) on each case's
      input against the case's recorded world (``app.counterfactual``): model calls are live, tool calls
      the record answers are served from it, others get an error result (``missing="missing"``) or run
      live (``missing="live"``; a non-idempotent tool never does). Cases from bundle files are imported
      into ``app`` first.
    - ``fresh``: run ``agent`` on each case's input, everything live. The agent is registered on ``app``
      under its name, as ``app.run`` does: evaluate another version of the same name in another app.

    ``on_case`` hears each case as it finishes (for progress displays). ``thresholds`` (``pass_rate``,
    or a scorer's name) are recorded with the result; ``result.check()`` says which it misses.
    """
    return run_sync(
        lambda: evaluate_async(
            dataset, scorers, app=app, agent=agent, mode=mode, missing=missing, concurrency=concurrency,
            suite=suite, eval_id=eval_id, thresholds=thresholds, baseline_id=baseline_id, save=save,
            on_case=on_case,
        )
    )  # fmt: skip


async def evaluate_async(
    dataset: Dataset,
    scorers: Sequence[Scorer],
    *,
    app: AgentFlow | None = None,
    agent: Any = None,
    mode: Mode | None = None,
    missing: Literal["live", "missing"] = "missing",
    concurrency: int = 4,
    suite: str | None = None,
    eval_id: str | None = None,
    thresholds: dict[str, float] | None = None,
    baseline_id: str | None = None,
    save: bool = True,
    on_case: Callable[[CaseResult], None] | None = None,
) -> EvalResult:
    """``evaluate`` for async callers."""
    mode = mode or ("counterfactual" if agent is not None else "rescore")
    _check_arguments(dataset, scorers, app, agent, mode, concurrency)
    suite = suite or dataset.name
    created = app._clock.time() if app is not None else time.time()
    eval_id = eval_id or f"{suite}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(created))}-{uuid.uuid4().hex[:6]}"
    if mode == "counterfactual" and app is not None:
        _import_sources(app, dataset)
    limit = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> CaseResult:
        async with limit:
            result = await _run_case(case, scorers, app, agent, mode, missing, eval_id)
        if on_case is not None:
            on_case(result)
        return result

    cases = await asyncio.gather(*(one(case) for case in dataset.cases))
    result = EvalResult(
        id=eval_id,
        suite=suite,
        mode=mode,
        created_at=created,
        dataset=dataset.name,
        cases=tuple(cases),
        candidate=None if agent is None else describe_candidate(agent),
        baseline_id=baseline_id,
        thresholds=dict(thresholds or {}),
    )
    result.check()  # an unknown scorer name in the thresholds is an error now, not at the gate
    if app is not None and save:
        save_result(app, result)
    return result


def _check_arguments(
    dataset: Dataset, scorers: Sequence[Scorer], app: AgentFlow | None, agent: Any, mode: str, concurrency: int
) -> None:
    if mode not in _MODES:
        raise ConfigurationError(f"eval mode {mode!r}: use 'rescore', 'counterfactual' or 'fresh'")
    if mode != "rescore" and (agent is None or app is None):
        raise ConfigurationError(f"a {mode} eval runs a new version: pass agent= (what to run) and app= (where)")
    if mode == "rescore" and agent is not None:
        raise ConfigurationError("a rescore eval runs nothing: drop agent=, or choose mode='counterfactual' or 'fresh'")
    if app is None and any(isinstance(s, LLMJudge) for s in scorers):
        raise ConfigurationError("an LLM judge records its calls: pass app= to evaluate")
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    names = [s.name for s in scorers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"two scorers are named {twice[0]!r}; give one another name (name=...)")
    if not dataset.cases:
        raise ConfigurationError(f"dataset {dataset.name!r} holds no cases: nothing to evaluate")


def _import_sources(app: AgentFlow, dataset: Dataset) -> None:
    """Counterfactual runs need their source runs in ``app``'s database: import the bundles they came from."""
    present = {r.id for r in app._store.get_runs(dataset.ids)}
    for case in dataset.cases:
        if case.id in present:
            continue
        if case.bundle is None:
            raise RunNotFound(case.id)
        present.update(app.import_runs(case.bundle))


def describe_candidate(agent: Any) -> str:
    """``name@code-version`` of an agent, else the name of the workflow function."""
    version = getattr(agent, "code_version", None)
    name = getattr(agent, "name", None) or getattr(agent, "__qualname__", None) or type(agent).__name__
    if callable(version):
        return f"{name}@{version()}"
    return str(name)


async def _run_case(
    case: Case,
    scorers: Sequence[Scorer],
    app: AgentFlow | None,
    agent: Any,
    mode: str,
    missing: Literal["live", "missing"],
    eval_id: str,
) -> CaseResult:
    if mode == "rescore":
        return await score_case(case, case.reference, scorers, app)
    assert app is not None
    run_id = f"{case.id}@{eval_id}"
    try:
        _deliver_recorded_events(app, case, run_id)
        if mode == "counterfactual":
            run = await app.counterfactual_async(agent, case.id, missing=missing, run_id=run_id)
        else:
            run = await app.run_async(agent, *case.input.get("args", []), run_id=run_id, **case.input.get("kwargs", {}))
    except AgentFlowError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        return CaseResult(case.id, case.id, run_id, "error", False, (), error=f"{type(exc).__name__}: {exc}")
    return await score_case(case, trajectory_from_run(run), scorers, app)


def _deliver_recorded_events(app: AgentFlow, case: Case, run_id: str) -> None:
    """Put the events the recorded run received into the new run's inbox before it starts: a wait for
    one takes it at once (each is delivered once, in the recorded order)."""
    events = events_by_type(case.reference)
    if not events or app._store.get_run(run_id) is not None:  # a taken id: the run will be refused
        return
    from .._codec import canonical_json

    now = app._clock.time()
    for type_, payloads in events.items():
        for payload in payloads:
            app._store.send_event(run_id, type_, canonical_json(payload), now)


async def score_case(case: Case, run: Trajectory, scorers: Sequence[Scorer], app: AgentFlow | None) -> CaseResult:
    """Score one run of a case with every scorer. A scorer that raises (other than a configuration
    error, which stops the eval) gives a failed score that says what it raised."""
    scores: list[Score] = []
    for s in scorers:
        try:
            scores.append(await s.score_async(run, case, app))
        except ConfigurationError:
            raise
        except Exception as exc:
            scores.append(Score(s.name, 0.0, False, f"the scorer raised {type(exc).__name__}: {exc}"))
    return CaseResult(
        case_id=case.id,
        source_run_id=case.id,
        run_id=run.run_id,
        status=run.status,
        passed=case_passed(run.status, scores),
        scores=tuple(scores),
        path=tuple(run.path()),
        output=answer_of(run.result),
        error=run.error,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        cost=run.cost,
        latency=run.latency,
    )
