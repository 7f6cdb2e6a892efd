"""Record the traces the eval suites run against: runs of the example agents, made offline with their
fake models and exported as bundles to ``evals/traces/<suite>/<case>.json``.

    python evals/record_traces.py

The suites (``evals/support.py``, ``evals/research.py``) read these bundles as their datasets: each run
is a case, its recorded trajectory the reference a candidate is compared with. The runs use a fake clock
and a fake model, so recording unchanged code again writes the same bytes; run this script when the
example agents change on purpose, and commit the new traces with them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRACES = HERE / "traces"

# suite -> case (the run id) -> the user's message. Each run is made by the suite's example agent.
TICKETS: dict[str, str] = {
    "support-refund-lamp": "Order A-1002 arrived broken, I want my money back",
    "support-refund-kettle": "My kettle from order A-1001 arrived broken. Can I get a refund?",  # needs approval
    "support-status-teapot": "Where is my order A-1003?",
    "support-refund-undamaged": "Please refund order A-1003, I changed my mind.",
    "support-unknown-order": "Where is my order A-9999?",
    "support-no-order-number": "Hi, my parcel never came.",
}
QUESTIONS: dict[str, str] = {
    "research-solar-wind": "Solar or wind for a small farm?",
    "research-heat-pump": "Heat pump or gas boiler for an old house?",
}


def _runs() -> list[tuple[str, str, Any, str, Callable[[dict[str, Any]], Any]]]:
    from agentflow.examples import research_agent, support_agent

    runs = [("support", case, support_agent.agent, text, support_agent.fake_support_model)
            for case, text in TICKETS.items()]  # fmt: skip
    runs += [("research", case, research_agent.planner, text, research_agent.fake_research_model)
             for case, text in QUESTIONS.items()]  # fmt: skip
    return runs


def record(out: Path = TRACES) -> list[Path]:
    """Run every case once in a fresh database, check that it replays, and export it under ``out``."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("OPENAI_API_KEY", "sk-offline")  # the fake answers; litellm only wants a key to send
    from agentflow import AgentFlow, FakeClock
    from agentflow.testing import FakeProvider

    written = []
    with tempfile.TemporaryDirectory(prefix="agentflow-traces-") as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)  # the support agent's refund ledger goes to .agentflow/ here, not into the repository
        try:
            with AgentFlow(str(Path(scratch) / "record.db"), clock=FakeClock()) as app:
                for suite, run_id, agent, text, model in _runs():
                    with FakeProvider() as fake:
                        fake.default = model
                        run = app.run(agent, text, run_id=run_id)
                        if run.status == "waiting" and run.waiting_for == "approval":  # a supervisor approves
                            app.send_event(run_id, "approval", {"approved": True, "by": "supervisor"})
                            run = app.resume(run_id)
                    if run.status != "completed":
                        raise SystemExit(f"run {run_id} did not complete: {run.status} {run.error}")
                    app.replay(run_id)  # strict: the trace is good before it is written
                    path = out / suite / f"{run_id}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
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
