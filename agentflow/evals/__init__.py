"""Evals against recorded traces: what a prompt, model or code change does to the runs you already have.

    from agentflow.evals import Dataset, compare, evaluate, no_errors, output_contains, to_markdown, trajectory_match

    dataset = Dataset.from_runs(app, workflow="support")          # or Dataset.from_bundles("traces/")
    scorers = [trajectory_match("unordered"), output_contains("refund"), no_errors()]

    baseline = evaluate(dataset, scorers, app=app)                 # re-score the recorded runs: nothing runs
    candidate = evaluate(dataset, scorers, app=app, agent=new_support)   # counterfactual: recorded tools
    report = compare(baseline, candidate)                          # per case: what changed, and why
    print(to_markdown(report)); report.regressions()               # [] when nothing got worse

- ``Dataset``, ``Case``: recorded runs (input, recorded ``Trajectory``, expectations).
- Scorers (``Score``: name, value, passed, explanation): ``exact_output``, ``output_contains``,
  ``output_regex``, ``json_subset``, ``trajectory_match`` (strict, unordered, subset, superset),
  ``tool_args_match``, ``step_count``, ``latency``, ``tokens``, ``cost``, ``no_errors``, ``llm_judge``
  (its calls are recorded runs: re-scoring is reproducible and free), and ``@scorer`` for your own.
- ``evaluate`` in three modes (rescore, counterfactual, fresh); ``EvalResult``; ``save_result``,
  ``load_result``, ``list_results`` (kept in the database); ``compare`` → ``Comparison``.
- Reports: ``to_rich``, ``to_markdown``, ``to_html``.
- ``Suite`` and ``load_suites``: suites in ``evals/*.py`` that ``agentflow eval`` runs, gating CI.
"""

from ._compare import CaseComparison, Comparison, Divergence, compare
from ._dataset import Case, Dataset
from ._judge import LLMJudge, llm_judge
from ._report import Section, to_html, to_markdown, to_rich
from ._results import CaseResult, EvalResult, EvalSummary, list_results, load_result, save_result
from ._runner import Mode, evaluate, evaluate_async
from ._scorers import (
    MatchMode,
    Score,
    Scorer,
    cost,
    exact_output,
    json_subset,
    latency,
    no_errors,
    output_contains,
    output_regex,
    scorer,
    step_count,
    tokens,
    tool_args_match,
    trajectory_match,
)
from ._suite import Suite, SuiteOutcome, load_suites
from ._trajectory import ModelTurn, ToolUse, Trajectory, trajectory_from_run

__all__ = [
    "Case",
    "CaseComparison",
    "CaseResult",
    "Comparison",
    "Dataset",
    "Divergence",
    "EvalResult",
    "EvalSummary",
    "LLMJudge",
    "MatchMode",
    "Mode",
    "ModelTurn",
    "Score",
    "Scorer",
    "Section",
    "Suite",
    "SuiteOutcome",
    "ToolUse",
    "Trajectory",
    "compare",
    "cost",
    "evaluate",
    "evaluate_async",
    "exact_output",
    "json_subset",
    "latency",
    "list_results",
    "llm_judge",
    "load_result",
    "load_suites",
    "no_errors",
    "output_contains",
    "output_regex",
    "save_result",
    "scorer",
    "step_count",
    "to_html",
    "to_markdown",
    "to_rich",
    "tokens",
    "tool_args_match",
    "trajectory_from_run",
    "trajectory_match",
]
