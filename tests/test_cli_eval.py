"""``agentflow eval``: the suites in evals/ pass offline and write the HTML report; a regressing candidate fails
the command (exit 1); stored evals are listed and compared."""

from __future__ import annotations

from pathlib import Path

from test_evals import parse_report
from typer.testing import CliRunner, Result

from agentflow import AgentFlow
from agentflow._cli import cli
from agentflow.evals import list_results
from agentflow.evals._dataset import JUDGE_WORKFLOW

EVALS = Path(__file__).resolve().parent.parent / "evals"

REGRESSING_SUITE = """
import tempfile
from pathlib import Path

from eval_fakes import TRACES, instruction_following_model, never_refund_agent

from agentflow.evals import Dataset, Suite, no_errors, trajectory_match
from agentflow.testing import FakeProvider


def offline():
    fake = FakeProvider()
    fake.default = instruction_following_model
    return fake


suite = Suite(
    name="never-refund",
    dataset=Dataset.from_bundles(TRACES / "support"),
    agent=lambda: never_refund_agent(Path(tempfile.mkdtemp())),
    scorers=[trajectory_match("strict"), no_errors(tool_errors=False)],
    context=offline,
)
"""


def invoke(*args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "200", "FORCE_COLOR": None, "NO_COLOR": "1"})
    return runner.invoke(cli, list(args))


def test_agentflow_eval_runs_the_suites_in_evals_and_writes_the_html_report(db_url: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = invoke("eval", str(EVALS), "--db", db_url, "--html", str(report))

    assert result.exit_code == 0, result.output
    assert "suite support" in result.output and "suite research" in result.output
    assert "2 suite(s) passed" in result.output and f"report: {report}" in result.output
    tables = parse_report(report.read_text()).tables
    assert set(tables) == {"support", "research"}
    header, *rows = tables["support"]
    assert header[:4] == ["case", "baseline", "candidate", "change"] and header[-1] == "why / first divergence"
    assert sorted(row[0] for row in rows) == [
        "support-no-order-number", "support-refund-kettle", "support-refund-lamp", "support-refund-undamaged",
        "support-status-teapot", "support-unknown-order",
    ]  # fmt: skip
    assert all(row[1:4] == ["pass", "pass", "unchanged"] for row in rows)
    assert len(tables["research"]) == 1 + 2

    with AgentFlow(db_url) as app:
        judged = len(app.list_runs(workflow=JUDGE_WORKFLOW, limit=None))
        assert judged == 6  # one recorded judgement per distinct answer: the candidate answered as recorded
    again = invoke("eval", str(EVALS), "--db", db_url, "--html", str(report), "--suite", "support")
    assert again.exit_code == 0, again.output
    with AgentFlow(db_url) as app:
        assert len(app.list_runs(workflow=JUDGE_WORKFLOW, limit=None)) == judged  # served from the record
        stored = list_results(app)
    assert len(stored) == 6 and {e.suite for e in stored} == {"support", "research"}

    listing = invoke("eval", "--list", "--db", db_url, "--suite", "support")
    assert listing.exit_code == 0 and listing.output.count("support-") >= 4
    newest = [e for e in stored if e.suite == "support"][:2]
    same = invoke("eval", "--compare", newest[1].id, newest[0].id, "--db", db_url)
    assert same.exit_code == 0 and "PASSED" in same.output


def test_a_regressing_candidate_fails_the_command_with_the_cases_and_why(tmp_path: Path) -> None:
    suite_file = tmp_path / "never_refund.py"
    suite_file.write_text(REGRESSING_SUITE)
    db = str(tmp_path / "evals.db")

    result = invoke("eval", str(suite_file), "--db", db, "--html", str(tmp_path / "r.html"))

    assert result.exit_code == 1, result.output
    assert "FAILED: the pass rate fell from 100% to 67% (allowed drop: 0%)" in result.output
    assert "1 of 1 suite(s) failed: never-refund" in result.output
    lamp = next(line for line in result.output.splitlines() if line.strip().startswith("support-refund-lamp"))
    assert "pass       FAIL        regressed" in lamp
    assert (  # under the table, why: the failing scorer, then where the trajectory went another way
        "support-refund-lamp (regressed): trajectory_strict: strict against the recorded calls: call 2 is no call, "
        'expected issue_refund; step 3: baseline asked for issue_refund(amount=24.5, order_id="A-1002", '
        'reason="arrived damaged"); candidate answered "I\'ve passed your refund for order A-1002 to a colleague."'
    ) in " ".join(result.output.split())
    rows = parse_report((tmp_path / "r.html").read_text()).tables["never-refund"][1:]
    assert sorted(row[0] for row in rows if row[3] == "regressed") == ["support-refund-kettle", "support-refund-lamp"]

    with AgentFlow(db) as app:
        candidate, baseline = (e.id for e in list_results(app))
    assert invoke("eval", "--compare", baseline, candidate, "--db", db).exit_code == 1
    assert invoke("eval", "--compare", baseline, candidate, "--db", db, "--max-regression", "0.5").exit_code == 0
    missing = invoke("eval", "--compare", baseline, "nope", "--db", db)
    assert missing.exit_code == 1 and "there is no eval 'nope'" in missing.output


def test_a_folder_without_suites_or_with_two_of_one_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("X = 1\n")
    empty = invoke("eval", str(tmp_path), "--db", str(tmp_path / "e.db"))
    assert empty.exit_code == 1 and "no eval suites in" in empty.output

    (tmp_path / "a.py").write_text(REGRESSING_SUITE)
    (tmp_path / "b.py").write_text(REGRESSING_SUITE)  # the same suite name, in a second file
    twice = invoke("eval", str(tmp_path), "--db", str(tmp_path / "e.db"))
    assert twice.exit_code == 1 and "two suites are named 'never-refund'" in twice.output
