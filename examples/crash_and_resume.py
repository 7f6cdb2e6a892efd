"""A support-ticket workflow that is killed halfway through and resumed: nothing that finished runs twice.

    python examples/crash_and_resume.py [--db PATH]

1. Runs the workflow in a child process, which is SIGKILLed (a real, uncatchable kill) inside step 4.
2. Resumes the run in this process: steps 1-3 come from the record, the rest run live.
3. Runs the same run id once more: the recorded run comes back and nothing executes.
4. Replays the run strictly: the workflow's code runs again against the record, executing nothing.
Offline, no API key: the steps are plain Python functions. Uses the embedded SQLite default.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentflow import AgentFlow, Context, RetryPolicy

STEPS = ["classify", "lookup_account", "check_history", "draft_reply", "send_reply"]
KILL_IN = "draft_reply"


def build(db: str, effects: Path, kill: bool) -> tuple[AgentFlow, object]:
    """The app and its workflow; each step writes a line to ``effects`` so we can count what ran."""

    def did(name: str) -> None:
        with effects.open("a") as f:
            f.write(name + "\n")

    def classify(ticket: str) -> str:
        did("classify")
        return "refund" if "never came" in ticket else "question"

    def lookup_account(customer: str) -> dict[str, object]:
        did("lookup_account")
        return {"customer": customer, "tier": "gold", "orders": 14}

    def check_history(account: dict[str, object]) -> int:
        did("check_history")
        return 0 if account["tier"] == "gold" else 2

    def draft_reply(category: str, complaints: int) -> str:
        did("draft_reply")
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies here, mid-step
        return f"Sorry about your order: we are processing a {category} (prior complaints: {complaints})."

    def send_reply(text: str) -> str:
        did("send_reply")
        return f"sent {len(text)} characters"

    app = AgentFlow(db)

    @app.workflow(name="triage")
    async def triage(ctx: Context, ticket: str, customer: str) -> dict[str, str]:
        category = await ctx.step("classify", classify, ticket)
        account = await ctx.step("lookup_account", lookup_account, customer)
        complaints = await ctx.step("check_history", check_history, account)
        reply = await ctx.step("draft_reply", draft_reply, category, complaints)
        receipt = await ctx.step("send_reply", send_reply, reply, retry=RetryPolicy(max_attempts=3))
        return {"category": category, "reply": reply, "receipt": receipt}

    return app, triage


def counts(effects: Path) -> Counter[str]:
    return Counter(effects.read_text().split()) if effects.exists() else Counter()


def child(db: str, run_id: str, effects: Path) -> None:
    app, triage = build(db, effects, kill=True)
    app.run(triage, "my order never came", "cust-7", run_id=run_id)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.path.join(".agentflow", "agentflow.db"))
    parser.add_argument("--child", nargs=2, metavar=("RUN_ID", "EFFECTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.child[0], Path(args.child[1]))
        return 0

    console = Console(highlight=False)
    run_id = f"ticket-{uuid.uuid4().hex[:8]}"
    effects = Path(args.db).parent / f"{run_id}.effects"
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]agentflow[/] durable run demo — database: {args.db}, run id: [cyan]{run_id}[/]\n")

    console.print(f"[bold]1.[/] Running the ticket workflow in a child process; it is SIGKILLed inside {KILL_IN!r}.")
    proc = subprocess.run([sys.executable, __file__, "--db", args.db, "--child", run_id, str(effects)], check=False)
    console.print(f"   child process ended by signal {-proc.returncode} (SIGKILL = {int(signal.SIGKILL)})")
    before = counts(effects)

    app, triage = build(args.db, effects, kill=False)
    recorded = [s.key for s in app.get_run(run_id).steps]
    console.print(f"   recorded before the kill: {', '.join(recorded)}; run status: {app.get_run(run_id).status}\n")

    console.print("[bold]2.[/] Resuming the run in this process.")
    run = app.resume(run_id)
    after = counts(effects)
    table = Table("step", "before the kill", "on resume", "executions in all")
    for name in STEPS:
        live = after[name] - before[name]
        table.add_row(
            name,
            "ran" if before[name] else "-",
            "[green]ran live[/]" if live else "[cyan]served from the record[/]",
            str(after[name]),
        )
    console.print(table)
    console.print(f"   status: [bold green]{run.status}[/]   output: {run.output}")
    console.print(
        f"   {KILL_IN!r} ran twice: it was in flight when the process died, so it had no record yet; "
        "every step that had finished ran exactly once.\n"
    )

    console.print("[bold]3.[/] Running the same run id again.")
    again = app.run(triage, "my order never came", "cust-7", run_id=run_id)  # type: ignore[arg-type]
    executed = sum(counts(effects).values()) - sum(after.values())
    console.print(f"   the recorded run came back ({again.status}); steps executed this time: {executed}")

    console.print("[bold]4.[/] Replaying it strictly: the workflow runs again; the record serves every step.")
    replay = app.replay(run_id)
    replayed = sum(counts(effects).values()) - sum(after.values())
    console.print(f"   replay matched: {replay.served} steps served, same output, steps executed: {replayed}")
    console.print(f"\nInspect it: [bold]agentflow show {run_id}[/]   (or [bold]agentflow runs[/])")
    app.close()
    ok = run.status == "completed" and executed == 0 and all(after[n] == 1 for n in STEPS if n != KILL_IN)
    ok = ok and replay.matched and replay.output == run.output and replayed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
