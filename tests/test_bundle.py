"""Run bundles: a run exported from one database imports whole into another and replays there, offline.

Tests that take ``app`` or ``db_url`` run on SQLite and, when ``AGENTFLOW_TEST_POSTGRES_URL`` is set, on
Postgres: as the database a run is exported from (the round trip) or imported into (everything else).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from nested_restart import nested_then_restarted
from typer.testing import CliRunner, Result

from agentflow import (
    Agent,
    AgentFlow,
    BundleError,
    Context,
    FakeClock,
    RunNotFound,
    RunStatus,
    SupersededStep,
    tool,
)
from agentflow._bundle import FORMAT_VERSION, checksum
from agentflow._cli import cli
from agentflow._store import RunRecord, StepRecord
from agentflow.testing import FakeProvider, reply, tool_call

pytest_plugins = ["pytester"]

MODEL = "gpt-4o-mini"
PARAMS = {"api_key": "sk-fake"}


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order by its id."""
    return {"order_id": order_id, "status": "shipped"}


def support_agent() -> Agent:
    return Agent(name="support", model=MODEL, instructions="You help shoppers.", tools=[lookup_order], params=PARAMS)


def run_agent(flow: AgentFlow, run_id: str = "ticket-1", question: str = "Where is A-1?") -> None:
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}), reply("A-1 has shipped."))
        run = flow.run(support_agent(), question, run_id=run_id)
    assert run.status == RunStatus.COMPLETED, run.error


async def double(ctx: Context, n: int) -> int:
    return await ctx.step("double", lambda: n * 2)


@pytest.fixture
def bundle(tmp_path: Path) -> bytes:
    """The bundle of an agent run (two model calls, a tool call, checkpoints) made in a SQLite database."""
    with AgentFlow(str(tmp_path / "source.db"), clock=FakeClock()) as source:
        run_agent(source)
        return source.export_run("ticket-1")


def fresh(tmp_path: Path) -> AgentFlow:
    return AgentFlow(str(tmp_path / "target.db"))


def reseal(document: dict[str, Any]) -> bytes:
    """The bundle with its checksum made to fit its (changed) content again: only the deeper checks remain."""
    document["checksum"] = checksum(document)
    return json.dumps(document).encode()


# -- the round trip -------------------------------------------------------------------------------------------


def test_an_exported_agent_run_imports_into_a_fresh_database_and_replays_strictly(
    app: AgentFlow, tmp_path: Path
) -> None:
    run_agent(app)
    data = app.export_run("ticket-1", tmp_path / "ticket-1.json")
    assert (tmp_path / "ticket-1.json").read_bytes() == data

    with fresh(tmp_path) as target:
        assert target.import_runs(tmp_path / "ticket-1.json") == ["ticket-1"]
        target.register(support_agent())
        with FakeProvider() as fake:  # nothing scripted: a model call would get a 500
            replay = target.replay("ticket-1")
            assert fake.call_count == 0
        copied, original = target.get_run("ticket-1"), app.get_run("ticket-1")
        assert replay.status == RunStatus.COMPLETED and replay.output.output == "A-1 has shipped."
        assert copied.steps == original.steps
        assert [s.request for s in copied.steps] == [s.request for s in original.steps]
        assert [str(s.kind) for s in copied.steps].count("checkpoint") == 2  # agent checkpoints came along
        assert copied.output == original.output
        assert (copied.input, copied.usage, copied.cost, copied.code_version, copied.workflow_ref) == (
            original.input,
            original.usage,
            original.cost,
            original.code_version,
            original.workflow_ref,
        )
        assert target.verify("ticket-1") is None  # the hash chain came along intact


def test_a_bundle_carries_every_field_of_the_run_and_its_steps(bundle: bytes) -> None:
    document = json.loads(bundle)
    assert (document["format"], document["format_version"], document["root"]) == ("agentflow-bundle", 1, "ticket-1")
    (entry,) = document["runs"]
    assert set(entry["record"]) == {f.name for f in dataclasses.fields(RunRecord)}
    assert all(set(step) == set(StepRecord._fields) for step in entry["steps"])
    assert "sk-fake" not in bundle.decode()  # secrets are not in the record, so not in the bundle


def test_the_blobs_of_every_model_call_travel_with_the_run(bundle: bytes) -> None:
    from agentflow._llm import read_messages

    document = json.loads(bundle)
    blobs = {h: base64.b64decode(data) for h, data in document["blobs"].items()}
    requests = [json.loads(s["request"]) for s in document["runs"][0]["steps"] if s["kind"] == "llm"]
    assert len(requests) == 2
    for request in requests:
        messages = read_messages(request["messages"], lambda hashes: {h: blobs[h] for h in hashes if h in blobs})
        assert len(messages) == request["n_messages"]  # the chain, followed to its first node
        assert request["tools"] in blobs


def test_the_same_run_exports_the_same_bytes(app: AgentFlow) -> None:
    run_agent(app)
    first = app.export_run("ticket-1")
    assert app.export_run("ticket-1") == first
    assert json.dumps(json.loads(first), sort_keys=True, indent=1, ensure_ascii=False) + "\n" == first.decode()


def test_child_runs_travel_with_their_parent(tmp_path: Path) -> None:
    with AgentFlow(str(tmp_path / "source.db"), clock=FakeClock()) as source:
        for run_id, n in [("parent", 1), ("child-a", 2), ("child-b", 3), ("grandchild", 4), ("other", 5)]:
            source.run(double, n, run_id=run_id)
        source._store.update_run("child-a", {"parent_id": "parent"})
        source._store.update_run("child-b", {"parent_id": "parent"})
        source._store.update_run("grandchild", {"parent_id": "child-a"})
        data = source.export_run("parent")

    assert [entry["record"]["id"] for entry in json.loads(data)["runs"]] == [
        "parent",
        "child-a",
        "grandchild",
        "child-b",
    ]
    with fresh(tmp_path) as target:
        assert target.import_runs(data) == ["parent", "child-a", "grandchild", "child-b"]
        assert target.get_run("grandchild").parent_id == "child-a"
        assert [s.output for s in target.get_run("child-b").steps] == [6]


def test_exporting_an_unknown_run_raises_run_not_found(app: AgentFlow) -> None:
    with pytest.raises(RunNotFound):
        app.export_run("nope")


# -- damaged, foreign and conflicting bundles ----------------------------------------------------------------------


def test_a_bundle_with_any_byte_changed_is_refused_and_imports_nothing(bundle: bytes, app: AgentFlow) -> None:
    for index in range(len(bundle)):
        damaged = bytearray(bundle)
        damaged[index] ^= 0x01  # "a" -> "`", "1" -> "0", '"' -> "#", "\n" -> "\x0b", ...
        with pytest.raises(BundleError):
            app.import_runs(bytes(damaged))
    assert app.list_runs() == []
    hashes = list(json.loads(bundle)["blobs"])
    assert app._store.get_blobs(hashes) == {}


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("a step's output", lambda doc: doc["runs"][0]["steps"][1].update(output='{"status":"lost"}')),
        ("the run", lambda doc: doc["runs"][0]["record"].update(output='"something else"')),
        (
            "a blob",
            lambda doc: doc["blobs"].update({next(iter(doc["blobs"])): base64.b64encode(b"[null,[]]").decode()}),
        ),
        ("the exporting version", lambda doc: doc.update(agentflow_version="9.9.9")),
    ],
)
def test_a_changed_value_is_caught_by_the_checksum(bundle: bytes, app: AgentFlow, where: str, change: Any) -> None:
    document = json.loads(bundle)
    change(document)
    with pytest.raises(BundleError, match="changed or damaged after it was exported: its checksum does not match"):
        app.import_runs(json.dumps(document).encode())
    assert app.list_runs() == []


def test_a_changed_step_output_breaks_the_hash_chain_even_with_a_new_checksum(bundle: bytes, app: AgentFlow) -> None:
    document = json.loads(bundle)
    document["runs"][0]["steps"][1]["output"] = '{"order_id":"A-1","status":"lost"}'
    with pytest.raises(BundleError, match=r"run 'ticket-1' was changed at step 'lookup_order#0' \(its hash chain"):
        app.import_runs(reseal(document))
    assert app.list_runs() == []


def test_a_changed_blob_no_longer_hashes_to_its_name_even_with_a_new_checksum(bundle: bytes, app: AgentFlow) -> None:
    document = json.loads(bundle)
    name = next(iter(document["blobs"]))
    document["blobs"][name] = base64.b64encode(b'[null,[{"role":"user","content":"hi"}]]').decode()
    with pytest.raises(BundleError, match=f"blob {name} does not hash to its name"):
        app.import_runs(reseal(document))


def test_a_bundle_without_a_blob_its_steps_need_is_refused(bundle: bytes, app: AgentFlow) -> None:
    document = json.loads(bundle)
    first_llm = next(s for s in document["runs"][0]["steps"] if s["kind"] == "llm")
    head = json.loads(first_llm["request"])["messages"]
    del document["blobs"][head]
    with pytest.raises(BundleError, match=f"step 'llm#0' of run 'ticket-1' refers to blob {head}, which the bundle"):
        app.import_runs(reseal(document))


NO_FORMAT = 'it has no "format": "agentflow-bundle"'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 a zip file", "is not an agentflow bundle: it is not JSON"),
        (b"\xff\xfe\x00garbage", "is not an agentflow bundle: it is not JSON"),
        (b"", "is not an agentflow bundle: it is not JSON"),
        (b'{"name": "my-package", "version": "1.0.0"}', f"is not an agentflow bundle: {NO_FORMAT}"),
        (b"[1, 2, 3]", f"is not an agentflow bundle: {NO_FORMAT}"),
        (b'{"format": "har", "log": {}}', "is not an agentflow bundle: its \"format\" is 'har'"),
    ],
)  # fmt: skip
def test_a_foreign_file_is_refused_with_a_clear_message(
    tmp_path: Path, app: AgentFlow, content: bytes, message: str
) -> None:
    path = tmp_path / "foreign.json"
    path.write_bytes(content)
    with pytest.raises(BundleError, match="^" + re.escape(f"bundle {path} {message}")):
        app.import_runs(path)
    assert app.list_runs() == []


def test_a_bundle_from_a_newer_format_asks_for_an_upgrade(bundle: bytes, app: AgentFlow) -> None:
    document = json.loads(bundle)
    document.update(format_version=FORMAT_VERSION + 1, agentflow_version="2.0.0")
    newer = (
        rf"format {FORMAT_VERSION + 1}, written by agentflow 2\.0\.0; this agentflow reads format {FORMAT_VERSION} and"
    )
    with pytest.raises(BundleError, match=newer):
        app.import_runs(reseal(document))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda doc: doc.pop("root"), "root: field required"),
        (lambda doc: doc["runs"][0]["record"].pop("status"), "runs.0.record.status: field required"),
        (lambda doc: doc["runs"][0]["steps"][0].update(seq="0"), "runs.0.steps.0.seq: input should be a valid integer"),
        (
            lambda doc: doc["runs"][0]["record"].update(tenant="acme"),
            "runs.0.record.tenant: unknown field (written by a newer agentflow?)",
        ),
    ],
)
def test_a_bundle_with_missing_or_unknown_fields_says_which(
    bundle: bytes, app: AgentFlow, change: Any, problem: str
) -> None:
    document = json.loads(bundle)
    change(document)
    with pytest.raises(BundleError, match="is not a valid agentflow bundle: .*" + re.escape(problem)):
        app.import_runs(reseal(document))


def test_importing_a_bundle_twice_is_a_no_op(bundle: bytes, app: AgentFlow) -> None:
    assert app.import_runs(bundle) == ["ticket-1"]
    before = app.get_run("ticket-1")
    assert app.import_runs(bundle) == ["ticket-1"]
    after = app.get_run("ticket-1")
    assert (after.updated_at, after.steps) == (before.updated_at, before.steps)
    assert len(app.list_runs()) == 1


def test_a_run_id_that_names_another_run_is_refused_and_nothing_is_imported(tmp_path: Path, app: AgentFlow) -> None:
    with AgentFlow(str(tmp_path / "source.db"), clock=FakeClock()) as source:
        source.run(double, 1, run_id="parent")
        source.run(double, 2, run_id="child")
        source._store.update_run("child", {"parent_id": "parent"})
        data = source.export_run("parent")
    app.run(double, 99, run_id="child")  # the target has another run under the child's id

    with pytest.raises(BundleError, match="run 'child' is in this database already, with other content; nothing was"):
        app.import_runs(data)
    assert [run.id for run in app.list_runs()] == ["child"]  # the parent, checked first, was not written either
    assert app.get_run("child").input == {"args": [99], "kwargs": {}}


# -- restarted runs: what the restarts took out travels too -----------------------------------------------------


def register_asker(flow: AgentFlow, question: dict[str, str]) -> Any:
    """A workflow that asks the model ``question["text"]`` (read when a run reaches it)."""

    @flow.workflow(name="asker")
    async def asker(ctx: Context) -> str:
        text = await ctx.step("question", str, question["text"])
        answer = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": text}], **PARAMS)
        return answer.text or ""

    return asker


@pytest.fixture
def restarted(tmp_path: Path) -> tuple[bytes, list[SupersededStep]]:
    """The bundle of a run restarted once: its first question and model call were taken out by the restart
    (the call's message is a blob no current step refers to), and what the source database keeps of them."""
    question = {"text": "Where is A-1?"}
    with AgentFlow(str(tmp_path / "restarted.db"), clock=FakeClock()) as source:
        asker = register_asker(source, question)
        with FakeProvider() as fake:
            fake.script(reply("A-1 has shipped."), reply("B-2 is on its way."))
            assert source.run(asker, run_id="asked").output == "A-1 has shipped."
            question["text"] = "Where is B-2?"
            assert source.restart("asked", from_key="question#0").output == "B-2 is on its way."
        return source.export_run("asked"), source.superseded_steps("asked")


def test_the_records_a_restart_took_out_travel_with_the_run(
    restarted: tuple[bytes, list[SupersededStep]], app: AgentFlow
) -> None:
    data, kept = restarted
    document = json.loads(data)
    assert document["format_version"] == 2  # an agentflow that knows nothing of restarts refuses it, not drops it
    (entry,) = document["runs"]
    assert [(k["restart"], k["record"]["key"]) for k in entry["superseded"]] == [(1, "question#0"), (1, "llm#0")]

    assert app.import_runs(data) == ["asked"]
    assert app.superseded_steps("asked") == kept
    old_call = kept[1].step.request
    [now_call] = [s.request for s in app.get_run("asked").steps if s.key == "llm#0"]
    assert old_call["messages"] != now_call["messages"]
    assert set(app._store.get_blobs([old_call["messages"]])) == {old_call["messages"]}  # its message came along
    register_asker(app, {"text": "Where is B-2?"})
    assert app.replay("asked").matched
    assert app.import_runs(data) == ["asked"] and app.superseded_steps("asked") == kept  # again: a no-op


def test_a_run_never_restarted_is_exported_in_the_format_older_agentflows_read(bundle: bytes) -> None:
    document = json.loads(bundle)
    assert document["format_version"] == 1 and all("superseded" not in entry for entry in document["runs"])


def test_superseded_records_that_are_not_the_runs_or_miss_a_blob_are_refused(
    restarted: tuple[bytes, list[SupersededStep]], app: AgentFlow
) -> None:
    data, kept = restarted
    document = json.loads(data)
    document["runs"][0]["superseded"][0]["record"]["run_id"] = "another"
    with pytest.raises(BundleError, match="run 'asked' holds superseded records of another run"):
        app.import_runs(reseal(document))

    document = json.loads(data)
    old_head = kept[1].step.request["messages"]
    del document["blobs"][old_head]
    with pytest.raises(BundleError, match=f"step 'llm#0' of run 'asked' refers to blob {old_head}"):
        app.import_runs(reseal(document))
    assert app.list_runs() == []


def test_a_run_imported_without_its_superseded_records_conflicts_with_one_that_has_them(
    restarted: tuple[bytes, list[SupersededStep]], app: AgentFlow
) -> None:
    data, _ = restarted
    document = json.loads(data)
    del document["runs"][0]["superseded"]
    document["format_version"] = 1
    assert app.import_runs(reseal(document)) == ["asked"]
    with pytest.raises(BundleError, match="run 'asked' is in this database already, with other content"):
        app.import_runs(data)
    assert app.superseded_steps("asked") == []


def test_a_run_a_restart_took_records_out_of_the_middle_of_exports_and_imports_with_its_chain(
    tmp_path: Path, app: AgentFlow
) -> None:
    with AgentFlow(str(tmp_path / "nested.db"), clock=FakeClock()) as source:
        nested_then_restarted(source)
        data = source.export_run("n")  # before: refused, "its record was changed at step 'side#0'"

    document = json.loads(data)
    [inner] = [k for k in document["runs"][0]["superseded"] if k["record"]["key"] == "outer#0/inner#0"]
    inner["record"]["output"] = "41"
    with pytest.raises(BundleError, match=r"changed at step 'outer#0/inner#0 \(taken out by restart 1\)'"):
        app.import_runs(reseal(document))
    document = json.loads(data)
    document["runs"][0]["superseded"] = [
        k for k in document["runs"][0]["superseded"] if k["record"]["key"] != "outer#0/inner#0"
    ]  # the record side#0 links to
    with pytest.raises(BundleError, match="changed at step 'side#0'"):
        app.import_runs(reseal(document))
    assert app.list_runs() == []

    assert app.import_runs(data) == ["n"]
    assert app.verify("n") is None


# -- events sent to a run travel with it ------------------------------------------------------------------------


def register_approver(flow: AgentFlow) -> Any:
    """A workflow that waits for an "approval" event and says who approved."""

    @flow.workflow(name="approver")
    async def approver(ctx: Context) -> str:
        decision = await ctx.wait_for_event("approval", type="approval")
        return f"approved by {decision['by']}"

    return approver


@pytest.fixture
def approval_sent(tmp_path: Path) -> bytes:
    """The bundle of a run waiting for an approval that was sent, before any process resumed the run."""
    with AgentFlow(str(tmp_path / "waiting.db"), clock=FakeClock()) as source:
        assert source.run(register_approver(source), run_id="w").status == RunStatus.WAITING
        source.send_event("w", "approval", {"by": "ana"})
        return source.export_run("w")


def test_an_event_the_run_has_not_taken_yet_travels_with_it_and_is_taken_after_the_import(
    approval_sent: bytes, app: AgentFlow
) -> None:
    document = json.loads(approval_sent)
    assert document["format_version"] == 3  # an agentflow that knows nothing of events refuses it, not drops it
    [event] = document["runs"][0]["events"]
    assert (event["type"], json.loads(event["payload"]), event["delivered_key"]) == ("approval", {"by": "ana"}, None)

    assert app.import_runs(approval_sent) == ["w"]
    assert app.import_runs(approval_sent) == ["w"]  # again: a no-op, the event is not doubled
    register_approver(app)
    assert app.resume("w").output == "approved by ana"  # before: the run waited for an event already sent
    [taken] = app._store.load_events("w")
    assert taken.delivered_key is not None


def test_an_event_whose_payload_is_not_json_is_refused(approval_sent: bytes, app: AgentFlow) -> None:
    document = json.loads(approval_sent)
    document["runs"][0]["events"][0]["payload"] = "{by: ana"
    with pytest.raises(BundleError, match="event 0 of run 'w' \\('approval'\\) has a payload that is not JSON"):
        app.import_runs(reseal(document))
    assert app.list_runs() == []


# -- the CLI --------------------------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(cli, list(args))


def test_cli_export_then_import_into_a_new_database(tmp_path: Path, db_url: str) -> None:
    with AgentFlow(db_url, clock=FakeClock()) as flow:
        run_agent(flow)
    out = tmp_path / "ticket-1.json"

    exported = invoke("export", "ticket-1", "-o", str(out), "--db", db_url)
    assert exported.exit_code == 0, exported.output
    assert "exported run ticket-1 (support, completed, 5 steps) to " in exported.stdout
    target = tmp_path / "new" / "copy.db"  # neither the file nor its folder exists yet

    imported = invoke("import", str(out), "--db", str(target))
    assert imported.exit_code == 0, imported.output
    assert "imported: run ticket-1 (support, completed, 5 steps)" in imported.stdout
    assert f"agentflow replay ticket-1 --db {target}" in imported.stdout
    again = invoke("import", str(out), "--db", str(target))
    assert again.exit_code == 0 and "already here, unchanged: run ticket-1" in again.stdout
    with AgentFlow(str(target)) as copy:
        assert [s.key for s in copy.get_run("ticket-1").steps][:2] == ["llm#0", "lookup_order#0"]


def test_cli_import_says_how_many_records_restarts_took_out(
    restarted: tuple[bytes, list[SupersededStep]], tmp_path: Path
) -> None:
    bundle_file = tmp_path / "asked.json"
    bundle_file.write_bytes(restarted[0])
    imported = invoke("import", str(bundle_file), "--db", str(tmp_path / "copy.db"))
    assert imported.exit_code == 0, imported.output
    assert "imported: run asked (asker, completed, 2 steps and 2 superseded by restarts)" in imported.stdout
    exported = invoke("export", "asked", "-o", str(tmp_path / "again.json"), "--db", str(tmp_path / "copy.db"))
    assert "exported run asked (asker, completed, 2 steps and 2 superseded by restarts) to " in exported.stdout
    assert (tmp_path / "again.json").read_bytes() == restarted[0]  # the same bytes, carried from database to database


def test_cli_export_to_stdout_writes_the_bundle_itself(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    with AgentFlow(db, clock=FakeClock()) as flow:
        run_agent(flow)
        expected = flow.export_run("ticket-1")
    result = invoke("export", "ticket-1", "-o", "-", "--db", db)
    assert result.exit_code == 0 and result.stdout_bytes == expected


def test_cli_errors_are_one_red_line_and_exit_1(tmp_path: Path, bundle: bytes) -> None:
    damaged = tmp_path / "damaged.json"
    damaged.write_bytes(bundle.replace(b"A-1 has shipped.", b"A-1 has shippeD."))
    result = invoke("import", str(damaged), "--db", str(tmp_path / "t.db"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: bundle {damaged} was changed or damaged after it was exported" in result.stderr

    missing = invoke("export", "ticket-1", "-o", str(tmp_path / "x.json"), "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 1 and "no agentflow database at" in missing.stderr
    assert not (tmp_path / "none.db").exists()  # export only reads

    unknown = invoke("export", "nope", "-o", str(tmp_path / "x.json"), "--db", str(tmp_path / "t.db"))
    assert unknown.exit_code == 1 and "no run with id 'nope'" in unknown.stderr
    assert not (tmp_path / "x.json").exists()


# -- the pytest plugin ----------------------------------------------------------------------------------------

FLOW = """
from agentflow import Context


def lookup(order_id: str) -> str:
    return order_id + ": shipped"


async def triage(ctx: Context, order_id: str) -> str:
    status = await ctx.step("lookup", lookup, order_id)
    return status.upper()
"""


@pytest.fixture(scope="module", autouse=True)
def _modules_loaded_before_pytester(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Record, export and import a run once before any ``pytester`` fixture is set up.

    ``pytester`` removes the modules first imported during a test from ``sys.modules`` when the test ends;
    SQLAlchemy's lazily imported modules, imported again as new objects, then break the next test.
    """
    folder = tmp_path_factory.mktemp("warm")
    with AgentFlow(str(folder / "a.db")) as flow:
        flow.run(double, 1, run_id="w")
        data = flow.export_run("w")
    with AgentFlow(str(folder / "b.db")) as flow:
        flow.import_runs(data)
        flow.register(double)
        flow.replay("w")


def record_bundle(pytester: pytest.Pytester, module: str, source: str = FLOW) -> Path:
    """Write ``module`` in the project, run its ``triage`` workflow once, and export the run to bundles/."""
    pytester.makepyfile(**{module: source})
    pytester.syspathinsert()
    code = importlib.import_module(module)
    try:
        with AgentFlow(str(pytester.path / "record.db")) as flow:
            flow.workflow()(code.triage)
            assert flow.run(code.triage, "A-1", run_id="t-1").output == "A-1: SHIPPED"
            (pytester.path / "bundles").mkdir(exist_ok=True)
            path = pytester.path / "bundles" / "t-1.json"
            flow.export_run("t-1", path)
    finally:
        del sys.modules[module]  # the replay imports the code afresh, as a new process would
    return path


def test_the_plugin_replays_a_matching_bundle_as_a_passing_test(pytester: pytest.Pytester) -> None:
    record_bundle(pytester, "flows_same")
    pytester.makeini("[pytest]\nagentflow_bundles = bundles\n")

    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["bundles/t-1.json::t-1 PASSED*"])


def test_the_plugin_fails_a_bundle_whose_code_changed_with_the_divergence_report(pytester: pytest.Pytester) -> None:
    record_bundle(pytester, "flows_changed")
    pytester.makepyfile(
        flows_changed=FLOW.replace('ctx.step("lookup", lookup, order_id)', 'ctx.step("lookup", lookup, "B-2")')
    )
    pytester.makeini("[pytest]\nagentflow_bundles = bundles\n")

    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*replay of bundle t-1.json: run 't-1' diverged from its record at step 'lookup#0': the step was "
            "called with another request*",
            "*/args/0*'B-2'*",
        ]
    )


def test_the_plugin_takes_the_code_from_agentflow_app_when_it_is_not_where_the_run_says(
    pytester: pytest.Pytester,
) -> None:
    record_bundle(pytester, "flows_old")
    (pytester.path / "flows_old.py").unlink()  # the code moved since the run was recorded
    pytester.makepyfile(flows_new=FLOW + "\n\nfrom agentflow import AgentFlow\n\napp = AgentFlow(':memory:')\n"
                        "app.workflow()(triage)\n")  # fmt: skip

    pytester.makeini("[pytest]\nagentflow_bundles = bundles\n")
    where_recorded = pytester.runpytest_subprocess()
    where_recorded.assert_outcomes(failed=1)
    where_recorded.stdout.fnmatch_lines(
        ["*cannot import 'flows_old' for 'flows_old:triage'*; if the code moved, set the ini option agentflow_app*"]
    )

    pytester.makeini("[pytest]\nagentflow_bundles = bundles\nagentflow_app = flows_new.py:triage\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # a workflow function, in a script relative to rootdir
    pytester.makeini("[pytest]\nagentflow_bundles = bundles\nagentflow_app = flows_new:app\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # an AgentFlow with the workflow registered


def test_the_plugin_fails_a_file_that_is_not_a_bundle_and_ignores_json_elsewhere(pytester: pytest.Pytester) -> None:
    (pytester.path / "bundles").mkdir()
    (pytester.path / "bundles" / "notes.json").write_text('{"todo": []}')
    (pytester.path / "package.json").write_text('{"name": "web"}')
    pytester.makeini("[pytest]\nagentflow_bundles = bundles\n")

    result = pytester.runpytest_subprocess(".")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*bundle *notes.json is not an agentflow bundle: it has no*"])


def test_without_the_ini_option_the_plugin_collects_nothing(pytester: pytest.Pytester, bundle: bytes) -> None:
    (pytester.path / "bundles").mkdir()
    (pytester.path / "bundles" / "t.json").write_bytes(bundle)
    result = pytester.runpytest_subprocess("bundles")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
