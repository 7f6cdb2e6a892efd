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
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-offline")  # the fake answers; litellm only wants a key to send

from agentflow.examples import research_agent, support_agent
from agentflow.testing import BundleCase, record_bundles

HERE = Path(__file__).resolve().parent
APPROVED = {"approval": {"approved": True, "by": "supervisor"}}  # a supervisor approves refunds above the limit


def cases(out: Path = HERE) -> list[BundleCase]:
    """The runs to record: agents imported from the installed package, so each run records an importable ref."""
    support = support_agent.agent, support_agent.fake_support_model
    research = research_agent.planner, research_agent.fake_research_model
    runs = [
        ("support-refund", support, "Order A-1002 arrived broken, I want my money back"),
        ("support-refund-approved", support, "My kettle from order A-1001 arrived broken. Can I get a refund?"),
        ("support-status", support, "Where is my order A-1003?"),
        ("research-solar-wind", research, "Solar or wind for a small farm?"),
    ]
    return [
        BundleCase(run_id, agent, out / f"{run_id}.json", model, args=(prompt,), events=APPROVED)
        for run_id, (agent, model), prompt in runs
    ]


def main() -> int:
    record_bundles(cases(), progress=lambda case, path: print(f"wrote {path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
