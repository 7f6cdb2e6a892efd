"""Eval suites: a dataset, an agent factory, scorers and thresholds, defined in a Python file under ``evals/``
and run by ``agentflow eval``.

    # evals/support.py
    from agentflow.evals import Dataset, Suite, no_errors, trajectory_match

    suite = Suite(
        name="support",
        dataset=Dataset.from_bundles("evals/traces/support"),   # or a function of the app: Dataset.from_runs
        agent=build_candidate,               # a factory of the version to try; None re-scores the record
        scorers=[trajectory_match("unordered"), no_errors()],
        thresholds={"pass_rate": 0.9},       # minimums for the candidate: "pass_rate" or a scorer's name
        max_regression=0.0,                  # how far the pass rate may fall below the recorded runs'
    )

Running a suite re-scores the recorded runs (the baseline), then, when it has an agent, evaluates the
candidate (counterfactually by default) and compares the two. It fails when the candidate misses a
threshold or its pass rate falls below the baseline's by more than ``max_regression``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError
from ._compare import Comparison, compare
from ._dataset import Dataset
from ._results import CaseResult, EvalResult
from ._runner import Mode, evaluate_async
from ._scorers import Scorer

if TYPE_CHECKING:
    from .._app import AgentFlow

__all__ = ["Suite", "SuiteOutcome", "load_suites"]


@dataclass
class Suite:
    """What to evaluate and how; see the module's docstring.

    ``dataset`` is a ``Dataset`` or a function of the ``AgentFlow`` that returns one (for
    ``Dataset.from_runs``). ``agent`` is a function returning the version to run (an ``Agent``, a
    ``PlanningAgent`` or a workflow function); without it the suite re-scores the recorded runs. ``mode``
    is ``counterfactual`` (default with an agent) or ``fresh``. ``context`` is a function returning a
    context manager entered around the suite's runs: a ``FakeProvider`` for an offline suite.
    ``missing`` is what a counterfactual tool call the record cannot answer gets (see ``evaluate``).
    """

    name: str
    dataset: Dataset | Callable[[AgentFlow], Dataset]
    scorers: Sequence[Scorer]
    agent: Callable[[], Any] | None = None
    mode: Mode | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    max_regression: float = 0.0
    concurrency: int = 4
    missing: Literal["live", "missing"] = "missing"
    context: Callable[[], AbstractContextManager[Any]] | None = None
    source: str | None = None  # the file it was loaded from (set by load_suites)

    def __post_init__(self) -> None:
        if not self.name or any(ch.isspace() for ch in self.name):
            raise ConfigurationError(f"a suite's name is one word (it names its evals), got {self.name!r}")
        if self.mode == "rescore" and self.agent is not None:
            raise ConfigurationError(f"suite {self.name!r}: mode 'rescore' runs nothing; drop agent= or the mode")
        if self.mode in ("counterfactual", "fresh") and self.agent is None:
            raise ConfigurationError(f"suite {self.name!r}: mode {self.mode!r} runs an agent; give agent=")
        if not self.scorers:
            raise ConfigurationError(f"suite {self.name!r} has no scorers")
        if not 0.0 <= self.max_regression <= 1.0:
            raise ConfigurationError(f"suite {self.name!r}: max_regression is a share of cases, 0..1")

    def load_dataset(self, app: AgentFlow) -> Dataset:
        return self.dataset if isinstance(self.dataset, Dataset) else self.dataset(app)

    def run(
        self,
        app: AgentFlow,
        *,
        concurrency: int | None = None,
        on_case: Callable[[CaseResult], None] | None = None,
        on_start: Callable[[str, int], None] | None = None,
    ) -> SuiteOutcome:
        """Run the suite on ``app`` (its database keeps the results); see ``run_async``."""
        from .._loop import run_sync

        return run_sync(lambda: self.run_async(app, concurrency=concurrency, on_case=on_case, on_start=on_start))

    async def run_async(
        self,
        app: AgentFlow,
        *,
        concurrency: int | None = None,
        on_case: Callable[[CaseResult], None] | None = None,
        on_start: Callable[[str, int], None] | None = None,
    ) -> SuiteOutcome:
        """Re-score the recorded runs (the baseline), evaluate the candidate when there is an agent, compare
        them, and judge the outcome. ``on_start(phase, cases)`` is told of each phase (``baseline``,
        ``candidate``) before it starts, ``on_case`` of each finished case: for progress displays."""
        dataset = self.load_dataset(app)
        limit = concurrency or self.concurrency
        with self.context() if self.context is not None else nullcontext():
            if on_start is not None:
                on_start("baseline", len(dataset))
            rescore_only = self.agent is None
            baseline = await evaluate_async(
                dataset, self.scorers, app=app, mode="rescore", suite=self.name, concurrency=limit,
                thresholds=dict(self.thresholds) if rescore_only else None, on_case=on_case,
            )  # fmt: skip
            if self.agent is None:
                return SuiteOutcome(self, baseline, None, None, baseline.check())
            if on_start is not None:
                on_start("candidate", len(dataset))
            candidate = await evaluate_async(
                dataset, self.scorers, app=app, agent=self.agent(), mode=self.mode or "counterfactual",
                missing=self.missing, suite=self.name, concurrency=limit, thresholds=dict(self.thresholds),
                baseline_id=baseline.id, on_case=on_case,
            )  # fmt: skip
        comparison = compare(baseline, candidate)
        problems = comparison.regressions(max_pass_rate_drop=self.max_regression)
        return SuiteOutcome(self, baseline, candidate, comparison, problems)


@dataclass(frozen=True)
class SuiteOutcome:
    """How a suite went: the baseline (the recorded runs re-scored), the candidate's eval and the
    comparison (None for a suite without an agent), and what failed (``problems``; [] when it passed)."""

    suite: Suite
    baseline: EvalResult
    candidate: EvalResult | None
    comparison: Comparison | None
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def result(self) -> EvalResult:
        """The eval the suite is judged on: the candidate's, else the baseline's."""
        return self.candidate or self.baseline


def load_suites(path: str | Path) -> list[Suite]:
    """The suites defined in a Python file, or in the ``*.py`` files of a folder (sorted; files whose name
    starts with ``_`` are helpers and are not loaded): every module-level ``Suite``. A file is imported
    with its folder on ``sys.path``, so suites can import helpers beside them. Two suites with one name
    are an error."""
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*.py") if not p.name.startswith("_"))
    elif target.is_file():
        files = [target]
    else:
        raise ConfigurationError(f"there is no eval suite file or folder at {target}")
    suites: list[Suite] = []
    for file in files:
        module = _import_file(file)
        seen: set[int] = set()
        for value in vars(module).values():
            if isinstance(value, Suite) and id(value) not in seen:
                seen.add(id(value))
                value.source = str(file)
                suites.append(value)
    names = [s.name for s in suites]
    for name in names:
        if names.count(name) > 1:
            where = ", ".join(str(s.source) for s in suites if s.name == name)
            raise ConfigurationError(f"two suites are named {name!r} ({where}); rename one")
    return suites


def _import_file(file: Path) -> Any:
    resolved = file.resolve()
    name = f"_agentflow_eval_{resolved.stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot load the eval suite file {file}")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module
