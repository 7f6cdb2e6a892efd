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


def cases(out: Path = TRACES) -> list[Any]:
    """Every case of both suites, as ``agentflow.testing.BundleCase`` objects writing under ``out``."""
    from agentflow.examples import research_agent, support_agent
    from agentflow.testing import BundleCase

    approved = {"approval": {"approved": True, "by": "supervisor"}}  # a supervisor approves large refunds
    support = support_agent.agent, support_agent.fake_support_model, TICKETS, approved
    research = research_agent.planner, research_agent.fake_research_model, QUESTIONS, {}
    return [
        BundleCase(case, agent, out / suite / f"{case}.json", model, args=(text,), events=events)
        for suite, (agent, model, texts, events) in (("support", support), ("research", research))
        for case, text in texts.items()
    ]


def record(out: Path = TRACES) -> list[Path]:
    """Run every case once in a fresh database, check that it replays, and export it under ``out``."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("OPENAI_API_KEY", "sk-offline")  # the fake answers; litellm only wants a key to send
    from agentflow.testing import record_bundles

    return record_bundles(cases(out))


def main() -> int:
    for path in record():
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
