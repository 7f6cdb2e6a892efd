"""Evals against recorded traces: datasets, the three modes, the recorded LLM judge, storage, comparison and
reports. The recorded traces are the bundles in ``evals/traces`` (made offline by evals/record_traces.py);
models are faked at the HTTP level with FakeProvider."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from eval_fakes import TRACES, instruction_following_model, never_refund_agent
from rich.console import Console

from agentflow import AgentFlow, BundleError, ConfigurationError, Context, FakeClock, RunNotFound, StoreError
from agentflow.evals import (
    CaseResult,
    Dataset,
    EvalResult,
    Score,
    compare,
    evaluate,
    list_results,
    llm_judge,
    load_result,
    no_errors,
    output_contains,
    save_result,
    to_html,
    to_markdown,
    to_rich,
    tokens,
    tool_args_match,
    trajectory_match,
)
from agentflow.evals._compare import first_divergence
from agentflow.evals._dataset import JUDGE_WORKFLOW
from agentflow.examples.support_agent import INSTRUCTIONS, fake_support_model
from agentflow.testing import FakeProvider, reply, tool_call

SUPPORT = TRACES / "support"
SCORERS = [trajectory_match("strict"), tool_args_match(), no_errors(tool_errors=False), tokens()]


def support_dataset(*cases: str) -> Dataset:
    if cases:
        return Dataset.from_bundles([SUPPORT / f"{case}.json" for case in cases])
    return Dataset.from_bundles(SUPPORT)


# -- datasets -------------------------------------------------------------------------------------------------


def test_a_dataset_from_bundles_holds_each_recorded_trajectory_without_a_database() -> None:
    dataset = support_dataset()

    assert dataset.name == "support" and len(dataset) == 6
    kettle = dataset["support-refund-kettle"]
    assert kettle.prompt == "My kettle from order A-1001 arrived broken. Can I get a refund?"
    ref = kettle.reference
    assert ref.status == "completed" and ref.output.startswith("I'm sorry your kettle arrived damaged")
    assert [(c.name, c.arguments) for c in ref.tool_calls] == [
        ("lookup_order", {"order_id": "A-1001"}),
        ("issue_refund", {"order_id": "A-1001", "amount": 39.0, "reason": "arrived damaged"}),
    ]
    assert ref.tool_calls[1].output["refund_id"].startswith("R-")
    assert [t.tool_calls for t in ref.turns] == [
        (("lookup_order", {"order_id": "A-1001"}),),
        (("issue_refund", {"order_id": "A-1001", "amount": 39.0, "reason": "arrived damaged"}),),
        (),
    ]
    assert ref.turns[-1].text == ref.output and ref.prompt_tokens > 0 and ref.cost > 0
    assert ref.events == (("approval", {"approved": True, "by": "supervisor"}),)  # the person's approval
    assert [e["kind"] for e in ref.path()] == ["model", "tool", "model", "tool", "model"]
    unknown = dataset["support-unknown-order"].reference
    assert not unknown.tool_calls[0].ok and "A-9999" in str(unknown.tool_calls[0].error)


def test_a_damaged_bundle_or_a_missing_path_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.json"
    damaged.write_text((SUPPORT / "support-refund-lamp.json").read_text().replace("A-1002", "A-1003", 1))
    with pytest.raises(BundleError, match="changed or damaged"):
        Dataset.from_bundles(damaged)
    with pytest.raises(ConfigurationError, match="no bundle file or folder"):
        Dataset.from_bundles(tmp_path / "nowhere")
    with pytest.raises(ConfigurationError, match="does not hold"):
        support_dataset().expect({"support-refund-lamb": {"contains": "x"}})


def test_a_dataset_from_runs_filters_by_workflow_status_and_ids_and_leaves_derived_runs_out(
    app: AgentFlow, clock: FakeClock
) -> None:
    @app.workflow(name="double")
    async def double(ctx: Context, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return await ctx.step("times_two", lambda x: x * 2, n)

    @app.workflow(name="other")
    async def other(ctx: Context) -> int:
        return 1

    for run_id, n in (("d-b", 2), ("d-a", 1), ("d-fail", -1)):
        app.run(double, n, run_id=run_id)
        clock.advance(1)
    app.run(other, run_id="o")
    app.fork("d-a", at="times_two#0", override=100, new_run_id="d-a-fork")

    assert Dataset.from_runs(app, workflow="double").ids == ["d-b", "d-a", "d-fail"]  # oldest first
    assert Dataset.from_runs(app, workflow="double", status="failed").ids == ["d-fail"]
    assert Dataset.from_runs(app, workflow="double", include_derived=True, limit=4).ids[-1] == "d-a-fork"
    picked = Dataset.from_runs(app, ids=["d-a-fork", "o"], expectations={"o": {"output": 1}})
    assert picked.ids == ["d-a-fork", "o"] and picked["o"].expected == {"output": 1}
    assert picked["d-a-fork"].reference.output == 100
    assert Dataset.from_runs(app, workflow="double")["d-fail"].reference.error == "ValueError: negative"
    with pytest.raises(RunNotFound):
        Dataset.from_runs(app, ids=["d-a", "missing"])


# -- rescore ----------------------------------------------------------------------------------------------------


def test_rescoring_runs_nothing_and_keeps_the_result_in_the_database(app: AgentFlow) -> None:
    dataset = support_dataset()
    with FakeProvider() as fake:  # no script: any model call would be answered with an error
        result = evaluate(dataset, [*SCORERS, no_errors(name="strict_errors")], app=app, thresholds={"pass_rate": 1})
    assert fake.call_count == 0 and app.list_runs() == []  # nothing ran, nothing was even imported

    assert result.mode == "rescore" and result.candidate is None and len(result.cases) == 6
    assert result.case("support-unknown-order").score("strict_errors") == Score(
        "strict_errors", 0.0, False, "lookup_order#0: ValueError: there is no order 'A-9999'"
    )
    assert result.pass_rate == pytest.approx(5 / 6)
    assert result.check() == ["pass_rate 83% is below the threshold 100%"]
    assert result.pass_rate_of("trajectory_strict") == 1.0 and result.pass_rate_of("tokens") is None
    assert result.mean("tokens") == pytest.approx(sum(c.reference.total_tokens for c in dataset) / 6)

    assert load_result(app, result.id) == result
    assert [e.id for e in list_results(app)] == [result.id]
    assert list_results(app)[0].passed_count == 5
    with pytest.raises(StoreError, match="stored already"):
        save_result(app, result)


# -- counterfactual ----------------------------------------------------------------------------------------------


def test_a_counterfactual_eval_of_a_changed_instruction_shows_which_cases_changed_and_why(
    app: AgentFlow, tmp_path: Path
) -> None:
    dataset = support_dataset()
    baseline = evaluate(dataset, SCORERS, app=app)
    candidate_agent = never_refund_agent(tmp_path)

    with FakeProvider() as fake:
        fake.default = instruction_following_model
        candidate = evaluate(dataset, SCORERS, app=app, agent=candidate_agent, baseline_id=baseline.id)
        assert "Never issue a refund" in fake.calls[0]["messages"][0]["content"]  # the model was asked live

    assert candidate.mode == "counterfactual" and candidate.candidate == f"support@{candidate_agent.code_version()}"
    report = compare(baseline, candidate)
    assert {c.case_id for c in report.of("regressed")} == {"support-refund-lamp", "support-refund-kettle"}
    assert {c.case_id for c in report.changed} == {"support-refund-lamp", "support-refund-kettle"}
    assert report.pass_rate_delta == pytest.approx(-2 / 6)

    lamp = next(c for c in report.cases if c.case_id == "support-refund-lamp")
    assert lamp.divergence is not None and lamp.divergence.describe() == (
        'step 3: baseline asked for issue_refund(amount=24.5, order_id="A-1002", reason="arrived damaged"); '
        'candidate answered "I\'ve passed your refund for order A-1002 to a colleague."'
    )
    assert lamp.why().startswith(
        "trajectory_strict: strict against the recorded calls: call 2 is no call, expected issue_refund"
    )
    assert lamp.score_deltas()["trajectory_strict"] == -1.0 and lamp.token_delta < 0

    markdown = to_markdown(report)
    row = next(line for line in markdown.splitlines() if line.startswith("| support-refund-lamp |"))
    assert "| pass | FAIL | regressed |" in row and "step 3: baseline asked for issue_refund" in row
    assert "| support-status-teapot | pass | pass | unchanged |" in markdown
    assert report.regressions()[0].startswith("the pass rate fell from 100% to 67% (allowed drop: 0%); regressed: ")
    assert report.regressions(max_pass_rate_drop=0.5) == []

    made = app.get_run(candidate.case("support-refund-lamp").run_id or "")
    assert made.forked_from == "support-refund-lamp"  # a counterfactual run of the recorded one
    assert not (tmp_path / "refunds.json").exists()  # no tool ran: the record answered every call


def test_an_unchanged_agent_replays_its_recorded_world_including_the_approval_it_got(
    app: AgentFlow, tmp_path: Path
) -> None:
    dataset = support_dataset()
    baseline = evaluate(dataset, SCORERS, app=app)
    with FakeProvider() as fake:
        fake.default = instruction_following_model
        candidate = evaluate(dataset, SCORERS, app=app, agent=never_refund_agent(tmp_path, INSTRUCTIONS))

    assert compare(baseline, candidate).changed == [] and candidate.pass_rate == 1.0
    kettle = app.get_run(candidate.case("support-refund-kettle").run_id or "")
    assert kettle.status == "completed"  # the refund above the limit did not wait: the recorded approval came
    events = [s for s in kettle.steps if str(s.kind) == "event"]
    assert [s.output["payload"] for s in events] == [{"approved": True, "by": "supervisor"}]
    assert not (tmp_path / "refunds.json").exists()  # the refund was served from the record, never paid


@pytest.mark.parametrize(("missing", "ok"), [("missing", False), ("live", True)])
def test_a_call_the_record_cannot_answer_gets_an_error_or_runs_live(
    app: AgentFlow, tmp_path: Path, missing: Any, ok: bool
) -> None:
    dataset = support_dataset("support-status-teapot")

    def curious(request: dict[str, Any]) -> Any:  # looks up another order first: not in the recorded world
        if len(request["messages"]) == 2:
            return tool_call("lookup_order", {"order_id": "A-1002"})
        return fake_support_model(request)

    with FakeProvider() as fake:
        fake.default = curious
        result = evaluate(dataset, SCORERS, app=app, agent=never_refund_agent(tmp_path, INSTRUCTIONS), missing=missing)

    case = result.case("support-status-teapot")
    first = case.path[1]
    assert (first["name"], first["arguments"], first["ok"]) == ("lookup_order", {"order_id": "A-1002"}, ok)
    if not ok:
        assert "the recorded world has no result for lookup_order" in first["error"]
    assert case.score("tool_args") == Score(
        "tool_args", 0.0, False, 'lookup_order #1: order_id expected "A-1003", got "A-1002"'
    )


def test_fresh_runs_call_the_tools_live(app: AgentFlow, tmp_path: Path) -> None:
    dataset = support_dataset("support-refund-lamp")
    with FakeProvider() as fake:
        fake.default = instruction_following_model
        result = evaluate(dataset, SCORERS, app=app, agent=never_refund_agent(tmp_path, INSTRUCTIONS), mode="fresh")

    case = result.case("support-refund-lamp")
    assert case.passed and app.get_run(case.run_id or "").forked_from is None
    refunds = json.loads((tmp_path / "refunds.json").read_text())  # live: the refund was paid
    assert [r["amount"] for r in refunds.values()] == [24.5]


def test_cases_run_concurrently_up_to_the_limit(app: AgentFlow) -> None:
    inside = {"now": 0, "peak": 0}

    async def busy(n: int) -> int:
        inside["now"] += 1
        inside["peak"] = max(inside["peak"], inside["now"])
        for _ in range(20):  # give every other case that may run now the chance to get here
            await asyncio.sleep(0)
        inside["now"] -= 1
        return n

    @app.workflow(name="busy")
    async def work(ctx: Context, n: int) -> int:
        return await ctx.step("busy", busy, n)

    for n in range(6):
        app.run(work, n, run_id=f"busy-{n}")
    dataset = Dataset.from_runs(app, workflow="busy")

    for limit, peak in ((2, 2), (6, 6)):
        inside["peak"] = 0
        result = evaluate(dataset, [no_errors()], app=app, agent=work, mode="fresh", concurrency=limit)
        assert result.pass_rate == 1.0 and inside["peak"] == peak


# -- the LLM judge -------------------------------------------------------------------------------------------------


def test_an_llm_judge_call_is_recorded_and_a_second_scoring_is_served_from_the_record(db_url: str) -> None:
    dataset = support_dataset("support-refund-lamp", "support-status-teapot")
    judge = llm_judge("Kind, and says what happens next.", model="gpt-4o-mini", params={"api_key": "sk-judge-secret"})

    def grade(request: dict[str, Any]) -> Any:
        assert request["messages"][1]["content"].startswith("Rubric:\nKind, and says what happens next.")
        return reply('{"score": 0.8, "explanation": "kind and clear"}')

    with AgentFlow(db_url) as app, FakeProvider() as fake:
        fake.default = grade
        first = evaluate(dataset, [judge], app=app)
        assert fake.call_count == 2
    assert first.case("support-refund-lamp").scores == (Score("judge", 0.8, True, "kind and clear"),)

    with AgentFlow(db_url) as app, FakeProvider() as fake:  # another process, later: nothing is asked again
        again = evaluate(dataset, [judge], app=app)
        assert fake.call_count == 0
        assert [c.scores for c in again.cases] == [c.scores for c in first.cases]

        judged = app.list_runs(workflow=JUDGE_WORKFLOW)
        assert len(judged) == 2
        recorded = json.dumps([r.input for r in judged]) + json.dumps([s.request for r in judged for s in r.steps])
        assert "sk-judge-secret" not in recorded  # the key reached the provider only
        assert Dataset.from_runs(app).ids == []  # judge runs are not cases

        stricter = llm_judge("Kind, and says what happens next.", model="gpt-4o-mini", threshold=0.9)
        verdicts = evaluate(dataset, [stricter], app=app)  # the same judgement, held to another threshold
        assert fake.call_count == 0 and verdicts.cases[0].scores[0] == Score("judge", 0.8, False, "kind and clear")

        fake.default = lambda request: reply("It looks fine to me.")
        short = llm_judge("Short.", model="gpt-4o-mini", params={"api_key": "sk-judge-secret"})
        other = evaluate(dataset, [short], app=app)  # another rubric: judged anew
        assert fake.call_count == 2
        assert other.cases[0].scores[0].explanation == (
            'the judge did not answer {"score", "explanation"} JSON: \'It looks fine to me.\''
        )

    with pytest.raises(ConfigurationError, match="records its calls"):
        evaluate(dataset, [judge])


# -- comparison and reports ------------------------------------------------------------------------------------------


def _case(case_id: str, passed: bool, path: list[dict[str, Any]] | None = None, tokens: int = 10) -> CaseResult:
    scores = (Score("check", 1.0 if passed else 0.0, passed, "ok" if passed else "the check failed"),)
    return CaseResult(case_id, case_id, case_id, "completed", passed, scores, tuple(path or []), "out", None, tokens)


def _result(eval_id: str, *cases: CaseResult) -> EvalResult:
    return EvalResult(eval_id, "suite", "rescore", 1_700_000_000.0, "data", tuple(cases))


LOOK = {"kind": "tool", "name": "lookup", "arguments": {"id": 1}, "ok": True}
ASK = {"kind": "model", "text": None, "calls": [{"name": "lookup", "arguments": {"id": 1}}]}


def test_compare_pairs_cases_by_id_and_names_each_change() -> None:
    baseline = _result("b", _case("fixed", False), _case("regressed", True, [ASK, LOOK]), _case("gone", True),
                       _case("same", True, [ASK]))  # fmt: skip
    candidate = _result("c", _case("fixed", True), _case("regressed", False, [ASK, {**LOOK, "ok": False}], 25),
                        _case("new", True), _case("same", True, [ASK]))  # fmt: skip
    report = compare(baseline, candidate)

    assert {c.case_id: c.change for c in report.cases} == {
        "fixed": "fixed", "regressed": "regressed", "gone": "removed", "same": "still passing", "new": "new",
    }  # fmt: skip
    regressed = next(c for c in report.cases if c.case_id == "regressed")
    assert regressed.token_delta == 15 and regressed.divergence is not None and regressed.divergence.index == 1
    assert regressed.why() == (
        "check: the check failed; step 2: baseline called lookup(id=1); candidate called lookup(id=1) -> error: "
    )
    fixed = next(c for c in report.cases if c.case_id == "fixed")
    assert fixed.why() == "check now passes (was: the check failed)"
    assert [c.case_id for c in report.changed] == ["fixed", "regressed", "gone", "new"]
    assert report.regressions() == []  # 3 of 4 passed before, 3 of 4 now
    assert first_divergence([ASK], [ASK, LOOK]) is not None and first_divergence([ASK], [ASK]) is None

    worse = compare(baseline, _result("w", _case("fixed", False), _case("regressed", False)))
    assert worse.regressions(max_pass_rate_drop=0.1) == [
        "the pass rate fell from 75% to 0% (allowed drop: 10%); regressed: regressed"
    ]
    assert worse.regressions(max_pass_rate_drop=0.8, max_score_drop=0.5) == [
        "check: pass rate fell by 75% (allowed: 50%)"
    ]


def test_thresholds_name_the_pass_rate_or_a_scorer() -> None:
    result = _result("r", _case("a", True), _case("b", False))
    assert result.check({"pass_rate": 0.5, "check": 0.5}) == []
    assert result.check({"check": 0.9}) == ["check 50% is below the threshold 90%"]
    with pytest.raises(ConfigurationError, match="names no scorer"):
        result.check({"chekc": 0.5})


class _Tables(HTMLParser):
    """The rows of every ``<table class="cases">`` in a page, and anything that would load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.external: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" or found.get("src") or (tag == "link" and found.get("href")):
            self.external.append(tag)
        if tag == "table" and found.get("class") == "cases":
            self._table = found.get("data-suite") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def parse_report(html: str) -> _Tables:
    parser = _Tables()
    parser.feed(html)
    return parser


def test_reports_show_the_per_case_table_in_html_markdown_and_the_terminal() -> None:
    report = compare(_result("b", _case("x", True, [ASK])), _result("c", _case("x", False, [ASK, LOOK])))

    page = parse_report(to_html(report))
    assert page.external == []  # self-contained
    header, row = page.tables["suite"]
    assert header == ["case", "baseline", "candidate", "change", "score deltas", "Δ tokens", "Δ cost",
                      "why / first divergence"]  # fmt: skip
    assert row[:5] == ["x", "pass", "FAIL", "regressed", "check -1"]
    assert row[7] == "check: the check failed; step 2: baseline ended; candidate called lookup(id=1)"

    assert "| x | pass | FAIL | regressed | check -1 |" in to_markdown(report)
    console = Console(record=True, width=200)
    console.print(to_rich(report, report.regressions()))
    text = console.export_text()
    assert "regressed" in text and "FAILED: the pass rate fell from 100% to 0%" in text
    single = parse_report(to_html(_result("r", _case("a", True))))
    assert single.tables["suite"][1][:3] == ["a", "completed", "pass"]


def test_output_contains_reads_a_case_expectation_in_a_real_eval() -> None:
    dataset = support_dataset("support-refund-lamp").expect({"support-refund-lamp": {"contains": ["A-1002"]}})
    result = evaluate(dataset, [output_contains()])
    assert result.case("support-refund-lamp").passed


def test_agentflow_evals_loads_on_first_use_and_stays_light() -> None:
    code = (
        "import sys, json, agentflow; agentflow.evals.Dataset; "
        "print(json.dumps([m for m in ('sqlalchemy', 'pydantic', 'litellm', 'rich', 'typer') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_evals_api_changes_only_on_purpose() -> None:
    import agentflow.evals

    assert set(agentflow.evals.__all__) == {
        "Case", "CaseComparison", "CaseResult", "Comparison", "Dataset", "Divergence", "EvalResult", "EvalSummary",
        "LLMJudge", "MatchMode", "Mode", "ModelTurn", "Score", "Scorer", "Section", "Suite", "SuiteOutcome",
        "ToolUse", "Trajectory", "compare", "cost", "evaluate", "evaluate_async", "exact_output", "json_subset",
        "latency", "list_results", "llm_judge", "load_result", "load_suites", "no_errors", "output_contains",
        "output_regex", "save_result", "scorer", "step_count", "to_html", "to_markdown", "to_rich", "tokens",
        "tool_args_match", "trajectory_from_run", "trajectory_match",
    }  # fmt: skip
    assert all(hasattr(agentflow.evals, name) for name in agentflow.evals.__all__)
