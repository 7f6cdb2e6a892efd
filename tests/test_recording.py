"""``agentflow.testing.record_bundles``: runs recorded offline with a fake model, exported as bundles that
replay elsewhere; the same code records the same bytes; a case that cannot make a good bundle says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentflow import AgentFlow, Context
from agentflow._refs import register_code
from agentflow.errors import AgentFlowError
from agentflow.testing import BundleCase, record_bundles, reply


async def ask_then_wait(ctx: Context, question: str) -> str:
    answer = await ctx.llm(model="gpt-4o-mini", messages=[{"role": "user", "content": question}], api_key="sk-x")
    decision = await ctx.wait_for_event("decision", type="approval")
    return f"{answer.text} ({'approved' if decision['approved'] else 'refused'})"


async def ask_local_model(ctx: Context, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    answer = await ctx.llm(model="openai/llama-3", messages=messages, api_base="http://localhost:8000/v1", api_key="x")
    return answer.text or ""


def test_a_case_whose_model_sits_behind_an_api_base_is_recorded_with_its_base_url(tmp_path: Path) -> None:
    case = BundleCase(
        run_id="local",
        workflow=ask_local_model,
        path=tmp_path / "local.json",
        model=reply("From vLLM."),
        args=("Hello?",),
        base_url="http://localhost:8000/v1",
    )
    [path] = record_bundles([case])  # before: respx "not mocked", the fake listened on OpenAI's URL only
    with AgentFlow(str(tmp_path / "check.db")) as app:
        assert app.import_runs(path) == ["local"]
        assert app.get_run("local").output == "From vLLM."


def _case(path: Path, **changes: Any) -> BundleCase:
    fields: dict[str, Any] = {
        "run_id": "ask",
        "workflow": ask_then_wait,
        "path": path,
        "model": reply("Shipped."),
        "args": ("Where is order A-1?",),
        "events": {"approval": {"approved": True}},
    }
    return BundleCase(**{**fields, **changes})


def test_a_recorded_bundle_replays_in_another_database_and_records_the_same_bytes_again(tmp_path: Path) -> None:
    seen: list[str] = []
    [path] = record_bundles([_case(tmp_path / "out" / "ask.json")], progress=lambda case, p: seen.append(case.run_id))
    assert path == tmp_path / "out" / "ask.json" and seen == ["ask"]
    first = path.read_bytes()

    with AgentFlow(str(tmp_path / "elsewhere.db")) as app:
        assert app.import_runs(path) == ["ask"]
        run = app.get_run("ask")
        assert run.output == "Shipped. (approved)"
        assert run.workflow_ref is not None
        register_code(app, run.workflow, run.workflow_ref)  # as the pytest plugin does: by the recorded ref
        replay = app.replay("ask")
        assert replay.matched and replay.served == len(run.steps)

    record_bundles([_case(path)])
    assert path.read_bytes() == first


def test_a_case_left_waiting_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(AgentFlowError, match="did not complete: waiting, waiting for 'approval'"):
        record_bundles([_case(tmp_path / "ask.json", events={})])
    assert not (tmp_path / "ask.json").exists()


def test_a_workflow_that_cannot_be_imported_by_name_is_refused(tmp_path: Path) -> None:
    async def local(ctx: Context) -> str:
        return "x"

    with pytest.raises(AgentFlowError, match="cannot be imported by name"):
        record_bundles([_case(tmp_path / "local.json", workflow=local, args=())])
    assert not (tmp_path / "local.json").exists()
