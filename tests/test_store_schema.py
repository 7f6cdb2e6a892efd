"""The migrations build exactly the tables in ``_tables.py``, and the schema version is checked at open.

``test_migrations_build_exactly_the_models_schema`` is the one that fails when someone changes
``_tables.py`` without writing a migration (or writes a migration that does not match).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from dbtools import execute, table_names
from sqlalchemy import Column, Connection, MetaData, String, create_engine
from sqlalchemy.pool import NullPool

import agentflow._store._schema as schema
import agentflow._store.migrations as migrations_package
from agentflow import AgentFlow, Context, RunStatus
from agentflow._chain import chain_hash, genesis
from agentflow._codec import fingerprint
from agentflow._store._open import open_store
from agentflow._store._records import STEP_COLUMNS, StepRecord
from agentflow._store._schema import HEAD, REVISIONS, VERSION_TABLE, migration_transaction
from agentflow._store._sql import normalize_url
from agentflow._store._tables import metadata
from agentflow.testing import FakeProvider, reply

MIGRATIONS = Path(migrations_package.__file__).parent


def _diff(conn: Connection, target: MetaData) -> list[Any]:
    """What autogenerate would write to bring the database at ``conn`` to ``target``; [] when they match."""
    mc = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
    diff = compare_metadata(mc, target)
    # A table removal shows up as ("remove_table", Table); everything else as tuples naming the table.
    return [d for d in diff if VERSION_TABLE not in repr(d)]


def test_migrations_build_exactly_the_models_schema(db_url: str) -> None:
    store = open_store(db_url)
    try:
        with store.engine.connect() as conn:
            assert _diff(conn, metadata) == []

            # The comparison sees differences: one extra model column is reported.
            changed = MetaData()
            for table in metadata.sorted_tables:
                table.to_metadata(changed)
            changed.tables["runs"].append_column(Column("not_migrated", String))
            assert [(d[0], d[2], d[3].name) for d in _diff(conn, changed)] == [("add_column", "runs", "not_migrated")]
    finally:
        store.close()


def test_revisions_list_the_migration_scripts_in_order() -> None:
    scripts = ScriptDirectory(str(MIGRATIONS))
    oldest_first = [script.revision for script in reversed(list(scripts.walk_revisions()))]

    assert list(REVISIONS) == oldest_first
    assert scripts.get_heads() == [HEAD]
    assert REVISIONS[-1] == HEAD


def test_opening_an_up_to_date_database_does_not_migrate(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_migration(*args: object) -> None:
        raise AssertionError("migrate() was called")

    with monkeypatch.context() as patch:
        patch.setattr(schema, "migrate", no_migration)
        # The patch is live: a new database must be migrated, so this open reaches it.
        with pytest.raises(AssertionError, match="migrate"):
            AgentFlow(db_url)

    AgentFlow(db_url).close()  # migrates for real

    monkeypatch.setattr(schema, "migrate", no_migration)
    with AgentFlow(db_url) as app:
        assert app.list_runs() == []
    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]


def test_opening_an_up_to_date_database_does_not_import_alembic(tmp_path: Path) -> None:
    path = tmp_path / "agentflow.db"
    AgentFlow(str(path)).close()
    code = (
        "import sys\n"
        "from agentflow import AgentFlow\n"
        f"AgentFlow({str(path)!r}).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_empty_database_is_migrated_to_head_at_open(db_url: str) -> None:
    assert table_names(db_url) == set()

    open_store(db_url).close()

    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
    assert table_names(db_url) == {
        "runs",
        "steps",
        "blobs",
        "facts",
        "events",
        "leases",
        "rate_buckets",
        "evals",
        "eval_cases",
        "reservations",
        "superseded_steps",
        VERSION_TABLE,
    }


def _migrate_to(db_url: str, revision: str, *, down: bool = False) -> None:
    """Bring the database at ``db_url`` up (or ``down``) to ``revision`` with Alembic, as an older agentflow
    left it."""
    from alembic import command
    from alembic.config import Config

    engine = create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        with migration_transaction(engine) as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        engine.dispose()


@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_a_database_at_an_older_revision_is_migrated_to_head_at_open_and_keeps_its_runs(
    db_url: str, start: str
) -> None:
    _migrate_to(db_url, start)
    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(start,)]
    execute(
        db_url,
        "INSERT INTO runs (id, workflow, status, input, output, created_at, updated_at) "
        "VALUES ('old', 'triage', 'completed', '{\"args\":[],\"kwargs\":{}}', '42', 1.0, 2.0)",
    )

    with AgentFlow(db_url) as app:
        run = app.get_run("old")
        assert (run.status, run.output) == (RunStatus.COMPLETED, 42)

    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
    store = open_store(db_url)
    try:
        with store.engine.connect() as conn:
            assert _diff(conn, metadata) == []
        store.put_fact("agent", "language", '"fr"', "old")
        assert store.get_facts("agent") == {"language": '"fr"'}
    finally:
        store.close()


def test_migrating_0001_to_0002_adds_the_facts_table(db_url: str) -> None:
    _migrate_to(db_url, "0001_initial")
    assert "facts" not in table_names(db_url)

    open_store(db_url).close()

    assert "facts" in table_names(db_url)
    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]


def _old_steps(run_id: str) -> list[StepRecord]:
    """Step records as an agentflow before 0007 wrote them (text columns), with a valid hash chain."""
    output = json.dumps(
        {"response": {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "note": "x" * 90}}
    )
    rows: list[StepRecord] = []
    previous = genesis(run_id)
    for seq, (key, kind, out, error) in enumerate(
        [
            ("fetch#0", "step", '{"ok":1}', None),
            ("llm#0", "llm", output, None),
            ("send#0", "tool", None, '{"type":"E"}'),
        ]
    ):
        request = json.dumps({"key": key, "args": [seq]})
        fp = fingerprint(request)
        status = "failed" if error else "completed"
        chain = chain_hash(previous, key, kind, fp, status, out, error)
        rows.append(
            StepRecord(run_id, key, seq, kind, kind, fp, request, status, 1, out, error, 1.0, 2.0, 3, 4, 0.5, chain)
        )
        previous = chain
    return rows


def test_steps_written_before_0007_read_the_same_and_their_chain_verifies_after_it(db_url: str) -> None:
    _migrate_to(db_url, "0006_evals")
    execute(
        db_url,
        "INSERT INTO runs (id, workflow, status, input, output, created_at, updated_at) "
        "VALUES ('old', 'triage', 'completed', '{\"args\":[],\"kwargs\":{}}', '42', 1.0, 2.0)",
    )
    old = _old_steps("old")
    columns = ", ".join(STEP_COLUMNS)
    for step in old:
        execute(db_url, f"INSERT INTO steps ({columns}) VALUES (:{', :'.join(STEP_COLUMNS)})", **step._asdict())

    with AgentFlow(db_url) as app:
        assert app.verify("old") is None
        assert [s.key for s in app.get_run("old").steps] == ["fetch#0", "llm#0", "send#0"]
    store = open_store(db_url)
    try:
        assert store.load_steps("old") == old
    finally:
        store.close()


def test_downgrading_to_0006_turns_packed_steps_back_into_text(db_url: str) -> None:
    with AgentFlow(db_url) as app:

        @app.workflow(name="long")
        def long(ctx: Context) -> str:
            ctx.step("message", lambda: {"role": "user", "content": "Where is my order A-1002, please?"})
            return str(ctx.step("make", lambda: "the order ships tomorrow " * 50))

        assert app.run(long, run_id="new").status == RunStatus.COMPLETED
    store = open_store(db_url)
    try:
        recorded = store.load_steps("new")
    finally:
        store.close()
    raw = execute(db_url, "SELECT output, fingerprint, chain FROM steps WHERE run_id = 'new' ORDER BY seq")
    # Packed at head: fragments as tokens (under 1 KiB), deflated (over); the fingerprint left to be derived
    # from the request, the chain as 32 bytes.
    assert [bytes(output)[:1] for output, _, _ in raw] == [b"\x02", b"\x01"]
    assert [(len(bytes(fp)), len(bytes(chain))) for _, fp, chain in raw] == [(0, 32), (0, 32)]

    _migrate_to(db_url, "0006_evals", down=True)
    columns = ", ".join(STEP_COLUMNS)
    rows = execute(db_url, f"SELECT {columns} FROM steps WHERE run_id = 'new' ORDER BY seq")
    assert [StepRecord(*row) for row in rows] == recorded


def _chat(app: AgentFlow) -> Any:
    @app.workflow(name="chat")
    async def chat(ctx: Context) -> str:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "Answer in one word."}]
        for question in ("Where is order A-1002?", "And A-1003?", "Thanks!"):
            messages.append({"role": "user", "content": question})
            answer = await ctx.llm(model="gpt-4o-mini", messages=messages, api_key="sk-fake")
            messages.append(answer.message())
        return str(answer.text)

    return chat


def test_message_blobs_survive_a_downgrade_to_0007_and_the_upgrade_back(db_url: str) -> None:
    with FakeProvider() as fake, AgentFlow(db_url) as app:
        fake.default = reply("Shipped.")
        assert app.run(_chat(app), run_id="chat").status == RunStatus.COMPLETED
        recorded = app._store.load_steps("chat")
        heads = [json.loads(step.request or "{}")["messages"] for step in recorded]
        blobs = app._store.get_blobs(heads)
        assert len(blobs) == 3 and all(head in blobs for head in heads)
    packed = execute(db_url, "SELECT hash, data FROM blobs")
    assert {(len(bytes(h)), bytes(data)[:1]) for h, data in packed} <= {(32, b"\x04"), (32, b"\x05")}

    _migrate_to(db_url, "0007_packed_steps", down=True)
    # As 0007 keeps them: text keys, the nodes' JSON, every fingerprint stored, no message head in bytes.
    plain = dict(execute(db_url, "SELECT hash, data FROM blobs"))
    assert {h: bytes(data) for h, data in plain.items() if h in blobs} == blobs and len(plain) == 3
    rows = execute(db_url, "SELECT fingerprint, request FROM steps WHERE run_id = 'chat' ORDER BY seq")
    assert [(len(bytes(fp)), bytes(request)[:1]) for fp, request in rows] == [(32, b"\x02")] * 3

    with AgentFlow(db_url) as app:  # migrated to head again at open
        assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
        assert app._store.load_steps("chat") == recorded
        assert app._store.get_blobs(heads) == blobs
        assert app.verify("chat") is None
        _chat(app)
        replay = app.replay("chat")
        assert replay.matched and replay.served == 3


def test_a_blob_key_that_is_not_a_blob_hash_stops_the_upgrade_and_changes_nothing(db_url: str) -> None:
    _migrate_to(db_url, "0007_packed_steps")
    odd = hashlib.sha256(b"x").hexdigest()
    execute(db_url, "INSERT INTO blobs (hash, data, size) VALUES (:h, :d, 1)", h=odd, d=b"x")

    with pytest.raises(Exception, match="is not a blob hash"):
        _migrate_to(db_url, HEAD)
    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [("0007_packed_steps",)]
    assert [(h, bytes(d)) for h, d in execute(db_url, "SELECT hash, data FROM blobs")] == [(odd, b"x")]
