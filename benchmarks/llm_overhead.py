"""What recording one LLM call costs, with litellm's own time taken out by a baseline from the same run.

The model is ``agentflow.testing.FakeProvider``: a fake OpenAI endpoint at the HTTP level (respx), so
litellm's real request building and response parsing run and nothing reaches the network. For a
conversation of 3 messages and one of 50, in a durable workflow on SQLite (default durability: WAL,
synchronous=NORMAL):

- baseline: raw ``litellm.acompletion(...)`` calls (litellm + respx + the fake's own work);
- durable: ``ctx.llm(...)`` calls with the same messages, parameters and reply, recorded;
- replay: the same run resumed against its record (no provider call at all): time per served call;
- recording alone: ``ctx.llm`` calls while litellm answers at once with a response made beforehand: the
  same recording work, back to back, with warm caches;
- recording alone, spaced: the same, with the calls as far apart as the baseline's calls and the CPU
  spinning in between (a loop reading the clock, touching next to no memory): what the passing of time
  alone does to the recording on this machine. On a shared virtual machine the cache lines of the
  recording path are lost to other tenants over milliseconds even when the process does nothing, so
  this is far above the unspaced figure, and how far varies from hour to hour;
- bare sqlite3 commit, back to back and spaced the same way: the last call's blob and step row inserted and
  committed by plain ``sqlite3`` into a copy of the schema, no agentflow at all: the floor any synchronous
  record on SQLite pays on this machine with its caches warm;
- bare sqlite3 commit, after litellm: the same commit, each right after a raw ``litellm.acompletion``
  (untimed), where a durable call makes its record: litellm's work in between leaves the caches cold, and
  this plain commit alone takes ~110-140 us here, well over half the target, before agentflow does anything.

Baseline and durable calls alternate inside one workflow (raw then durable, durable then raw, ...), each
timed on its own, so the drift of a machine and the state of the heap and the event loop touch both
alike. After a warm-up the heap is frozen out of the garbage collector (``gc.freeze``): otherwise a full
collection of litellm's large heap lands in one call now and then and swamps a round. Overhead per call =
(sum of durable - sum of baseline) / N, pooled over the rounds. Each call sends the conversation's first
L-1 messages unchanged and a new last user message, as an agent does that appends to its conversation:
the message chain finds the shared prefix and writes one new node.

Target: recording overhead at most 200 us per call, for both lengths. On FAIL (or with --breakdown) one
more run with timing wrappers around agentflow's pieces says where a durable call's time goes.

    python benchmarks/llm_overhead.py [--calls 500] [--rounds 3] [--lengths 3,50] [--breakdown]
                                      [--spacings 0,1,4,8]

``--spacings`` (milliseconds) also times the recording alone at each spacing, for the first length.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: no cost-map download

import argparse
import asyncio
import copy
import gc
import inspect
import pkgutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from agentflow import AgentFlow, Context
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"
REPLY = "Sure: the order ships tomorrow and arrives within two working days."
TARGET_US = 200.0
# Sent to the provider by both sides; the key is stripped from the record (never stored).
PARAMS: dict[str, Any] = {"api_key": "sk-fake", "temperature": 0.0}
WARMUP = 20  # calls before the first round: litellm imports parts of itself on its first calls


def conversation(length: int, calls: int) -> list[list[dict[str, Any]]]:
    """The message list of every call: ``length - 1`` shared messages and a new last user message."""
    prefix: list[dict[str, Any]] = [{"role": "system", "content": "You are a support agent for an online shop."}]
    while len(prefix) < length - 1:
        turn = len(prefix)
        if turn % 2:
            prefix.append({"role": "user", "content": f"Question {turn}: where is my order A-{turn:04d}? " + "." * 60})
        else:
            prefix.append({"role": "assistant", "content": f"Answer {turn}: it left the warehouse today. " + "." * 60})
    return [[*prefix, {"role": "user", "content": f"And what about order B-{i:05d}?"}] for i in range(calls)]


class Bench:
    """A workflow making one ``ctx.llm`` call per message list, each timed, with a raw baseline call beside
    each when ``baseline`` is on (a raw call is not recorded, so a replay may leave it out)."""

    def __init__(self, db: Path, lists: list[list[dict[str, Any]]]) -> None:
        self.db = db
        self.app = AgentFlow(str(db))
        self.lists = lists
        self.baseline = True
        self.raw_s: list[float] = []
        self.recorded_s: list[float] = []
        self.replayed = 0
        self.gap = 0.0  # seconds of spinning before each durable call, outside its timing

        @self.app.workflow(name="llm_bench")
        async def llm_bench(ctx: Context, n: int) -> int:
            for i, messages in enumerate(self.lists[:n]):
                if self.baseline and i % 2 == 0:
                    self.raw_s.append(await self._raw(messages))
                if self.gap:
                    spin(self.gap)
                start = time.perf_counter()
                response = await ctx.llm(model=MODEL, messages=messages, **PARAMS)
                self.recorded_s.append(time.perf_counter() - start)
                self.replayed += response.replayed
                if self.baseline and i % 2 == 1:
                    self.raw_s.append(await self._raw(messages))
            return n

        self.workflow = llm_bench

    @staticmethod
    async def _raw(messages: list[dict[str, Any]]) -> float:
        import litellm

        start = time.perf_counter()
        await litellm.acompletion(model=MODEL, messages=messages, max_retries=0, **PARAMS)
        return time.perf_counter() - start

    def live(self, n: int, run_id: str, *, baseline: bool = True) -> tuple[list[float], list[float]]:
        """(baseline seconds, durable seconds) of each call of a new run of ``n`` calls."""
        self.baseline, self.raw_s, self.recorded_s, self.replayed = baseline, [], [], 0
        run = self.app.run(self.workflow, n, run_id=run_id)
        assert run.status == "completed", run.error
        assert self.replayed == 0
        return self.raw_s, self.recorded_s

    def replay(self, run_id: str) -> tuple[list[float], float]:
        """(seconds of each served call, seconds of the whole resume) for a finished run.

        The run is marked ``running`` again, as a crash after its last step would leave it, and resumed:
        every call is served from the record.
        """
        conn = sqlite3.connect(self.db)
        with conn:
            conn.execute("UPDATE runs SET status = 'running' WHERE id = ?", (run_id,))
        conn.close()
        self.baseline, self.raw_s, self.recorded_s, self.replayed = False, [], [], 0
        start = time.perf_counter()
        run = self.app.resume(run_id)
        whole = time.perf_counter() - start
        assert run.status == "completed", run.error
        assert self.replayed == len(self.recorded_s), "a call was not served from the record"
        return self.recorded_s, whole


def spin(seconds: float) -> None:
    """Busy-wait ``seconds``: time passes, the CPU stays busy, next to no memory is touched."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def settle_heap() -> None:
    """Move what is alive after the warm-up (litellm's modules, mostly) out of the collector's sight.

    Otherwise a full collection of that heap (up to ~250 ms) lands in one call now and then and swamps a
    round's figure; the collections the measured calls cause themselves still count.
    """
    gc.collect()
    gc.freeze()
    if os.environ.get("NOGC"):
        gc.disable()


def measure(folder: Path, length: int, calls: int, rounds: int, fake: FakeProvider) -> dict[str, Any]:
    """Microseconds per call for one conversation length, pooled over the rounds."""
    bench = Bench(folder / f"len{length}.db", conversation(length, calls))
    raw: list[float] = []
    durable: list[float] = []
    served: list[float] = []
    resumes: list[float] = []
    per_round: list[float] = []
    try:
        bench.live(WARMUP, f"warmup-{length}")
        settle_heap()
        for r in range(rounds):
            before = fake.call_count
            raw_s, durable_s = bench.live(calls, f"run-{length}-{r}")
            assert fake.call_count - before == 2 * calls
            served_s, whole = bench.replay(f"run-{length}-{r}")
            assert fake.call_count - before == 2 * calls, "a replayed call reached the provider"
            raw += raw_s
            durable += durable_s
            served += served_s
            resumes.append(whole / calls)
            per_round.append((sum(durable_s) - sum(raw_s)) / calls * 1e6)
        alone = recording_alone(bench, length, calls)
        spaced = recording_alone(bench, length, calls, gap=statistics.fmean(raw))
        floor_db = folder / f"floor{length}.db"
        floor = sqlite_floor(floor_db, bench.db, calls)
        floor_spaced = sqlite_floor(floor_db, bench.db, calls, gap=statistics.fmean(raw))
        floor_litellm = sqlite_floor(floor_db, bench.db, calls, between=bench.lists[0])
    finally:
        gc.unfreeze()
        bench.app.close()
    us = 1e6
    return {
        "raw": statistics.fmean(raw) * us,
        "durable": statistics.fmean(durable) * us,
        "overhead": (sum(durable) - sum(raw)) / len(durable) * us,
        "overhead_median": (statistics.median(durable) - statistics.median(raw)) * us,
        "rounds": per_round,
        "served": statistics.fmean(served) * us,
        "served_median": statistics.median(served) * us,
        "resume": statistics.median(resumes) * us,
        "alone": statistics.fmean(alone) * us,
        "spaced": statistics.fmean(spaced) * us,
        "floor": floor,
        "floor_spaced": floor_spaced,
        "floor_litellm": floor_litellm,
    }


def recording_alone(bench: Bench, length: int, calls: int, *, gap: float = 0.0) -> list[float]:
    """Seconds of each ``ctx.llm`` call when litellm answers at once with a response made beforehand: the
    same recording work, back to back. With ``gap``, the calls are that many seconds apart, spent
    spinning."""
    import litellm

    made = asyncio.run(litellm.acompletion(model=MODEL, messages=bench.lists[0], max_retries=0, **PARAMS))

    async def at_once(**_kwargs: Any) -> Any:
        return copy.copy(made)

    with mock.patch.object(litellm, "acompletion", at_once):
        bench.gap = gap
        try:
            _, durable_s = bench.live(calls, f"alone-{length}-{gap:.4f}", baseline=False)
        finally:
            bench.gap = 0.0
    return durable_s


def spaced_alone(folder: Path, length: int, calls: int, gap: float) -> list[float]:
    """``recording_alone`` with ``gap`` seconds between calls, in a database of its own."""
    bench = Bench(folder / f"spaced{length}-{gap:.4f}.db", conversation(length, calls))
    try:
        bench.live(WARMUP, "warmup", baseline=False)
        settle_heap()
        return recording_alone(bench, length, calls, gap=gap)
    finally:
        gc.unfreeze()
        bench.app.close()


# -- where the time goes ------------------------------------------------------------------------------------


class Timers:
    """Wall time spent inside chosen functions, patched with timing wrappers while active."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._patches: list[Any] = []

    def wrap(self, target: str, label: str) -> None:
        owner_path, _, attribute = target.rpartition(".")
        owner = pkgutil.resolve_name(owner_path)
        original = getattr(owner, attribute)
        self.seconds[label] = 0.0

        if inspect.iscoroutinefunction(original):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.seconds[label] += time.perf_counter() - start

            wrapper: Any = timed_async
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.seconds[label] += time.perf_counter() - start

            wrapper = timed
        patcher = mock.patch.object(owner, attribute, wrapper)
        patcher.start()
        self._patches.append(patcher)

    def stop(self) -> None:
        for patcher in reversed(self._patches):
            patcher.stop()
        self._patches.clear()


def sqlite_floor(
    floor_db: Path, db: Path, calls: int, gap: float = 0.0, between: list[dict[str, Any]] | None = None
) -> float:
    """Microseconds for a bare sqlite3 INSERT of the last recorded call's blobs and step row + COMMIT,
    in WAL / synchronous=NORMAL, into a copy of the schema: the database's own floor for one record.
    With ``gap``, the commits are that many seconds apart, spent spinning (outside their timing). With
    ``between`` (a message list), each commit follows a raw ``litellm.acompletion`` of it (outside their
    timing), as a durable call's record follows its litellm call."""
    src = sqlite3.connect(db)
    schema = [row[0] for row in src.execute("SELECT sql FROM sqlite_master WHERE name IN ('steps', 'blobs')")]
    step = src.execute("SELECT * FROM steps ORDER BY seq DESC LIMIT 1").fetchone()
    blob = src.execute("SELECT hash, data FROM blobs ORDER BY rowid DESC LIMIT 1").fetchone()
    src.close()
    floor_db.unlink(missing_ok=True)
    conn = sqlite3.connect(floor_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for sql in schema:
        conn.execute(sql)
    step_sql = f"INSERT INTO steps VALUES ({', '.join('?' * len(step))})"
    blob_sql = "INSERT INTO blobs VALUES (?, ?) ON CONFLICT (hash) DO NOTHING"

    async def commits() -> float:
        import litellm

        elapsed = 0.0
        for i in range(calls):
            if gap:
                spin(gap)
            if between is not None:
                await litellm.acompletion(model=MODEL, messages=between, max_retries=0, **PARAMS)
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(blob_sql, (i.to_bytes(32, "big"), blob[1]))
            conn.execute(step_sql, (step[0], f"llm#{i}", *step[2:]))
            conn.execute("COMMIT")
            elapsed += time.perf_counter() - start
        return elapsed

    try:
        return asyncio.run(commits()) / calls * 1e6
    finally:
        conn.close()


def breakdown(folder: Path, length: int, calls: int, raw_us: float) -> list[str]:
    """Lines saying where a durable call's time goes, from one more run with timing wrappers."""
    db = folder / f"breakdown{length}.db"
    bench = Bench(db, conversation(length, calls))
    timers = Timers()
    try:
        bench.live(WARMUP, "warmup", baseline=False)
        settle_heap()
        timers.wrap("agentflow._context.prepare_llm_call", "prepare")
        timers.wrap("agentflow._llm.MessageChain.head", "chain")
        timers.wrap("agentflow._engine.RunEngine.begin", "begin")
        timers.wrap("agentflow._context.call_llm", "call")
        timers.wrap("litellm.acompletion", "litellm")
        timers.wrap("agentflow._llm_calls._cost", "cost")
        timers.wrap("agentflow._llm_calls._json", "output_json")
        timers.wrap("agentflow._engine.RunEngine.record", "record")
        timers.wrap("agentflow._store._sql.SQLStore.write_step", "sql")
        _, durable_s = bench.live(calls, "timed", baseline=False)
    finally:
        timers.stop()
        gc.unfreeze()
        bench.app.close()
    floor = sqlite_floor(folder / f"floor{length}.db", db, calls)
    floor_litellm = sqlite_floor(folder / f"floor{length}.db", db, calls, between=bench.lists[0])
    us = {label: seconds / calls * 1e6 for label, seconds in timers.seconds.items()}
    us["total"] = sum(durable_s) / calls * 1e6
    after = us["call"] - us["litellm"] - us["cost"] - us["output_json"] - us["record"]
    ours = us["total"] - us["litellm"]
    rows = [
        ("prepare_llm_call", us["prepare"], ""),
        ("  MessageChain.head", us["chain"], "prefix compare, hash new nodes, JSON copy of the whole list"),
        ("  RunEngine.begin", us["begin"], "canonical JSON of the request, sha256, journal lookup"),
        ("  the rest of prepare", us["prepare"] - us["chain"] - us["begin"], "plain messages, secrets, kwargs"),
        ("litellm.completion_cost", us["cost"], "_cost(response); litellm priced it already (_hidden_params)"),
        ("the response to data, from_raw", after, "the response's pydantic serializer, LLMResponse.from_raw"),
        ("JSON of the output", us["output_json"], "pydantic_core.to_json({'response': raw})"),
        ("RunEngine.record", us["record"], ""),
        (
            "  SQLStore.write_step",
            us["sql"],
            f"INSERT blobs + step, COMMIT (bare sqlite3: {floor:.0f}, after litellm {floor_litellm:.0f})",
        ),
        ("  the rest of record", us["record"] - us["sql"], "chain hash, StepRecord"),
        ("outside the pieces above", us["total"] - us["prepare"] - us["call"], "ctx.llm itself, asyncio"),
        ("agentflow's own time", ours, "all of the above"),
        ("litellm.acompletion", us["litellm"], f"inside ctx.llm; the paired baseline averaged {raw_us:.1f}"),
    ]
    lines = [f"where a durable call's time goes, conversation of {length} messages (us per call, timers on):"]
    lines += [f"  {label:32} {value:8.1f}   {note}".rstrip() for label, value, note in rows]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="durable calls per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, pooled (default 3)")
    parser.add_argument("--lengths", default="3,50", help="conversation lengths, comma-separated (default 3,50)")
    parser.add_argument(
        "--breakdown", action="store_true", help="say where a durable call's time goes (always done on FAIL)"
    )
    parser.add_argument("--spacings", default="", help="ms between calls of the recording alone, e.g. 0,1,4,8")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"{args.calls} calls x {args.rounds} rounds a length; FakeProvider replies {REPLY!r}")
    print("SQLite, default durability (WAL, synchronous=NORMAL); times are per call, means unless said\n")
    ok = True
    baselines: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeProvider() as fake:
        fake.default = reply(REPLY)
        for length in lengths:
            m = measure(Path(tmp), length, args.calls, args.rounds, fake)
            baselines[length] = m["raw"]
            passed = m["overhead"] <= TARGET_US
            ok &= passed
            rounds = ", ".join(f"{x:.0f}" for x in m["rounds"])
            print(f"conversation of {length} messages (one new message a call)")
            print(f"  raw litellm.acompletion (baseline)  {m['raw']:8.1f} us")
            print(f"  durable ctx.llm                     {m['durable']:8.1f} us   = {m['durable'] / m['raw']:.2f}x")
            print(f"  recording overhead                  {m['overhead']:8.1f} us   (target <= {TARGET_US:.0f} us)")
            print(f"    by round: {rounds}; difference of the medians: {m['overhead_median']:.1f} us")
            print(f"  replayed ctx.llm (served)           {m['served']:8.1f} us   (median {m['served_median']:.1f})")
            print(f"  whole resume / calls                {m['resume']:8.1f} us   (loading the record included)")
            print(
                f"  recording alone                     {m['alone']:8.1f} us   (litellm answers at once, back to back)"
            )
            print(
                f"  recording alone, spaced             {m['spaced']:8.1f} us   (calls {m['raw'] / 1000:.1f} ms apart, "
                "spinning in between: time alone)"
            )
            print(
                f"  bare sqlite3 commit                 {m['floor']:8.1f} us   (the same blob and step row, no "
                "agentflow: the database's floor)"
            )
            print(f"  bare sqlite3 commit, spaced         {m['floor_spaced']:8.1f} us   (as far apart as the calls)")
            print(
                f"  bare sqlite3 commit, after litellm  {m['floor_litellm']:8.1f} us   (each after a raw litellm "
                "call, as a record is: the floor in place)"
            )
            print(f"  {'PASS' if passed else 'FAIL'}\n")
        if args.spacings:
            print(f"recording alone by spacing, conversation of {lengths[0]} messages (spinning between calls):")
            for ms in (float(x) for x in args.spacings.split(",")):
                us_per_call = statistics.fmean(spaced_alone(Path(tmp), lengths[0], args.calls, ms / 1000)) * 1e6
                print(f"  {ms:5.1f} ms apart                      {us_per_call:8.1f} us")
            print()
        if args.breakdown or not ok:
            for length, raw_us in baselines.items():
                print("\n".join(breakdown(Path(tmp), length, args.calls, raw_us)), end="\n\n")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
