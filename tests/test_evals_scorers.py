"""The eval scorers: each gives the right value, verdict and explanation, and each trajectory mode catches the
mismatch it is for. Trajectories are built by hand here; tests/test_evals.py scores real recorded runs."""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import ConfigurationError
from agentflow.evals import (
    Case,
    Score,
    ToolUse,
    Trajectory,
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

Call = tuple[str, dict[str, Any]]


def trajectory(
    output: Any = "Refunded $24.50 for order A-1002.",
    calls: list[Call] | None = None,
    *,
    status: str = "completed",
    failed: dict[int, str] | None = None,
    usage: tuple[int, int] = (100, 20),
    spent: float = 0.001,
    seconds: float = 2.0,
    turns: int = 2,
) -> Trajectory:
    """A trajectory with these tool calls (``failed``: call index -> error)."""
    calls = (
        [("lookup_order", {"order_id": "A-1002"}), ("issue_refund", {"order_id": "A-1002", "amount": 24.5})]
        if calls is None
        else calls
    )
    failed = failed or {}
    counts: dict[str, int] = {}
    uses = []
    for i, (name, args) in enumerate(calls):
        n = counts[name] = counts.get(name, -1) + 1
        uses.append(ToolUse(f"{name}#{n}", name, args, None if i in failed else {"ok": True}, failed.get(i)))
    errors = tuple(f"{u.key}: {u.error}" for u in uses if u.error is not None)
    return Trajectory(
        run_id="r", workflow="support", status=status, input={"args": ["refund please"], "kwargs": {}},
        output=output, result={"output": output, "turns": turns}, error=None, turns=(), tool_calls=tuple(uses),
        errors=errors, step_count=turns + len(uses) + turns, prompt_tokens=usage[0], completion_tokens=usage[1],
        cost=spent, latency=seconds,
    )  # fmt: skip


def case(reference: Trajectory | None = None, **expected: Any) -> Case:
    ref = reference or trajectory()
    return Case(id="c1", input=ref.input, reference=ref, expected=expected)


# -- final output ---------------------------------------------------------------------------------------------


def test_exact_output_compares_with_the_given_the_expected_or_the_recorded_answer() -> None:
    run = trajectory("Refunded.")
    assert exact_output("Refunded.")(run) == Score("exact_output", 1.0, True, "the answer equals the given one")
    assert exact_output()(run, case(trajectory(" Refunded.\n"))).passed  # the recorded one, stripped
    missed = exact_output()(run, case(output="Sorry."))
    assert (missed.value, missed.passed) == (0.0, False)
    assert missed.explanation == "the answer 'Refunded.' is not the expected 'Sorry.'"
    assert not exact_output(strip=False)(run, case(trajectory(" Refunded."))).passed


def test_output_contains_scores_the_share_of_needles_found() -> None:
    run = trajectory("Refunded $24.50 for order A-1002.")
    half = output_contains("A-1002", "sorry")(run)
    assert (half.value, half.passed) == (0.5, False) and half.explanation == "the answer lacks 'sorry'"
    assert output_contains("REFUNDED", ignore_case=True)(run).passed
    assert output_contains()(run, case(contains=["A-1002", "$24.50"])).passed  # from the case's expectation
    assert not output_contains()(run, case(contains="kettle")).passed
    with pytest.raises(ConfigurationError, match="nothing to compare with"):
        output_contains()(run, case())


def test_output_regex_matches_anywhere_in_the_answer() -> None:
    run = trajectory("Refunded $24.50 for order A-1002.")
    found = output_regex(r"A-\d{4}")(run)
    assert found.passed and found.explanation == r"/A-\d{4}/ matches 'A-1002'"
    assert not output_regex(r"R-\d{4}")(run).passed
    assert output_regex()(run, case(regex=r"\$\d+\.\d\d")).passed


def test_json_subset_accepts_extra_keys_and_names_the_first_difference() -> None:
    run = trajectory('{"refund": {"amount": 24.5, "order": "A-1002", "id": "R-1"}, "items": [1, 2]}')
    assert json_subset({"refund": {"amount": 24.5}, "items": [1, 2]})(run).passed
    wrong = json_subset({"refund": {"amount": 39.0, "order": "A-1002"}, "missing": True})(run)
    assert wrong.value == pytest.approx(1 / 3) and not wrong.passed
    assert wrong.explanation == "$.refund.amount: expected 39.0, got 24.5 (and 1 more)"
    short = json_subset({"items": [1, 2, 3]})(run)
    assert not short.passed and short.explanation == "$.items: expected a list of 3, got 2"
    assert json_subset()(trajectory({"a": 1, "b": 2}), case(trajectory({"a": 1}))).passed  # the recorded answer


# -- trajectory -----------------------------------------------------------------------------------------------

LOOKUP: Call = ("lookup_order", {"order_id": "A-1002"})
REFUND: Call = ("issue_refund", {"order_id": "A-1002", "amount": 24.5})
ESCALATE: Call = ("escalate", {"reason": "damaged"})


@pytest.mark.parametrize(
    ("mode", "made", "passed", "why"),
    [
        ("strict", [LOOKUP, REFUND], True, ""),
        ("strict", [REFUND, LOOKUP], False, "call 1 is issue_refund, expected lookup_order"),  # order matters
        ("strict", [LOOKUP], False, "call 2 is no call, expected issue_refund"),
        ("unordered", [REFUND, LOOKUP], True, ""),
        ("unordered", [LOOKUP, LOOKUP], False, "missing issue_refund; unexpected lookup_order"),
        ("unordered", [LOOKUP, REFUND, ESCALATE], False, "unexpected escalate"),
        ("subset", [LOOKUP], True, ""),  # fewer calls: still within the expected ones
        ("subset", [LOOKUP, ESCALATE], False, "calls beyond the expected ones: escalate"),
        ("superset", [LOOKUP, REFUND, ESCALATE], True, ""),  # more calls: the expected ones are all there
        ("superset", [LOOKUP, ESCALATE], False, "expected calls not made: issue_refund"),
    ],
)
def test_trajectory_match_modes_catch_their_mismatch(mode: Any, made: list[Call], passed: bool, why: str) -> None:
    recorded = case(trajectory(calls=[LOOKUP, REFUND]))
    score = trajectory_match(mode)(trajectory(calls=made), recorded)
    assert score.name == f"trajectory_{mode}"
    assert (score.value, score.passed) == ((1.0, True) if passed else (0.0, False))
    assert why in score.explanation and ("recorded" in score.explanation)


def test_trajectory_match_with_arguments_and_explicit_expectations() -> None:
    run = trajectory(calls=[LOOKUP, ("issue_refund", {"order_id": "A-1002", "amount": 39.0})])
    assert trajectory_match("strict")(run, case()).passed  # by name: the same calls
    by_args = trajectory_match("strict", args=True)(run, case())
    assert not by_args.passed and by_args.explanation.startswith("strict against the recorded calls: call 2 is")
    assert trajectory_match("superset", ["lookup_order"])(run).passed  # a list of names, given
    assert not trajectory_match("subset")(run, case(tool_calls=["lookup_order"])).passed  # the case's expectation
    with pytest.raises(ConfigurationError, match="mode 'loose'"):
        trajectory_match("loose")  # type: ignore[arg-type]


def test_tool_args_match_pairs_calls_by_position_and_names_the_wrong_argument() -> None:
    run = trajectory(calls=[LOOKUP, ("issue_refund", {"order_id": "A-1002", "amount": 39.0, "reason": "x"})])
    wrong = tool_args_match()(run, case())  # against the recorded calls
    assert (wrong.value, wrong.passed) == (0.5, False)
    assert wrong.explanation == "issue_refund #1: amount expected 24.5, got 39.0"
    assert tool_args_match("lookup_order")(run, case()).passed  # one tool only
    assert tool_args_match("issue_refund", {"amount": 39.0})(run).passed  # extra keys are fine...
    exact = tool_args_match("issue_refund", {"order_id": "A-1002", "amount": 39.0}, exact=True)(run)
    assert not exact.passed and "keys" in exact.explanation  # ...unless exact
    twice = tool_args_match(expected=[LOOKUP, LOOKUP])(run)
    assert twice.value == 0.5 and twice.explanation == "lookup_order #2: not called"
    none_expected = tool_args_match("escalate")(run, case())
    assert none_expected.passed and none_expected.explanation.startswith("no escalate call expected")


# -- effort and health ------------------------------------------------------------------------------------------


def test_measurements_have_no_verdict_without_a_limit_and_one_with() -> None:
    run = trajectory(usage=(300, 60), spent=0.004, seconds=3.5, turns=3)
    recorded = case(trajectory(usage=(100, 20), spent=0.001, seconds=2.0, turns=2))

    assert tokens()(run, recorded) == Score("tokens", 360.0, None, "300 prompt + 60 completion")
    assert tokens(max_tokens=500)(run).passed
    over = tokens(max_ratio=1.5)(run, recorded)
    assert over.passed is False and over.explanation.endswith("over 1.5x the recorded 120")
    assert cost(max_cost=0.01)(run).passed and cost(max_ratio=2)(run, recorded).passed is False
    assert latency()(run).passed is None and latency(max_seconds=3)(run).passed is False
    steps = step_count()(run)  # model turns plus tool calls: 0 turns recorded in this hand-made trajectory
    assert (steps.value, steps.passed) == (2.0, None)
    assert step_count(max_steps=1)(run).passed is False
    assert step_count(count="all")(run).value == 8.0


def test_no_errors_fails_on_a_failed_tool_call_unless_told_to_leave_tool_errors_out() -> None:
    clean = no_errors()(trajectory())
    assert clean == Score("no_errors", 1.0, True, "completed without errors")
    tool_failed = trajectory(failed={0: "ValueError: there is no order 'A-9999'"})
    failed = no_errors()(tool_failed)
    assert not failed.passed and failed.explanation == "lookup_order#0: ValueError: there is no order 'A-9999'"
    assert no_errors(tool_errors=False)(tool_failed).passed
    waiting = no_errors()(trajectory(status="waiting"))
    assert not waiting.passed and "waiting" in waiting.explanation
    assert no_errors()(trajectory(status="failed")).explanation == "the run is failed"


# -- custom scorers -----------------------------------------------------------------------------------------------


def test_scorer_decorator_turns_bools_numbers_and_tuples_into_scores() -> None:
    @scorer
    def apologises(run: Trajectory) -> bool:
        return "sorry" in str(run.output).lower()

    @scorer(name="brevity", threshold=0.5)
    def short(run: Trajectory, case: Case | None) -> tuple[float, str]:
        words = len(str(run.output).split())
        return min(1.0, 10 / words), f"{words} words"

    @scorer
    def turns(run: Trajectory) -> int:
        return len(run.tool_calls)

    run = trajectory("Sorry, I refunded it.")
    assert apologises(run) == Score("apologises", 1.0, True, "")
    assert short(run, case()) == Score("brevity", 1.0, True, "4 words")
    assert short(trajectory("word " * 40)).passed is False
    assert turns(run) == Score("turns", 2.0, None, "")  # a number without a threshold: a measurement

    @scorer
    def broken(run: Trajectory) -> Any:
        return "yes"

    with pytest.raises(ConfigurationError, match="returned str"):
        broken(run)
