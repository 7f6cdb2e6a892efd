"""Worker chaos: real worker processes drain a queue while workers are SIGKILLed at random moments and
replaced (not a test module: ``test_worker_chaos.py`` runs a short session; run long ones by hand).

Where ``crash_stress.py`` crashes a run inside one process at chosen points, this kills whole worker
processes (``agentflow worker``) wherever they are: in a step, in a commit, claiming a run, renewing a lease,
starting up. ``chaos_app.py`` is the app they serve; every execution of a step, a payment or a model call
leaves a line in an effects file first, so the file tells what ran, how often, in which process and in
which order.

A session: ``--runs`` runs of ``chaos`` (``--rounds`` rounds of ``--width`` gathered steps, a payment and a
model call, after a child run that sleeps ``--nap`` s durably; after the first round each run waits for an
event) go on the queue; ``--workers`` workers (``--concurrency`` runs each) drain it; every 0.05-``--gap`` s
(or with ``--lines N``, after 1-N more executions; from ``--seed``) one of them (one that holds a run, if
any does: chosen at random) is SIGKILLed (a share ``--terms`` of the times SIGTERMed instead: a graceful
stop, runs released after ``--grace`` s) and a new one started, ``--kills`` times; then the workers finish
the queue and are stopped with SIGTERM. Meanwhile the harness sends each run its event: some early (kept in
the run's inbox until it waits), the others as soon as it is seen waiting. Each worker's model is a
``FakeProvider`` of its own, called with a random API key. ``--no-llm`` and ``--no-events`` leave those out.
The database is a new SQLite file, or with ``--postgres URL`` a new database on that server (dropped
afterwards, ``crash_stress_db.py``).

Checks (failure types):
  output        every run completed, with the output of an uninterrupted run
  stuck         a run did not complete within the bound (a lease never taken over, a deadlock)
  rerun         a step, payment or model call was executed again after its record was written, by the worker that
                held the run then or by a later one (a stale holder, whose lease ran out while it was
                alive, is noted instead: its write is refused, ``LeaseLost``)
  phantom       a record whose execution is not in the effects file, or two records of one call
  key-changed   a payment executed again under another idempotency key
  key-reuse     one idempotency key given to two payments
  lease         a run's lease tokens do not go 1, 2, 3... (one more again after a release at a SIGTERM); a
                claim came before the previous holder released the run or was killed; the last lease
                did not end "completed"
  chain         a run's hash chain does not hold (``verify``)
  reservations  reservations left by a completed run
  event         a run's event was not delivered exactly once, to its wait
  secret        the API key the workers sent (in any form: text, hex, base64) is somewhere in the database

By hand (from the repository root):
  .venv/bin/python tests/worker_chaos.py [--kills 20] [--workers 3] [--seed 1]
  .venv/bin/python tests/worker_chaos.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_app import API_KEY, QUEUE, event_payload, expected_output, make_app
from crash_stress_db import SeedDatabase
from secret_scan import scan

from agentflow import AgentFlow, RunStatus

APP = Path(__file__).with_name("chaos_app.py")
BOUND = 300.0  # seconds: a run not completed by then is stuck (a guard against a hang, never a wait)

Failure = tuple[str, str]


@dataclass(frozen=True)
class Session:
    runs: int = 40
    rounds: int = 5
    width: int = 3
    workers: int = 3
    concurrency: int = 2
    kills: int = 12
    gap: float = 0.6  # most seconds between two kills
    lines: int = 0  # when set, a kill comes once 1 to this many more executions are in the effects file
    terms: float = 0.0  # the share of the kills that are SIGTERM (a graceful stop) instead of SIGKILL
    grace: float = 0.3  # the workers' --grace: how long a SIGTERMed worker lets its runs go on
    lease: float = 1.5
    nap: float = 0.2  # seconds a child run of each run sleeps durably (0: no child run)
    llm: bool = True  # a model call in each round
    events: bool = True  # each run waits for an event after its first round
    seed: int = 0

    def describe(self) -> str:
        return (
            f"{self.runs} runs of {self.rounds}x{self.width} steps, {self.rounds} payments"
            + (f", {self.rounds} model calls" if self.llm else "")
            + (", an event" if self.events else "")
            + (f" after a child run's {self.nap}s durable sleep" if self.nap else "")
            + f", {self.workers} "
            f"workers x{self.concurrency}, {self.kills} kills, lease {self.lease}s, seed {self.seed}"
        )


@dataclass
class Report:
    session: Session
    kills: list[tuple[int, float]] = field(default_factory=list)  # (pid, when) of each SIGKILL
    stops: int = 0  # SIGTERMs
    released: int = 0  # leases a SIGTERMed worker gave back (its grace was over) for another to take
    failures: list[Failure] = field(default_factory=list)
    notes: list[Failure] = field(default_factory=list)
    executions: int = 0  # lines in the effects file
    taken_over: int = 0  # leases whose holder died holding them (the run was taken over)
    seconds: float = 0.0

    @property
    def kinds(self) -> list[str]:
        return sorted({kind for kind, _ in self.failures})


# ------------------------------------------------------------------------------------------------ session


def run_session(
    session: Session,
    directory: str | os.PathLike[str],
    postgres: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """Run one chaos session in a new database (under ``directory``, or on the Postgres server ``postgres``)
    and check what it left."""
    report = Report(session)
    db = SeedDatabase.new(session.seed, directory, postgres)
    effects = Path(tempfile.mkdtemp(prefix="chaos-", dir=directory)) / "effects.txt"
    api_key = f"sk-chaos-{secrets.token_hex(16)}"
    app = make_app(db.url)
    began = time.monotonic()
    try:
        shape = (session.rounds, session.width, session.nap, session.llm, session.events)
        ids = [app.enqueue("chaos", *shape, queue=QUEUE, run_id=f"r{n:03d}").run_id for n in range(session.runs)]
        events = _Events(app, ids if session.events else [])
        with _workers(db.url, effects, session, api_key) as pool:
            _kill_and_replace(app, pool, effects, session, report, progress, events)
            if not _wait_for(app, ids, events):
                left = [r.id for r in app.list_runs(limit=None) if r.status != RunStatus.COMPLETED]
                report.failures.append(("stuck", f"not completed after {BOUND:.0f} s: {left}"))
        report.seconds = time.monotonic() - began
        lines = effects.read_text().splitlines() if effects.exists() else []
        report.executions = len(lines)
        check(app, ids, lines, report)
        if session.llm:
            for place, forms in scan(db.url, api_key.removeprefix("sk-chaos-")).items():
                report.failures.append(("secret", f"the API key is in {place} ({', '.join(forms)})"))
    finally:
        app.close()
        db.drop()
    return report


class _Pool:
    """The worker processes, replaced as they are killed."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], size: int) -> None:
        self._start = start
        self.procs = [start() for _ in range(size)]
        self.all = list(self.procs)

    def kill(self, index: int, graceful: bool = False) -> int:
        """SIGKILL the worker (or SIGTERM it: it stops claiming, lets its runs end within its grace and
        releases the rest) and start another in its place."""
        proc = self.procs[index]
        if graceful:
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs[index] = self._start()
        self.all.append(self.procs[index])
        return proc.pid


@contextmanager
def _workers(url: str, effects: Path, session: Session, api_key: str) -> Iterator[_Pool]:
    log = effects.with_name("workers.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", "from agentflow._cli import main; main()", "worker", "--app", f"{APP}:app",
             "--queue", QUEUE, "--concurrency", str(session.concurrency), "--lease", str(session.lease),
             "--poll", "0.05", "--grace", str(session.grace)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "AGENTFLOW_DATABASE_URL": url, "CHAOS_EFFECTS": str(effects), API_KEY: api_key},
        )  # fmt: skip

    pool = _Pool(start, session.workers)
    try:
        yield pool
    finally:
        for proc in pool.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in pool.all:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


class _Events:
    """The ``go`` event of each run, sent by the harness: some early, before the run waits for it (kept in
    its inbox), the others when it is seen waiting."""

    def __init__(self, app: AgentFlow, ids: list[str]) -> None:
        self._app = app
        self.pending = set(ids)

    def send(self, run_id: str) -> None:
        self._app.send_event(run_id, "go", event_payload(run_id))
        self.pending.discard(run_id)

    def send_early(self, rng: random.Random) -> None:
        """Send to each run still without its event, one in four of them."""
        for run_id in sorted(self.pending):
            if rng.random() < 0.25:
                self.send(run_id)

    def send_to_waiting(self) -> None:
        """Send to every run now waiting for its event."""
        if self.pending:
            for run in self._app.list_runs(status=RunStatus.WAITING, limit=None):
                if run.id in self.pending and run.waiting_for == "go":
                    self.send(run.id)

    def send_rest(self) -> None:
        for run_id in sorted(self.pending):
            self.send(run_id)


def _kill_and_replace(
    app: AgentFlow, pool: _Pool, effects: Path, session: Session, report: Report, progress: Any, events: _Events
) -> None:
    rng = random.Random(f"chaos:{session.seed}")
    for n in range(session.kills):
        events.send_early(rng)
        if session.lines:  # after some more executions (whatever the machine's speed)
            _wait_for_lines(app, effects, _lines(effects) + rng.randint(1, session.lines), events)
        else:
            time.sleep(rng.uniform(0.05, session.gap))  # the chaos itself: kills at moments nothing chose
            events.send_to_waiting()
        if _all_completed(app):
            progress(f"all runs completed after {n} kills")
            return
        graceful = rng.random() < session.terms
        pid = pool.kill(_victim(app, pool, rng), graceful)
        if graceful:
            report.stops += 1
        else:
            report.kills.append((pid, time.time()))
        done = sum(r.status == RunStatus.COMPLETED for r in app.list_runs(limit=None) if r.parent_id is None)
        how = "SIGTERM" if graceful else "SIGKILL"
        progress(f"{how} {n + 1}/{session.kills}: worker {pid}; {done}/{session.runs} runs completed")


def _victim(app: AgentFlow, pool: _Pool, rng: random.Random) -> int:
    """The worker to kill (its index in the pool): one that holds a run now, if any does."""
    holding = {r.worker.split(":")[1] for r in app.list_runs(limit=None) if r.status == RunStatus.RUNNING and r.worker}
    indexes = [i for i, proc in enumerate(pool.procs) if str(proc.pid) in holding]
    return rng.choice(indexes) if indexes else rng.randrange(len(pool.procs))


def _lines(effects: Path) -> int:
    try:
        return effects.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_for_lines(app: AgentFlow, effects: Path, lines: int, events: _Events) -> None:
    """Poll until the effects file has ``lines`` lines or every run completed, sending their events to the
    runs that wait for one; the bound guards a hang."""
    deadline = time.monotonic() + BOUND
    while _lines(effects) < lines and time.monotonic() < deadline and not _all_completed(app):
        events.send_to_waiting()
        time.sleep(0.005)


def _all_completed(app: AgentFlow) -> bool:
    return all(r.status == RunStatus.COMPLETED for r in app.list_runs(limit=None))


def _wait_for(app: AgentFlow, ids: list[str], events: _Events) -> bool:
    """Poll until every run completed; the bound only guards against a hang."""
    deadline = time.monotonic() + BOUND
    events.send_rest()
    while not _all_completed(app):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class Execution:
    at: int  # its line in the effects file
    kind: str  # step | pay | llm
    call: tuple[str, int, int]  # (run, round, j); a payment's j is -1, a model call's -2
    pid: int
    nonce: str
    key: str = ""  # a payment's idempotency key


def parse(lines: list[str]) -> list[Execution]:
    out = []
    for at, line in enumerate(lines):
        parts = line.split()
        if parts[0] == "step":
            _, run, r, j, pid, nonce = parts
            out.append(Execution(at, "step", (run, int(r), int(j)), int(pid), nonce))
        elif parts[0] == "llm":
            _, run, r, pid, nonce = parts
            out.append(Execution(at, "llm", (run, int(r), -2), int(pid), nonce))
        else:
            _, run, r, pid, nonce, key = parts
            out.append(Execution(at, "pay", (run, int(r), -1), int(pid), nonce, key))
    return out


def check(app: AgentFlow, ids: list[str], lines: list[str], report: Report) -> None:
    session = report.session
    executions = parse(lines)
    by_nonce = {ex.nonce: ex for ex in executions}
    by_call: dict[tuple[str, int, int], list[Execution]] = defaultdict(list)
    for ex in executions:
        by_call[ex.call].append(ex)
    killed = {pid: at for pid, at in report.kills}
    for run_id in ids:
        run = app.get_run(run_id)
        if run.status != RunStatus.COMPLETED:
            report.failures.append(("output", f"{run_id} ended {run.status.value}: {run.error}"))
            continue
        if run.output != expected_output(run_id, session.rounds, session.width, session.nap, session.events):
            report.failures.append(("output", f"{run_id}: {run.output!r}"))
        if session.events:
            _check_event(app, run, report)
        holders = _check_leases(app, run_id, killed, report)
        recorded: dict[tuple[str, int, int], Execution] = {}
        for step in run.steps:
            if step.kind not in ("step", "tool", "child", "llm"):  # the child's record carries its step's nonce
                continue
            nonce = _nonce_of(step.kind, step.output)
            ex = by_nonce.get(nonce) if isinstance(nonce, str) else None
            if ex is None or ex.call[0] != run_id:
                report.failures.append(("phantom", f"{run_id} {step.key}: no execution made {step.output!r}"))
            elif ex.call in recorded:
                report.failures.append(("phantom", f"{run_id} {step.key}: a second record of {ex.call}"))
            else:
                recorded[ex.call] = ex
        for call, ex in recorded.items():
            for later in by_call[call]:
                if later.at <= ex.at:
                    continue
                # a later execution: only a stale holder (its lease ran out while it was alive) may do that
                stale = holders.get(later.pid, 0) < holders.get(ex.pid, 0)
                what = f"{ex.kind} {call} recorded from pid {ex.pid}, executed again by pid {later.pid}"
                (report.notes if stale else report.failures).append(("stale" if stale else "rerun", what))
    for run in app.list_runs(limit=None):  # child runs too
        broken = app.verify(run.id)
        if broken is not None:
            report.failures.append(("chain", f"{run.id}: the hash chain breaks at {broken}"))
        left = app._store.load_reservations(run.id)
        if left:
            report.failures.append(("reservations", f"{run.id}: {left}"))
        if not run.status.is_terminal:
            report.failures.append(("output", f"{run.id} ended {run.status.value}"))
        if run.parent_id is not None and app.leases(run.id):  # a child run a worker claimed (it slept)
            _check_leases(app, run.id, killed, report)
    keys: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
    for call, calls in by_call.items():
        pays = [ex for ex in calls if ex.kind == "pay"]
        for ex in pays:
            keys[ex.key].add(call)
        if len({ex.key for ex in pays}) > 1:
            report.failures.append(("key-changed", f"payment {call} under keys {sorted({ex.key for ex in pays})}"))
    for key, calls in keys.items():
        if len(calls) > 1:
            report.failures.append(("key-reuse", f"key {key} given to {sorted(calls)}"))


def _nonce_of(kind: str, output: Any) -> Any:
    """The NONCE a record carries: a step's (and a child's) in its value, a payment's as its result, a model
    call's as the answer's text."""
    if kind == "llm":
        return output["response"]["choices"][0]["message"]["content"]
    return output["nonce"] if isinstance(output, dict) else output


def _check_event(app: AgentFlow, run: Any, report: Report) -> None:
    """event: the run's one event went to its wait, and the wait's record holds that event."""
    events = [event for event in app._store.load_events(run.id) if event.type == "go"]  # not a child's end
    waits = [step for step in run.steps if step.kind == "event"]
    if len(events) != 1 or len(waits) != 1 or events[0].delivered_key != f"{run.id}:{waits[0].key}":
        report.failures.append(("event", f"{run.id}: events {events}, waits {[s.key for s in waits]}"))
    elif waits[0].output.get("payload") != event_payload(run.id):
        report.failures.append(("event", f"{run.id}: the wait recorded {waits[0].output!r}"))


def _check_leases(app: AgentFlow, run_id: str, killed: dict[int, float], report: Report) -> dict[int, int]:
    """lease: the run's claims in token order, each after the previous holder let go of the run or died.
    The pid of each holder, by its (last) token."""
    leases = app.leases(run_id)
    tokens = [(lease.token, lease.outcome) for lease in leases]
    # one more at each claim, and one more again when a release put the run back on the queue (SIGTERM)
    steps = [b - a - (outcome == "released") for (a, outcome), (b, _) in itertools.pairwise(tokens)]
    if not leases or leases[0].token != 1 or set(steps) - {1}:
        report.failures.append(("lease", f"{run_id}: tokens {tokens}"))
    if not leases or leases[-1].outcome != "completed":
        report.failures.append(("lease", f"{run_id}: the last lease did not end completed: {leases[-1:]}"))
    report.taken_over += sum(lease.outcome is None for lease in leases[:-1])
    report.released += sum(lease.outcome == "released" for lease in leases)
    holders: dict[int, int] = {}
    for before, lease in zip([None, *leases], leases, strict=False):
        pid = int(lease.worker.split(":")[1])
        holders[pid] = lease.token
        if before is None:
            continue
        prev_pid = int(before.worker.split(":")[1])
        claimed = lease.claimed_at.timestamp()
        if before.released_at is not None:
            if claimed < before.released_at.timestamp():
                report.failures.append(("lease", f"{run_id}: token {lease.token} claimed before {before.token} ended"))
        elif prev_pid in killed:
            if claimed < killed[prev_pid]:
                report.failures.append(
                    ("lease", f"{run_id}: token {lease.token} claimed while pid {prev_pid} held it alive")
                )
        else:  # its holder lived on and never let go: its lease ran out (a stall), and it is fenced off
            report.notes.append(("stale", f"{run_id}: token {before.token} of live pid {prev_pid} ran out"))
    return holders


# ------------------------------------------------------------------------------------------------ by hand


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Session()
    for name in ("runs", "rounds", "width", "workers", "concurrency", "kills", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument("--gap", type=float, default=defaults.gap, help="most seconds between two kills")
    parser.add_argument("--lines", type=int, default=0, help="kill after 1 to this many executions instead")
    parser.add_argument("--terms", type=float, default=0.0, help="the share of SIGTERMs among the kills")
    parser.add_argument("--grace", type=float, default=defaults.grace, help="the workers' --grace, seconds")
    parser.add_argument("--lease", type=float, default=defaults.lease, help="the workers' lease, seconds")
    parser.add_argument("--nap", type=float, default=defaults.nap, help="a child run's durable sleep (0: none)")
    parser.add_argument("--no-llm", dest="llm", action="store_false", help="no model calls")
    parser.add_argument("--no-events", dest="events", action="store_false", help="no events")
    parser.add_argument("--postgres", metavar="URL", help="a new database on this Postgres server (dropped after)")
    parser.add_argument("--examples", type=int, default=3, help="failures shown per type")
    args = parser.parse_args(argv)
    session = Session(**{name: getattr(args, name) for name in Session.__dataclass_fields__})
    print(f"{session.describe()}, {'Postgres' if args.postgres else 'SQLite'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="agentflow-chaos-") as directory:
        report = run_session(session, directory, args.postgres, lambda line: print(" ", line, flush=True))
    print(
        f"{len(report.kills)} SIGKILLs, {report.stops} SIGTERMs; leases taken over from a dead worker "
        f"{report.taken_over}, released at a SIGTERM {report.released}; "
        f"{report.executions} executions, {report.seconds:.1f}s: {len(report.failures)} failures, "
        f"{len(report.notes)} notes"
    )
    shown: dict[str, int] = defaultdict(int)
    for kind, msg in [*report.failures, *(("note " + k, m) for k, m in report.notes)]:
        if shown[kind] < args.examples:
            shown[kind] += 1
            print(f"  {kind}: {msg}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
