"""Scorers: pure functions over a run's trajectory that give a named ``Score`` with an explanation.

A scorer is called with the ``Trajectory`` under evaluation and the ``Case`` it belongs to. Where a scorer
needs something to compare with, it takes it from its own arguments, else from the case's expectations
(``case.expected[...]``), else from the case's recorded trajectory: so ``trajectory_match()`` with no
arguments asks "did the new version call the tools the recorded run called?".

A score has a ``value`` (0..1, or a number such as tokens) and a verdict ``passed``: True or False, or None
for a measurement with no limit (tokens, cost, latency without ``max_...``), which never fails a case.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from ..errors import ConfigurationError
from ._trajectory import ToolUse, Trajectory

if TYPE_CHECKING:
    from .._app import AgentFlow
    from ._dataset import Case

__all__ = [
    "MatchMode",
    "Score",
    "Scorer",
    "cost",
    "exact_output",
    "json_subset",
    "latency",
    "no_errors",
    "output_contains",
    "output_regex",
    "scorer",
    "step_count",
    "tokens",
    "tool_args_match",
    "trajectory_match",
]

MatchMode = Literal["strict", "unordered", "subset", "superset"]
_UNSET: Any = object()


@dataclass(frozen=True)
class Score:
    """What a scorer says about one run: ``value`` (0..1 or a number), ``passed`` (None: a measurement
    without a verdict) and a one-line ``explanation`` a person can act on."""

    name: str
    value: float
    passed: bool | None
    explanation: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "passed": self.passed, "explanation": self.explanation}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Score:
        passed = data.get("passed")
        return cls(str(data["name"]), float(data["value"]), None if passed is None else bool(passed),
                   str(data.get("explanation") or ""))  # fmt: skip


class Scorer:
    """A named scoring function. Call it as ``scorer(trajectory, case)``; evals call ``score_async``.

    Subclass it and implement ``score`` for a scorer with state, or use the ``@scorer`` decorator on a
    plain function. ``score_async`` exists for scorers that must record something (the LLM judge).
    """

    name: str = "scorer"

    def score(self, run: Trajectory, case: Case | None = None) -> Score:
        raise NotImplementedError

    async def score_async(self, run: Trajectory, case: Case | None, app: AgentFlow | None) -> Score:
        return self.score(run, case)

    def __call__(self, run: Trajectory, case: Case | None = None) -> Score:
        return self.score(run, case)

    def __repr__(self) -> str:
        return f"<scorer {self.name}>"


class _FunctionScorer(Scorer):
    def __init__(self, name: str, fn: Callable[[Trajectory, Case | None], Score]) -> None:
        self.name = name
        self._fn = fn

    def score(self, run: Trajectory, case: Case | None = None) -> Score:
        return self._fn(run, case)


# -- custom scorers ---------------------------------------------------------------------------------------

ScoreLike = Score | bool | int | float | tuple[Any, str]


@overload
def scorer(fn: Callable[..., ScoreLike], /) -> Scorer: ...


@overload
def scorer(
    *, name: str | None = None, threshold: float | None = None
) -> Callable[[Callable[..., ScoreLike]], Scorer]: ...


def scorer(
    fn: Callable[..., ScoreLike] | None = None, /, *, name: str | None = None, threshold: float | None = None
) -> Scorer | Callable[[Callable[..., ScoreLike]], Scorer]:
    """Turn a function into a scorer: ``@scorer`` or ``@scorer(name=..., threshold=...)``.

    The function takes ``(run)`` or ``(run, case)`` (a ``Trajectory`` and its ``Case``) and returns a
    ``Score``, a bool (passed or not), a number, or ``(number or bool, explanation)``. A number passes when
    it reaches ``threshold``; without one it is a measurement that never fails a case.

        @scorer(threshold=0.5)
        def polite(run):
            return (1.0 if "sorry" in str(run.output).lower() else 0.0), "apologises"
    """

    def wrap(f: Callable[..., ScoreLike]) -> Scorer:
        label: str = name or str(getattr(f, "__name__", "scorer"))
        try:
            takes_case = len(inspect.signature(f).parameters) >= 2
        except (TypeError, ValueError):
            takes_case = True

        def run_it(run: Trajectory, case: Case | None) -> Score:
            result = f(run, case) if takes_case else f(run)
            return _as_score(label, result, threshold)

        made = _FunctionScorer(label, run_it)
        made.__doc__ = f.__doc__
        return made

    return wrap if fn is None else wrap(fn)


def _as_score(name: str, result: Any, threshold: float | None) -> Score:
    explanation = ""
    if isinstance(result, Score):
        return result if result.name == name else Score(name, result.value, result.passed, result.explanation)
    if isinstance(result, tuple) and len(result) == 2:
        result, explanation = result[0], str(result[1])
    if isinstance(result, bool):
        return Score(name, 1.0 if result else 0.0, result, explanation)
    if isinstance(result, (int, float)):
        value = float(result)
        return Score(name, value, None if threshold is None else value >= threshold, explanation)
    raise ConfigurationError(
        f"scorer {name!r} returned {type(result).__name__}; return a Score, a bool, a number, or (number, explanation)"
    )


# -- helpers ------------------------------------------------------------------------------------------------


def _expected(explicit: Any, case: Case | None, key: str, recorded: Callable[[Trajectory], Any] | None,
              scorer_name: str) -> tuple[Any, str]:  # fmt: skip
    """What to compare with, and where it came from: the scorer's argument, the case's expectation, or
    the case's recorded run."""
    if explicit is not _UNSET:
        return explicit, "given"
    if case is not None and key in case.expected:
        return case.expected[key], "expected"
    if case is not None and recorded is not None:
        return recorded(case.reference), "recorded"
    raise ConfigurationError(
        f"scorer {scorer_name!r} has nothing to compare with: pass it the expected value, or give the case "
        f"an expectation {key!r}" + ("" if recorded is None else ", or score a case that has a recorded run")
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _short(value: Any, limit: int = 80) -> str:
    text = _text(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ratio_verdict(
    value: float, limit: float | None, ratio: float | None, case: Case | None, recorded: Callable[[Trajectory], float]
) -> tuple[bool | None, str]:
    """A measurement's verdict against an absolute limit and/or a multiple of the recorded run's value."""
    problems: list[str] = []
    notes: list[str] = []
    if limit is not None:
        (problems if value > limit else notes).append(f"limit {limit:g}")
    if ratio is not None and case is not None:
        reference = recorded(case.reference)
        bound = reference * ratio
        where = f"{ratio:g}x the recorded {reference:g}"
        (problems if value > bound else notes).append(where)
    if limit is None and (ratio is None or case is None):
        return None, ""
    if problems:
        return False, "over " + " and ".join(problems)
    return True, "within " + " and ".join(notes)


# -- final output -----------------------------------------------------------------------------------------


def exact_output(expected: Any = _UNSET, *, strip: bool = True, name: str = "exact_output") -> Scorer:
    """1 when the run's answer equals ``expected`` (default: the case's ``output`` expectation, else the
    recorded run's answer). ``strip`` ignores leading and trailing whitespace of text answers."""

    def score(run: Trajectory, case: Case | None) -> Score:
        want, source = _expected(expected, case, "output", lambda t: t.output, name)
        got = run.output
        if strip and isinstance(want, str) and isinstance(got, str):
            want, got = want.strip(), got.strip()
        if got == want:
            return Score(name, 1.0, True, f"the answer equals the {source} one")
        return Score(name, 0.0, False, f"the answer {_short(got)!r} is not the {source} {_short(want)!r}")

    return _FunctionScorer(name, score)


def output_contains(*needles: str, ignore_case: bool = False, name: str = "output_contains") -> Scorer:
    """The share of ``needles`` found in the answer (default: the case's ``contains`` expectation, a
    string or a list); passes when all are there."""

    def score(run: Trajectory, case: Case | None) -> Score:
        wanted: Any = list(needles) if needles else _expected(_UNSET, case, "contains", None, name)[0]
        items = [wanted] if isinstance(wanted, str) else [str(w) for w in wanted]
        text = _text(run.output) if run.output is not None else ""
        haystack = text.lower() if ignore_case else text
        missing = [n for n in items if (n.lower() if ignore_case else n) not in haystack]
        value = 1.0 if not items else (len(items) - len(missing)) / len(items)
        if missing:
            return Score(name, value, False, f"the answer lacks {', '.join(repr(m) for m in missing)}")
        return Score(name, value, True, f"the answer contains {', '.join(repr(n) for n in items)}")

    return _FunctionScorer(name, score)


def output_regex(pattern: str | None = None, *, flags: int = 0, name: str = "output_regex") -> Scorer:
    """1 when ``pattern`` (default: the case's ``regex`` expectation) matches somewhere in the answer."""

    def score(run: Trajectory, case: Case | None) -> Score:
        wanted = pattern if pattern is not None else str(_expected(_UNSET, case, "regex", None, name)[0])
        text = _text(run.output) if run.output is not None else ""
        found = re.search(wanted, text, flags)
        if found:
            return Score(name, 1.0, True, f"/{wanted}/ matches {found.group(0)!r}")
        return Score(name, 0.0, False, f"/{wanted}/ does not match the answer {_short(text)!r}")

    return _FunctionScorer(name, score)


def json_subset(expected: Any = _UNSET, *, name: str = "json_subset") -> Scorer:
    """The share of ``expected``'s values (default: the case's ``json`` expectation, else the recorded
    answer) found at the same place in the answer, read as JSON when it is text. Objects may hold more
    keys than expected; lists must have the expected length. Passes when every value is there."""

    def score(run: Trajectory, case: Case | None) -> Score:
        want, source = _expected(expected, case, "json", lambda t: _as_json(t.output), name)
        got = _as_json(run.output)
        total, misses = _subset_diff(_as_json(want), got, "$")
        if not misses:
            return Score(name, 1.0, True, f"the answer holds all {total} {source} value(s)")
        path, expected_value, got_value = misses[0]
        more = f" (and {len(misses) - 1} more)" if len(misses) > 1 else ""
        return Score(name, (total - len(misses)) / max(total, 1), False,
                     f"{path}: expected {_value(expected_value)}, got {_value(got_value)}{more}")  # fmt: skip

    return _FunctionScorer(name, score)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class _Said(str):
    """A description standing in for a value in an explanation (shown as it is, not as JSON)."""


_MISSING_VALUE = _Said("nothing")


def _value(value: Any) -> str:
    """A value as an explanation shows it: JSON (strings in quotes), shortened."""
    return str(value) if isinstance(value, _Said) else _short(json.dumps(value, ensure_ascii=False, default=str), 40)


def _subset_diff(want: Any, got: Any, path: str) -> tuple[int, list[tuple[str, Any, Any]]]:
    """(how many leaf values ``want`` holds, the ones ``got`` lacks or differs on as (path, want, got))."""
    if isinstance(want, dict):
        total, misses = 0, []
        for key, value in want.items():
            sub = f"{path}.{key}"
            if not isinstance(got, dict) or key not in got:
                count, _ = _subset_diff(value, None, sub)
                total += count
                misses.append((sub, value, _MISSING_VALUE))
                continue
            count, found = _subset_diff(value, got[key], sub)
            total, misses = total + count, misses + found
        return max(total, 1) if not want else total, misses
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            count = sum(_subset_diff(item, None, path)[0] for item in want) or 1
            size = len(got) if isinstance(got, list) else type(got).__name__
            return count, [(path, _Said(f"a list of {len(want)}"), _Said(f"{size}"))]
        total, misses = 0, []
        for index, (w, g) in enumerate(zip(want, got, strict=True)):
            count, found = _subset_diff(w, g, f"{path}[{index}]")
            total, misses = total + count, misses + found
        return max(total, 1) if not want else total, misses
    return 1, ([] if want == got else [(path, want, got)])


# -- trajectory ---------------------------------------------------------------------------------------------


def _call_items(calls: Iterable[Any], with_args: bool) -> list[Any]:
    """Comparable items for tool calls given as ``ToolUse``, names, ``(name, args)`` or ``{"name", ...}``."""
    items: list[Any] = []
    for call in calls:
        if isinstance(call, ToolUse):
            call_name, args = call.name, call.arguments
        elif isinstance(call, str):
            call_name, args = call, None
        elif isinstance(call, Mapping):
            call_name, args = str(call["name"]), call.get("arguments")
        else:
            call_name, args = str(call[0]), (call[1] if len(call) > 1 else None)
        if with_args:
            if args is None:
                raise ConfigurationError(f"trajectory_match(args=True) needs the expected arguments of {call_name!r}")
            items.append((call_name, json.dumps(args, sort_keys=True, default=str)))
        else:
            items.append(call_name)
    return items


def _label(item: Any) -> str:
    return item if isinstance(item, str) else f"{item[0]}({item[1]})"


def _counts(counter: Counter[Any]) -> str:
    return ", ".join(_label(item) + (f" x{n}" if n > 1 else "") for item, n in counter.items())


def trajectory_match(
    mode: MatchMode = "strict", expected: Sequence[Any] | None = None, *, args: bool = False, name: str | None = None
) -> Scorer:
    """1 when the run's tool calls match the expected ones (default: the case's ``tool_calls``
    expectation, else the calls the recorded run made), compared by name, or by name and arguments with
    ``args=True``.

    ``strict``: the same calls in the same order. ``unordered``: the same calls, any order. ``subset``: the
    run made no call beyond the expected ones. ``superset``: the run made at least the expected calls.
    """
    if mode not in ("strict", "unordered", "subset", "superset"):
        raise ConfigurationError(f"trajectory_match mode {mode!r}: use strict, unordered, subset or superset")
    label = name or f"trajectory_{mode}"

    def score(run: Trajectory, case: Case | None) -> Score:
        want_calls, source = _expected(_UNSET if expected is None else expected, case, "tool_calls",
                                       lambda t: t.tool_calls, label)  # fmt: skip
        want = _call_items(want_calls, args)
        got = _call_items(run.tool_calls, args)
        problem = _mismatch(mode, want, got)
        if problem is None:
            return Score(label, 1.0, True, f"{mode}: {len(got)} call(s) match the {source} {len(want)}")
        return Score(label, 0.0, False, f"{mode} against the {source} calls: {problem}")

    return _FunctionScorer(label, score)


def _mismatch(mode: MatchMode, want: list[Any], got: list[Any]) -> str | None:
    if mode == "strict":
        if want == got:
            return None
        for index in range(max(len(want), len(got))):
            w = _label(want[index]) if index < len(want) else "no call"
            g = _label(got[index]) if index < len(got) else "no call"
            if w != g:
                return f"call {index + 1} is {g}, expected {w}"
    missing = Counter(want) - Counter(got)
    extra = Counter(got) - Counter(want)
    if mode == "unordered" and (missing or extra):
        parts = [f"missing {_counts(missing)}"] if missing else []
        parts += [f"unexpected {_counts(extra)}"] if extra else []
        return "; ".join(parts)
    if mode == "subset" and extra:
        return f"calls beyond the expected ones: {_counts(extra)}"
    if mode == "superset" and missing:
        return f"expected calls not made: {_counts(missing)}"
    return None


def tool_args_match(
    tool: str | None = None, expected: Any = _UNSET, *, exact: bool = False, name: str | None = None
) -> Scorer:
    """The share of expected tool calls made with the expected arguments: each expected call of a tool is
    paired with the run's call of that tool in the same position (its first, second... call).

    ``tool`` limits it to one tool. ``expected`` is a dict of arguments (for every call of ``tool``), a list
    of ``(name, arguments)`` / ``{"name", "arguments"}`` calls, or by default the case's ``tool_args``
    expectation, else the recorded run's calls. The run's arguments may hold more keys than expected
    unless ``exact``. Passes when every expected call matches.
    """
    label = name or (f"tool_args_{tool}" if tool else "tool_args")

    def score(run: Trajectory, case: Case | None) -> Score:
        raw, source = _expected(expected, case, "tool_args", lambda t: t.tool_calls, label)
        want = _expected_calls(raw, tool)
        got: dict[str, list[dict[str, Any]]] = {}
        for call in run.tool_calls:
            if tool is None or call.name == tool:
                got.setdefault(call.name, []).append(call.arguments)
        if not want:
            made = sum(len(v) for v in got.values())
            if made == 0:
                return Score(label, 1.0, True, f"no {tool or 'tool'} call expected ({source}) and none made")
            return Score(label, 0.0, False, f"no {tool or 'tool'} call expected ({source}), {made} made")
        seen: Counter[str] = Counter()
        problems = []
        for call_name, args in want:
            index = seen[call_name]
            seen[call_name] += 1
            calls = got.get(call_name, [])
            if index >= len(calls):
                problems.append(f"{call_name} #{index + 1}: not called")
                continue
            actual = calls[index]
            _, misses = _subset_diff(args, actual, call_name)
            if exact and set(actual) != set(args):
                misses.append((f"{call_name} keys", sorted(args), sorted(actual)))  # shown as JSON lists
            if misses:
                path, w, g = misses[0]
                problems.append(f"{call_name} #{index + 1}: {path.removeprefix(call_name + '.')} expected "
                                f"{_value(w)}, got {_value(g)}")  # fmt: skip
        matched = len(want) - len(problems)
        if not problems:
            return Score(label, 1.0, True, f"all {len(want)} call(s) have the {source} arguments")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Score(label, matched / len(want), False, problems[0] + more)

    return _FunctionScorer(label, score)


def _expected_calls(raw: Any, tool: str | None) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(raw, Mapping) and not ({"name", "arguments"} <= set(raw)):
        if tool is None:
            raise ConfigurationError("tool_args_match: a dict of arguments needs tool= (the tool they are for)")
        return [(tool, dict(raw))]
    calls: list[tuple[str, dict[str, Any]]] = []
    for call in [raw] if isinstance(raw, Mapping) else raw:
        if isinstance(call, ToolUse):
            item = (call.name, call.arguments)
        elif isinstance(call, Mapping):
            item = (str(call["name"]), dict(call.get("arguments") or {}))
        else:
            item = (str(call[0]), dict(call[1]))
        if tool is None or item[0] == tool:
            calls.append(item)
    return calls


# -- effort and health ----------------------------------------------------------------------------------------


def step_count(
    max_steps: int | None = None, *, max_ratio: float | None = None, count: Literal["actions", "all"] = "actions",
    name: str = "steps",
) -> Scorer:  # fmt: skip
    """The run's steps: model turns plus tool calls (``count="actions"``), or every recorded step
    (``"all"``, checkpoints included). Passes within ``max_steps`` and/or ``max_ratio`` times the recorded
    run's count; without either it is a measurement."""

    def measure(t: Trajectory) -> float:
        return float(len(t.turns) + len(t.tool_calls) if count == "actions" else t.step_count)

    def score(run: Trajectory, case: Case | None) -> Score:
        value = measure(run)
        passed, why = _ratio_verdict(value, max_steps, max_ratio, case, measure)
        return Score(name, value, passed, f"{value:g} {'actions' if count == 'actions' else 'steps'}"
                     + (f", {why}" if why else ""))  # fmt: skip

    return _FunctionScorer(name, score)


def latency(max_seconds: float | None = None, *, max_ratio: float | None = None, name: str = "latency") -> Scorer:
    """Seconds from the run's start to its end. Passes within ``max_seconds`` and/or ``max_ratio`` times
    the recorded run's; without either it is a measurement."""

    def score(run: Trajectory, case: Case | None) -> Score:
        passed, why = _ratio_verdict(run.latency, max_seconds, max_ratio, case, lambda t: t.latency)
        return Score(name, run.latency, passed, f"{run.latency:.3f} s" + (f", {why}" if why else ""))

    return _FunctionScorer(name, score)


def tokens(max_tokens: int | None = None, *, max_ratio: float | None = None, name: str = "tokens") -> Scorer:
    """Prompt plus completion tokens the run used. Passes within ``max_tokens`` and/or ``max_ratio`` times
    the recorded run's; without either it is a measurement."""

    def score(run: Trajectory, case: Case | None) -> Score:
        value = float(run.total_tokens)
        passed, why = _ratio_verdict(value, max_tokens, max_ratio, case, lambda t: float(t.total_tokens))
        detail = f"{run.prompt_tokens} prompt + {run.completion_tokens} completion"
        return Score(name, value, passed, detail + (f", {why}" if why else ""))

    return _FunctionScorer(name, score)


def cost(max_cost: float | None = None, *, max_ratio: float | None = None, name: str = "cost") -> Scorer:
    """What the run cost in USD (litellm's price map). Passes within ``max_cost`` and/or ``max_ratio``
    times the recorded run's; without either it is a measurement."""

    def score(run: Trajectory, case: Case | None) -> Score:
        passed, why = _ratio_verdict(run.cost, max_cost, max_ratio, case, lambda t: t.cost)
        return Score(name, run.cost, passed, f"${run.cost:.6f}" + (f", {why}" if why else ""))

    return _FunctionScorer(name, score)


def no_errors(*, tool_errors: bool = True, name: str = "no_errors") -> Scorer:
    """1 when the run completed and no step of it failed. A failed tool call counts too, even one the
    agent got past; ``tool_errors=False`` leaves those out (a lookup of an unknown order that the agent
    answers well is not an error then)."""

    def score(run: Trajectory, case: Case | None) -> Score:
        problems = list(run.errors)
        if not tool_errors:
            failed_tools = tuple(f"{c.key}: " for c in run.tool_calls if not c.ok)
            problems = [p for p in problems if not p.startswith(failed_tools)]
        if run.status == "completed" and not problems:
            return Score(name, 1.0, True, "completed without errors")
        if run.status == "waiting":
            return Score(name, 0.0, False, f"the run is waiting for {run.waiting_for or 'its wake-up time'}")
        problems = problems or [f"the run is {run.status}"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Score(name, 0.0, False, _short(problems[0], 160) + more)

    return _FunctionScorer(name, score)
