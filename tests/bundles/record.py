"""Record the bundles in this folder again: runs of the example agents, made offline with their fake models.

    python tests/bundles/record.py

agentflow's pytest plugin replays every bundle here strictly in each test run (``agentflow_bundles`` in
pyproject.toml), so a change to an example agent, or to agentflow, that makes it ask for something other
than what it recorded fails the tests. When the change is meant, run this script and commit the new
bundles with it. The runs use a fake clock, so recording unchanged code again gives the same bytes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-offline")  # the fake answers; litellm only wants a key to send

from agentflow import AgentFlow, FakeClock
from agentflow.examples import research_agent, support_agent
from agentflow.testing import FakeProvider

HERE = Path(__file__).resolve().parent

# run id -> (the agent, imported from the installed package so that the run records an importable ref,
# its input, the fake model that answers it)
RUNS: dict[str, tuple[Any, str, Callable[[dict[str, Any]], Any]]] = {
    "support-refund": (
        support_agent.agent,
        "Order A-1002 arrived broken, I want my money back",
        support_agent.fake_support_model,
    ),
    "support-refund-approved": (  # above the approval limit: waits for an "approval" event, then refunds
        support_agent.agent,
        "My kettle from order A-1001 arrived broken. Can I get a refund?",
        support_agent.fake_support_model,
    ),
    "support-status": (support_agent.agent, "Where is my order A-1003?", support_agent.fake_support_model),
    "research-solar-wind": (
        research_agent.planner,
        "Solar or wind for a small farm?",
        research_agent.fake_research_model,
    ),
}


def record(out: Path = HERE) -> list[Path]:
    """Run each agent once in a fresh database, check that it replays, and export it to ``out``."""
    written = []
    with tempfile.TemporaryDirectory(prefix="agentflow-record-") as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)  # the support agent's refund ledger goes to .agentflow/ here, not into the repository
        try:
            with AgentFlow(str(Path(scratch) / "record.db"), clock=FakeClock()) as app:
                for run_id, (agent, prompt, model) in RUNS.items():
                    with FakeProvider() as fake:
                        fake.default = model
                        run = app.run(agent, prompt, run_id=run_id)
                        if run.status == "waiting" and run.waiting_for == "approval":
                            app.send_event(run_id, "approval", {"approved": True, "by": "supervisor"})
                            run = app.resume(run_id)
                    if run.error is not None:
                        raise SystemExit(f"run {run_id} failed: {run.error}")
                    if run.workflow_ref is None or not run.workflow_ref.startswith("agentflow.examples."):
                        raise SystemExit(f"run {run_id} recorded no importable ref ({run.workflow_ref})")
                    app.replay(run_id)  # strict: the bundle is good before it is written
                    path = out / f"{run_id}.json"
                    app.export_run(run_id, path)
                    written.append(path)
        finally:
            os.chdir(cwd)
    return written


def main() -> int:
    for path in record():
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
