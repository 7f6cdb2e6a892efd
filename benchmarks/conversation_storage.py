"""How many bytes a recorded conversation takes, against its content and against snapshotting it.

A workflow holds a conversation of 1,000 turns through ``ctx.llm`` on SQLite, against
``agentflow.testing.FakeProvider`` (a fake OpenAI endpoint at the HTTP level, so litellm really runs). Each
turn appends a user message of ~200 bytes, calls the model with the whole conversation so far, and appends
the model's reply (short, ``"ok"``, unless ``--reply-bytes`` says otherwise).

The content is the bytes of the conversation's messages (2 per turn, each counted once), each measured as
its compact JSON. What agentflow stored is read back from the database: the blobs table (hash + data), the
run's rows of ``steps`` and its row of ``runs``, each row counted as the record SQLite stores (its header,
a varint a value, and the values: text and blobs their length, integers 0 to 8 bytes by size, floats 8;
what SQLite's ``dbstat`` calls payload, and the script prints dbstat's totals beside). Blobs and step
records are stored packed (``agentflow._store._packing`` and ``_blob_packing``: digests as 32 bytes, the
JSON every message and response repeats as one byte each, long JSON deflated); the sizes counted are the
packed ones, as they sit in the database. The page slack and the primary keys' indexes are not counted as
stored content; the file's growth, which has them, is printed after.
The baseline, measured in the same run, is what a checkpointer that snapshots the message list stores:
the compact JSON of the whole list at every turn. (LangGraph's SqliteSaver, not measured here, is reported
to take about 111 MB for 1,000 steps of a growing list.)

It takes about 20 s here, three quarters of it inside litellm, whose work per call grows with the length
of the conversation it is given (so does the fake provider's, which parses every request).

Targets: everything stored is at most 2x the content, and so is the message storage alone (the blobs
plus the request column); the bytes a turn adds do not grow with the turn number (the last 100 turns
within 1.2x of the first 100).

    python benchmarks/conversation_storage.py [--turns 1000] [--message-bytes 200] [--reply-bytes 0]
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: no cost-map download

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from agentflow import AgentFlow, Context
from agentflow._store._blob_packing import unpack_blob
from agentflow._store._packing import unpack_json
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"
WORDS = ["order", "refund", "parcel", "invoice", "address", "courier", "delay", "warehouse", "account", "payment"]
RATIO_TARGET = 2.0
GROWTH_TARGET = 1.2
WINDOW = 100  # turns compared at the start and at the end
RUN_ID = "conversation"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def size(message: dict[str, Any]) -> int:
    """A message's bytes: its compact JSON, UTF-8."""
    return len(compact(message).encode())


def sized_message(role: str, prefix: str, target: int, rng: random.Random) -> dict[str, Any]:
    """A message of ``role`` whose compact JSON is ``target`` bytes (or as short as ``prefix`` allows)."""
    text = prefix
    while size({"role": role, "content": text}) < target:
        text += " " + rng.choice(WORDS)
    while size({"role": role, "content": text}) > target and len(text) > len(prefix):
        text = text[:-1]
    return {"role": role, "content": text}


def reply_text(target: int) -> str:
    """The model's reply: ``"ok"``, or a text making the assistant message ``target`` bytes of JSON."""
    if target <= 0:
        return "ok"
    return str(sized_message("assistant", "Noted.", target, random.Random(0))["content"])


class Stored:
    """Reads what the store holds, incrementally: the bytes each turn added (its step and new blobs)."""

    def __init__(self, db: Path, run_id: str) -> None:
        self.conn = sqlite3.connect(db)
        self.run_id = run_id
        self.blob_rowid = 0
        self.seq = -1

    def added(self) -> int:
        """Bytes written since the last call: the records of new blobs and of the run's new steps."""
        total = 0
        blobs = self.conn.execute("SELECT rowid, * FROM blobs WHERE rowid > ?", (self.blob_rowid,))
        for rowid, *row in blobs.fetchall():
            total += row_bytes(row)
            self.blob_rowid = max(self.blob_rowid, rowid)
        steps = self.conn.execute("SELECT * FROM steps WHERE run_id = ? AND seq > ?", (self.run_id, self.seq))
        for row in steps.fetchall():
            total += row_bytes(row)
            self.seq = max(self.seq, row[2])
        return total


def varint_bytes(n: int) -> int:
    """Bytes of SQLite's variable-length integer for ``n`` (7 bits a byte)."""
    return max(1, (n.bit_length() + 6) // 7) if n < 1 << 56 else 9


def serial(value: Any) -> tuple[int, int]:
    """``(serial type, body bytes)`` of a value in SQLite's record format (sqlite.org/fileformat.html)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1 << 63:
        value = int(value)  # a REAL column stores a whole number as an integer
    if value is None:
        return 0, 0
    if isinstance(value, bool | int):
        if value in (0, 1):
            return 8 + int(value), 0
        for kind, width in ((1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (6, 8)):
            if -(1 << (8 * width - 1)) <= value < 1 << (8 * width - 1):
                return kind, width
    if isinstance(value, float):
        return 7, 8
    data = value.encode() if isinstance(value, str) else bytes(value)
    return 2 * len(data) + (13 if isinstance(value, str) else 12), len(data)


def value_bytes(value: Any) -> int:
    """A value's bytes in a row's body."""
    return serial(value)[1]


def header_bytes(row: Sequence[Any]) -> int:
    """A row's record header: its own length, then each value's serial type (varints)."""
    types = sum(varint_bytes(serial(v)[0]) for v in row)
    return varint_bytes(types + 1) + types


def row_bytes(row: Sequence[Any]) -> int:
    """A row's record as SQLite stores it (what dbstat calls its payload): header and body."""
    return header_bytes(row) + sum(value_bytes(v) for v in row)


def checkpointed_size(db: Path) -> int:
    """The database file's size once its WAL is folded back into it."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db.stat().st_size


def converse(db: Path, turns: int, message_bytes: int, reply_bytes: int) -> dict[str, Any]:
    """Run the conversation; return its messages, the bytes each turn added, and where the time went."""
    app = AgentFlow(str(db))
    run_id = RUN_ID
    stored = Stored(db, run_id)
    per_turn: list[int] = []
    final: list[dict[str, Any]] = []
    timed = {"litellm": 0.0, "chain": 0.0}
    interactive = sys.stdout.isatty()
    started = 0.0  # set when the run starts

    @app.workflow(name="conversation")
    async def conversation(ctx: Context, turns: int) -> int:
        rng = random.Random(42)
        messages: list[dict[str, Any]] = []
        for turn in range(1, turns + 1):
            messages.append(sized_message("user", f"Turn {turn}:", message_bytes, rng))
            response = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")
            messages.append(response.message())
            per_turn.append(stored.added())
            if turn % 50 == 0 or turn == turns:
                line = f"  turn {turn:,}/{turns:,}  {time.perf_counter() - started:5.1f} s"
                if interactive:
                    print(f"\r{line}", end="" if turn < turns else "\n", flush=True)
                elif turn % 100 == 0 or turn == turns:
                    print(line, flush=True)
        final.extend(messages)
        return len(messages)

    import litellm

    from agentflow._llm import MessageChain

    # Timing wrappers only (nothing else changes): how much of the run litellm and the message chain take.
    def timing(fn: Callable[..., Any], label: str, is_async: bool) -> Callable[..., Any]:
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                timed[label] += time.perf_counter() - start

        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[label] += time.perf_counter() - start

        return timed_async if is_async else timed_sync

    before = checkpointed_size(db)
    with (
        FakeProvider() as fake,
        mock.patch.object(litellm, "acompletion", timing(litellm.acompletion, "litellm", True)),
        mock.patch.object(MessageChain, "head", timing(MessageChain.head, "chain", False)),
    ):
        fake.default = reply(reply_text(reply_bytes))
        started = time.perf_counter()
        run = app.run(conversation, turns, run_id=run_id)
        elapsed = time.perf_counter() - started
        assert run.status == "completed", run.error
        assert fake.call_count == turns
    stored.conn.close()
    app.close()
    return {
        "messages": final,
        "per_turn": per_turn,
        "elapsed": elapsed,
        "litellm": timed["litellm"],
        "chain": timed["chain"],
        "file_before": before,
        "file_after": checkpointed_size(db),
    }


def components(db: Path) -> tuple[dict[str, int], int]:
    """Bytes stored, by what they hold; and the bytes of the replies' messages inside the outputs."""
    conn = sqlite3.connect(db)
    parts = dict.fromkeys(
        ["nodes", "node JSON", "message JSON", "blob hash", "request", "output", "fingerprint", "chain", "other",
         "headers", "runs"],
        0,
    )  # fmt: skip
    for hash_, data in conn.execute("SELECT hash, data FROM blobs"):
        parts["headers"] += header_bytes((hash_, data))
        node = unpack_blob(data)
        _previous, added = json.loads(node)  # a node: [previous node hash, [the messages a call added]]
        parts["message JSON"] += sum(size(m) for m in added)
        parts["node JSON"] += len(node)
        parts["nodes"] += len(data)
        parts["blob hash"] += len(hash_)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(steps)")]
    replies = 0
    for row in conn.execute("SELECT * FROM steps"):
        parts["headers"] += header_bytes(row)
        for name, value in zip(columns, row, strict=True):
            if name == "output" and value:
                message = json.loads(unpack_json(value) or "")["response"]["choices"][0]["message"]
                replies += size({"role": message["role"], "content": message["content"]})
            if name in ("request", "output", "fingerprint", "chain"):
                parts[name] += value_bytes(value)
            else:
                parts["other"] += value_bytes(value)
    for row in conn.execute("SELECT * FROM runs"):
        parts["runs"] += row_bytes(row)
    conn.close()
    return parts, replies


def dbstat(db: Path) -> list[tuple[str, int, int]] | None:
    """(table or index, bytes of pages, bytes of payload) from SQLite's dbstat, when it is compiled in."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC"
        ).fetchall()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return [(str(name), int(pages), int(payload)) for name, pages, payload in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1000, help="turns of the conversation (default 1000)")
    parser.add_argument("--message-bytes", type=int, default=200, help="JSON bytes of a user message (default 200)")
    parser.add_argument(
        "--reply-bytes", type=int, default=0, help='JSON bytes of the model\'s reply message (default 0: "ok")'
    )
    args = parser.parse_args()
    turns = args.turns
    window = min(WINDOW, turns // 2) or 1
    reply_message = {"role": "assistant", "content": reply_text(args.reply_bytes)}
    print(f"A conversation of {turns:,} turns through ctx.llm on SQLite (FakeProvider: litellm runs for real)")
    print(f"  each turn: a user message of {args.message_bytes} bytes, then the model's reply", end=" ")
    if args.reply_bytes <= 0:
        print(f"{compact(reply_message)} ({size(reply_message)} bytes)")
    else:
        print(f"of {size(reply_message)} bytes")
    print("  (sizes are compact JSON of each message; the model gets the whole conversation every turn)\n")

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "agentflow.db"
        result = converse(db, turns, args.message_bytes, args.reply_bytes)
        parts, replies = components(db)
        stats = dbstat(db)

    messages: list[dict[str, Any]] = result["messages"]
    per_turn: list[int] = result["per_turn"]
    content = sum(size(m) for m in messages)
    # What a snapshotting checkpointer stores: the whole list as the model got it, at every turn.
    naive = sum(len(compact(messages[: 2 * t + 1]).encode()) for t in range(turns))
    messages_stored = parts["nodes"] + parts["blob hash"] + parts["request"]
    everything = sum(parts[name] for name in parts if name not in ("node JSON", "message JSON"))
    ours_per_turn = sum(per_turn)  # what the turns added, read while the run went on (no runs row)

    elapsed, in_litellm, in_chain = result["elapsed"], result["litellm"], result["chain"]
    print(f"\nthe run took {elapsed:.1f} s:")
    print(f"  {in_litellm:6.1f} s inside litellm.acompletion (litellm, respx and the fake provider)")
    print(f"  {in_chain:6.1f} s in agentflow's MessageChain.head (turning the message list into a chain head)")
    print(f"  {elapsed - in_litellm - in_chain:6.1f} s the rest (the rest of recording, the workflow, reading sizes)\n")

    print(f"content: {len(messages):,} messages, {content:,} bytes ({content / turns:.1f} a turn)\n")
    print(f"  {'stored by agentflow':42} {'bytes':>12} {'a turn':>9} {'x content':>10}")

    def line(label: str, value: int, note: str = "") -> None:
        print(f"  {label:42} {value:12,} {value / turns:9.1f} {value / content:9.2f}x  {note}".rstrip())

    line("blobs: the chain's nodes, packed", parts["nodes"])
    line("  their JSON, [prev hash, [messages...]]", parts["node JSON"], "(what the hashes are taken over)")
    line("  the messages' JSON in them", parts["message JSON"], "(each message once: the content)")
    line("blobs: hash column (32 bytes)", parts["blob hash"])
    line("steps.request (chain head, model, params)", parts["request"])
    ok_messages = messages_stored <= RATIO_TARGET * content
    line("= message storage", messages_stored, f"(target <= {RATIO_TARGET:g}x) {'PASS' if ok_messages else 'FAIL'}")
    line("steps.output (the recorded responses)", parts["output"])
    line("  the replies' messages, unpacked", replies, "(packed inside the outputs; also in the next chain node)")
    line("steps.fingerprint", parts["fingerprint"], "(empty: the sha256 of the request, derived when read)")
    line("steps.chain (the audit hash chain)", parts["chain"])
    line("steps: other columns (ids, key, times...)", parts["other"])
    line("record headers (blobs and steps)", parts["headers"], "(a varint a value: its type and length)")
    line("runs: the run's row", parts["runs"])
    ok_all = everything <= RATIO_TARGET * content
    line("= everything", everything, f"(target <= {RATIO_TARGET:g}x) {'PASS' if ok_all else 'FAIL'}")
    if ours_per_turn + parts["runs"] != everything:
        print(f"  (note: the turns added {ours_per_turn:,} bytes as the run went on, plus the runs row)")

    first = sum(per_turn[:window]) / window
    last = sum(per_turn[-window:]) / window
    growth = last / first
    ok_growth = growth <= GROWTH_TARGET
    print(f"\nbytes a turn added, turns 1-{window} vs {turns - window + 1}-{turns}: ", end="")
    print(f"{first:,.1f} / {last:,.1f} = {growth:.3f}x (target <= {GROWTH_TARGET}x) {'PASS' if ok_growth else 'FAIL'}")
    print(f"  smallest turn {min(per_turn):,} bytes, largest {max(per_turn):,}")

    print("\nbaseline: the whole message list's JSON at every turn (a checkpointer that snapshots the list)")
    print(f"  {naive:,} bytes = {naive / content:,.1f}x content = {naive / everything:,.1f}x what agentflow stored")

    before, after = result["file_before"], result["file_after"]
    print(f"\nSQLite file (after a TRUNCATE checkpoint): {before:,} bytes empty, {after:,} after the run ", end="")
    print(f"(+{after - before:,} = {(after - before) / content:.2f}x content)")
    if stats is None:
        print("  (this SQLite has no dbstat: no per-table sizes)")
    else:
        print(f"  {'dbstat (more than one page)':34} {'pages':>12} {'payload':>12}")
        for name, pages, payload in stats:
            if pages > 4096:
                print(f"  {name:34} {pages:12,} {payload:12,}")

    ok = ok_messages and ok_all and ok_growth
    print(f"\n{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
