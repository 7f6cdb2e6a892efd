"""Every example runs offline and says what a person wants to read."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_crash_and_resume_example_shows_completed_steps_served_from_the_record(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "crash_and_resume.py"), "--db", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "child process ended by signal 9" in out
    assert out.count("served from the record") == 3
    assert "status: completed" in out
    assert "steps executed this time: 0" in out
    assert "replay matched: 5 steps served, same output, steps executed: 0" in out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"}, timeout=300
    )


def test_support_agent_example_refunds_a_damaged_order_once_after_approval(tmp_path: Path) -> None:
    script = str(EXAMPLES / "support_agent.py")
    first = _run([sys.executable, script, "--db", "s.db", "--run-id", "t-1"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "waits for a person to approve a refund above $30.00" in first.stdout
    assert "approve.issue_refund#0 event" in first.stdout and "issue_refund#0" in first.stdout
    assert "refunded the full $39.00" in first.stdout
    again = _run([sys.executable, script, "--db", "s.db", "--run-id", "t-1"], tmp_path)  # the recorded run
    assert again.returncode == 0 and first.stdout.endswith(again.stdout)
    ledger = json.loads((tmp_path / ".agentflow" / "refunds.json").read_text())
    assert list(ledger) == ["t-1:issue_refund#0"]  # refunded once, under the run's idempotency key
    other = _run([sys.executable, script, "--db", "s.db", "--ticket", "Where is A-1003?"], tmp_path)
    assert "in transit" in other.stdout and "issue_refund" not in other.stdout
    pending = _run([sys.executable, script, "--db", "s.db", "--run-id", "t-2", "--no-approve"], tmp_path)
    assert "run t-2 is waiting for approval" in pending.stdout and "agentflow send-event t-2 approval" in pending.stdout


def test_agentflow_demo_waits_for_approval_crashes_resumes_and_replays_offline(tmp_path: Path) -> None:
    agentflow = Path(sys.executable).parent / "agentflow"  # the console script the install put beside python
    result = _run([str(agentflow), "demo"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the run is waiting for approval: this process can exit" in out
    assert "a person approved the call (supervisor)" in out
    assert "killed (SIGKILL)" in out and "the child died (exit -9)" in out
    assert out.count("served  ") == 6 and "6 steps came from the record" in out
    assert "refunds paid for this run: 1" in out
    assert "the replay matched the recorded run" in out
    assert (tmp_path / ".agentflow" / "agentflow.db").exists()  # the embedded SQLite default


def test_research_agent_example_plans_and_runs_its_branches_side_by_side(tmp_path: Path) -> None:
    result = _run([sys.executable, str(EXAMPLES / "research_agent.py"), "--db", "r.db"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1 plan(s)" in out and "In short: Solar:" in out
    bars = {line.split()[0]: line for line in out.splitlines() if line.startswith("  plan0.")}
    assert list(bars) == ["plan0.search_a#0", "plan0.search_b#0", "plan0.compare#0", "plan0.write#0"]
    # The two searches ran at the same time: the second started before the first finished.
    assert bars["plan0.search_b#0"].index("█") < bars["plan0.search_a#0"].rindex("█")
    assert bars["plan0.compare#0"].index("█") > bars["plan0.search_a#0"].index("█")


def test_the_quickstart_notebook_runs_from_top_to_bottom(tmp_path: Path) -> None:
    import nbclient
    import nbformat

    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    text = "\n".join(
        str(output.get("text", "")) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "interrupted!" in text and "running ['llm#0', 'lookup_order#0', 'support.state#0', 'llm#1']" in text
    assert "completed - Your kettle arrived damaged" in text
    assert "refunds paid: 1" in text
    assert "served 8 steps; model calls: 0" in text and "same answer: True" in text
    assert "support.state#2    7 messages" in text
    assert (tmp_path / "quickstart.db").exists()
