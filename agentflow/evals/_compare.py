"""Comparing two eval results, a baseline and a candidate: per case and in aggregate.

Cases are paired by id. For each: did it pass before and now, how each score moved, what it cost and how
many tokens it took more or less, and where its trajectory first went another way (the first model turn or
tool call that differs). In aggregate: pass rates, mean scores, totals. ``regressions`` says, in sentences,
how the candidate is worse past the allowed margins: the gate CI uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ._results import CaseResult, EvalResult

__all__ = ["CaseComparison", "Comparison", "Divergence", "compare", "describe_event"]

Change = Literal["fixed", "regressed", "still passing", "still failing", "new", "removed"]


@dataclass(frozen=True)
class Divergence:
    """Where two trajectories first differ: the position (0-based) and the event on each side there
    (None when that side had ended)."""

    index: int
    baseline: dict[str, Any] | None
    candidate: dict[str, Any] | None

    def describe(self) -> str:
        """One sentence: ``step 3: baseline called issue_refund(...); candidate answered "..."``."""
        return (
            f"step {self.index + 1}: baseline {describe_event(self.baseline)}; "
            f"candidate {describe_event(self.candidate)}"
        )


def _comparable(event: dict[str, Any]) -> Any:
    if event.get("kind") == "model":
        return ("model", event.get("text"), json.dumps(event.get("calls") or [], sort_keys=True, default=str))
    return ("tool", event.get("name"), json.dumps(event.get("arguments") or {}, sort_keys=True, default=str),
            bool(event.get("ok", True)))  # fmt: skip


def first_divergence(baseline: Any, candidate: Any) -> Divergence | None:
    """The first position where two trajectories (lists of path events) differ, or None if they agree."""
    a, b = list(baseline), list(candidate)
    for index in range(max(len(a), len(b))):
        left = a[index] if index < len(a) else None
        right = b[index] if index < len(b) else None
        if left is None or right is None or _comparable(left) != _comparable(right):
            return Divergence(index, left, right)
    return None


def _args(arguments: Any) -> str:
    if not isinstance(arguments, dict):
        return ""
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(arguments.items()))


def _clip(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_event(event: dict[str, Any] | None) -> str:
    """A trajectory event in words: ``asked for lookup_order(order_id="A-1")``, ``answered "..."``,
    ``called lookup_order(...) -> error: ...``, ``ended``."""
    if event is None:
        return "ended"
    if event.get("kind") == "model":
        calls = event.get("calls") or []
        if calls:
            return "asked for " + ", ".join(f"{c.get('name')}({_args(c.get('arguments'))})" for c in calls)
        return f'answered "{_clip(str(event.get("text") or ""))}"'
    call = f"called {event.get('name')}({_args(event.get('arguments'))})"
    if event.get("ok", True):
        return call
    return f"{call} -> error: {_clip(str(event.get('error') or ''), 60)}"


@dataclass(frozen=True)
class CaseComparison:
    """One case in both evals (either side None when the case is in one eval only)."""

    case_id: str
    baseline: CaseResult | None
    candidate: CaseResult | None

    @property
    def change(self) -> Change:
        if self.baseline is None:
            return "new"
        if self.candidate is None:
            return "removed"
        if self.baseline.passed and not self.candidate.passed:
            return "regressed"
        if not self.baseline.passed and self.candidate.passed:
            return "fixed"
        return "still passing" if self.candidate.passed else "still failing"

    @property
    def divergence(self) -> Divergence | None:
        """Where the candidate's trajectory first differs from the baseline's."""
        if self.baseline is None or self.candidate is None:
            return None
        return first_divergence(self.baseline.path, self.candidate.path)

    @property
    def changed(self) -> bool:
        """Anything differs: the verdict, a score's value, the answer or the trajectory."""
        if self.baseline is None or self.candidate is None:
            return True
        return (
            self.change in ("fixed", "regressed")
            or any(d not in (None, 0.0) for d in self.score_deltas(measurements=False).values())
            or self.baseline.output != self.candidate.output
            or self.divergence is not None
        )

    def score_deltas(self, *, measurements: bool = True) -> dict[str, float | None]:
        """Candidate minus baseline value, per scorer either side has (None when one side lacks it).
        ``measurements=False`` leaves out scorers that gave neither side a verdict (latency without a
        limit differs on every run: it is not a change of behaviour)."""
        if self.baseline is None or self.candidate is None:
            return {}
        names = dict.fromkeys([s.name for s in self.baseline.scores] + [s.name for s in self.candidate.scores])
        out: dict[str, float | None] = {}
        for name in names:
            a, b = self.baseline.score(name), self.candidate.score(name)
            if not measurements and all(x is None or x.passed is None for x in (a, b)):
                continue
            out[name] = None if a is None or b is None else b.value - a.value
        return out

    @property
    def token_delta(self) -> int:
        return (self.candidate.total_tokens if self.candidate else 0) - (
            self.baseline.total_tokens if self.baseline else 0
        )

    @property
    def cost_delta(self) -> float:
        return (self.candidate.cost if self.candidate else 0.0) - (self.baseline.cost if self.baseline else 0.0)

    def _failed_before(self, scorer: str) -> bool:
        before = None if self.baseline is None else self.baseline.score(scorer)
        return before is not None and before.passed is False

    def why(self) -> str:
        """What changed, in a sentence: the candidate's failing scores' explanations (or its error), and the
        first divergence."""
        parts: list[str] = []
        if self.candidate is not None:
            if self.candidate.status == "error":
                parts.append(f"no run: {self.candidate.error}")
            newly = [s for s in self.candidate.failures if not self._failed_before(s.name)]
            parts.extend(f"{s.name}: {s.explanation}" for s in newly[:2])
        if self.change == "fixed" and self.baseline is not None:
            parts.extend(f"{s.name} now passes (was: {s.explanation})" for s in self.baseline.failures[:2])
        divergence = self.divergence
        if divergence is not None:
            parts.append(divergence.describe())
        elif self.baseline is not None and self.candidate is not None and self.baseline.output != self.candidate.output:
            parts.append("same trajectory, another answer")
        return "; ".join(parts)


@dataclass(frozen=True, repr=False)
class Comparison:
    """A baseline eval and a candidate eval, case by case and in aggregate."""

    baseline: EvalResult
    candidate: EvalResult
    cases: tuple[CaseComparison, ...]

    def __repr__(self) -> str:
        return (f"<Comparison {self.baseline.id} -> {self.candidate.id}: {len(self.changed)} of {len(self.cases)} "
                f"cases changed, {len(self.of('regressed'))} regressed>")  # fmt: skip

    @property
    def pass_rate_delta(self) -> float:
        return self.candidate.pass_rate - self.baseline.pass_rate

    @property
    def token_delta(self) -> int:
        return self.candidate.total_tokens - self.baseline.total_tokens

    @property
    def cost_delta(self) -> float:
        return self.candidate.cost - self.baseline.cost

    @property
    def changed(self) -> list[CaseComparison]:
        """The cases in which anything differs."""
        return [c for c in self.cases if c.changed]

    def of(self, change: Change) -> list[CaseComparison]:
        return [c for c in self.cases if c.change == change]

    def scorer_deltas(self) -> dict[str, dict[str, float | None]]:
        """Per scorer: baseline and candidate ``mean`` and ``pass_rate``, and their deltas."""
        names = dict.fromkeys(self.baseline.scorer_names + self.candidate.scorer_names)
        out: dict[str, dict[str, float | None]] = {}
        for name in names:
            row: dict[str, float | None] = {}
            for metric, getter in (("mean", EvalResult.mean), ("pass_rate", EvalResult.pass_rate_of)):
                a, b = getter(self.baseline, name), getter(self.candidate, name)
                row[f"baseline_{metric}"], row[f"candidate_{metric}"] = a, b
                row[f"{metric}_delta"] = None if a is None or b is None else b - a
            out[name] = row
        return out

    def regressions(self, *, max_pass_rate_drop: float = 0.0, max_score_drop: float | None = None) -> list[str]:
        """How the candidate is worse than the baseline past the margins, in sentences ([] when it is not).

        The candidate's pass rate may fall by at most ``max_pass_rate_drop`` (0.05: five points); with
        ``max_score_drop``, no scorer's pass rate may fall by more (measurements have none). The
        candidate's own thresholds (``EvalResult.check``) count too.
        """
        problems = []
        if self.pass_rate_delta < -max_pass_rate_drop - 1e-9:
            problems.append(
                f"the pass rate fell from {self.baseline.pass_rate:.0%} to {self.candidate.pass_rate:.0%} "
                f"(allowed drop: {max_pass_rate_drop:.0%}); regressed: "
                + ", ".join(c.case_id for c in self.of("regressed"))
            )
        if max_score_drop is not None:
            for name, row in self.scorer_deltas().items():
                delta = row["pass_rate_delta"]
                if delta is not None and delta < -max_score_drop - 1e-9:
                    problems.append(f"{name}: pass rate fell by {-delta:.0%} (allowed: {max_score_drop:.0%})")
        problems.extend(self.candidate.check())
        return problems


def compare(baseline: EvalResult, candidate: EvalResult) -> Comparison:
    """Pair the two evals' cases by id (baseline order, then the candidate's new cases)."""
    theirs = {c.case_id: c for c in candidate.cases}
    ours = {c.case_id: c for c in baseline.cases}
    pairs = [CaseComparison(c.case_id, c, theirs.get(c.case_id)) for c in baseline.cases]
    pairs += [CaseComparison(c.case_id, None, c) for c in candidate.cases if c.case_id not in ours]
    return Comparison(baseline, candidate, tuple(pairs))
