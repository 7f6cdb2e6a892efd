"""``agentflow demo``: the support agent waits for approval, crashes, resumes and replays, offline.

1. A child process runs the support agent (``agentflow.examples.support_agent``) on a ticket, against the
   offline fake model, printing each step as it is recorded. The refund is above the approval limit, so
   the run stops to wait for a person (status ``waiting``) and the child process exits.
2. A supervisor approves (an ``approval`` event). A second child process wakes the run and is killed
   with SIGKILL right after the refund is recorded: a real crash, nothing runs after it, no cleanup.
3. This process resumes the run: the steps recorded before the crash are served from the database (the
   refund is not paid again), the rest run live.
4. The finished run is replayed strictly, offline: every model call and tool call is served from the
   record, none is made, and the replay must end with the same answer.

The children are this module run as ``python -m agentflow._demo --child start|wake ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._app import AgentFlow
from ._models import RunStatus, Step

__all__ = ["run_demo"]

TICKET = "My kettle from order A-1001 arrived broken. Can I get a refund?"
KILL_AFTER = "issue_refund#0"  # the child dies right after this step is recorded
_KIND_STYLE = {"llm": "magenta", "tool": "cyan", "checkpoint": "dim", "step": "white"}


def _describe(step: Step) -> str:
    """One line saying what a step did, for people who have not seen a record before."""
    out: Any = step.output
    if str(step.kind) == "llm" and isinstance(out, dict):
        message = ((out.get("response") or {}).get("choices") or [{}])[0].get("message") or {}
        calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
        tokens = f"{step.usage.total_tokens} tokens"
        if calls:
            return f"model asks for {', '.join(calls)}  ({tokens})"
        return f"model answers  ({tokens})"
    if str(step.kind) == "tool":
        if step.error is not None:
            return f"error: {step.error.message}"
        return f"-> {_short(out)}"
    if str(step.kind) == "event" and isinstance(out, dict):
        payload = out.get("payload")
        if isinstance(payload, dict) and "approved" in payload:
            verdict = "approved" if payload["approved"] else "declined"
            return f"a person {verdict} the call" + (f" ({payload['by']})" if payload.get("by") else "")
        return f"event received: {_short(payload)}"
    if str(step.kind) == "checkpoint":
        return "agent state saved (" + ("full snapshot" if "snapshot" in (out or {}) else "JSON patch") + ")"
    return _short(out)


def _short(value: Any, limit: int = 70) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _step_line(console: Console, step: Step, how: str) -> None:
    style = _KIND_STYLE.get(str(step.kind), "white")
    line = Text("  ")
    line.append(f"{how:7}", style="green" if how == "live" else "blue")
    line.append(f" {step.key:22}", style=style)
    line.append(f" {_describe(step)}")
    console.print(line, soft_wrap=True)


def _support_example() -> Any:
    """``examples/support_agent.py``, installed as ``agentflow.examples.support_agent``."""
    import importlib

    return importlib.import_module("agentflow.examples.support_agent")


def _setup(db: str, ledger_path: Path) -> tuple[AgentFlow, Any, Any]:
    support = _support_example()
    app = AgentFlow(db)
    ledger = support.RefundLedger(ledger_path)
    agent = support.build_agent(ledger, params={"api_key": "sk-offline-demo"})
    app.register(agent)  # so that this process can resume and replay the agent's runs
    return app, agent, ledger


def _run_child(db: str, run_id: str, ledger_path: Path, phase: str) -> int:
    """A child process. ``start``: run the agent until it waits for approval, then exit. ``wake``: wake
    the approved run and die by SIGKILL right after ``KILL_AFTER`` is recorded."""
    from .testing import FakeProvider

    fake_support_model = _support_example().fake_support_model
    console = Console(highlight=False)
    app, agent, _ = _setup(db, ledger_path)

    def show(_: str, step: Step) -> None:
        _step_line(console, step, "live")
        if phase == "wake" and step.key == KILL_AFTER:
            note = "  ✗ killed (SIGKILL) right after the refund was recorded"
            console.print(Text(note, style="bold red"))
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    app.on_step(show)
    with FakeProvider() as fake:
        fake.default = fake_support_model
        if phase == "start":
            run = app.run(agent, TICKET, run_id=run_id)
            console.print(f"  the run is [blue]{run.status}[/] for {run.waiting_for}: this process can exit")
            return 0 if run.status == RunStatus.WAITING else 1
        app.wake_due()
    return 1  # not reached: the kill comes first


def _child(db: str, run_id: str, ledger_path: Path, phase: str) -> int:
    command = [sys.executable, "-m", "agentflow._demo", "--child", phase, "--db", db, "--run-id", run_id]
    return subprocess.run([*command, "--ledger", str(ledger_path)], check=False).returncode


def run_demo(db: str | None = None, console: Console | None = None) -> int:
    """The demo; returns the exit code (0 when the resumed run completed and its replay matched)."""
    from .testing import FakeProvider

    fake_support_model = _support_example().fake_support_model
    console = console or Console(highlight=False)
    started = time.monotonic()
    db = db or os.environ.get("AGENTFLOW_DATABASE_URL") or str(Path(".agentflow") / "agentflow.db")
    ledger_path = Path(".agentflow") / "demo-refunds.json" if "://" in db else Path(db).parent / "demo-refunds.json"
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    console.print(
        Panel.fit(
            Text.assemble(
                ("agentflow demo", "bold"),
                " — an agent waits for approval, crashes, resumes and replays.\n",
                "Offline: the model is a local fake, no API key.\n",
                f"database: {db}   run: {run_id}\n",
                ("ticket: ", "dim"),
                TICKET,
            )
        )
    )

    console.print(Text("\n1. A child process runs the agent until the refund needs a person's approval", style="bold"))
    if _child(db, run_id, ledger_path, "start") != 0:
        console.print(Text("the run should have stopped to wait for an approval", style="red"))
        return 1

    app, _, ledger = _setup(db, ledger_path)
    with app:
        waiting = app.get_run(run_id)
        console.print(
            f"  the child exited; the run waits in the database, holding no process: [blue]{waiting.status}[/]"
        )

        console.print(Text("\n2. A supervisor approves; a new child process wakes the run and is killed", style="bold"))
        app.send_event(run_id, "approval", {"approved": True, "by": "supervisor"})
        console.print(f"  sent: agentflow send-event {run_id} approval '{{\"approved\": true}}'")
        returncode = _child(db, run_id, ledger_path, "wake")
        if returncode != -signal.SIGKILL:
            console.print(Text(f"the child should have been killed, but it exited with {returncode}", style="red"))
            return 1
        before = app.get_run(run_id)
        console.print(
            f"  the child died (exit {returncode}); the run is [yellow]{before.status}[/] with "
            f"{len(before.steps)} steps recorded"
        )

        console.print(Text("\n3. Resume the run in this process", style="bold"))
        for step in before.steps:
            _step_line(console, step, "served")
        app.on_step(lambda _, step: _step_line(console, step, "live"))
        with FakeProvider() as fake:
            fake.default = fake_support_model
            run = app.resume(run_id)
        if run.status != RunStatus.COMPLETED:
            console.print(Text(f"the resumed run ended {run.status}: {run.error}", style="red"))
            return 1
        refunds = [r for k, r in ledger.refunds().items() if k.startswith(f"{run_id}:")]
        console.print(
            f"  completed: {len(before.steps)} steps came from the record and were not run again, "
            f"{len(run.steps) - len(before.steps)} ran live"
        )
        console.print(f"  refunds paid for this run: [bold]{len(refunds)}[/] (the payments service saw one request)")
        console.print(Panel(run.output.output, title="the agent's answer", title_align="left", expand=False))

        console.print(
            Text("\n4. Replay the run offline, strictly: nothing may run, everything is served", style="bold")
        )
        with FakeProvider() as fake:  # nothing scripted: a model call would fail the replay
            replay = app.replay(run_id)
            model_calls = fake.call_count
        matched = replay.output == run.output and model_calls == 0 and len(ledger.refunds()) >= len(refunds)
        table = Table.grid(padding=(0, 2))
        table.add_row("steps served from the record", str(replay.served))
        table.add_row("model calls made", str(model_calls))
        table.add_row("same answer as the run", "yes" if replay.output == run.output else "NO")
        console.print(Padding(table, (0, 0, 0, 2)))
        verdict = "the replay matched the recorded run" if matched else "the replay did NOT match"
        console.print(Text(f"  {verdict}", style="bold green" if matched else "bold red"))
        console.print(
            f"\nlook at it again: [bold]agentflow show {run_id}[/]"
            + ("" if db == str(Path(".agentflow") / "agentflow.db") else f" --db {db}")
            + f"   ({time.monotonic() - started:.1f} s)"
        )
        return 0 if matched else 1


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentflow._demo")
    parser.add_argument("--child", choices=["start", "wake"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--ledger", required=True)
    args = parser.parse_args(argv)
    if not args.child:
        parser.error("this module is the demo's child process; run `agentflow demo`")
    return _run_child(args.db, args.run_id, Path(args.ledger), args.child)


if __name__ == "__main__":
    sys.exit(_main())
