"""CLI verbs of the run lifecycle: ``start``, ``send-event``, ``pause``, ``resume``, ``cancel``, ``restart``,
``wake`` (``show`` gives a run's status).

    agentflow start REF [--args JSON] [--run-id ID] [--deadline SECONDS] [--db URL]
    agentflow send-event RUN_ID TYPE [PAYLOAD_JSON] [--db URL]
    agentflow pause RUN_ID [--db URL]
    agentflow resume RUN_ID [--app REF] [--db URL]
    agentflow cancel RUN_ID [--app REF] [--db URL]
    agentflow restart RUN_ID [--from KEY] [--app REF] [--db URL]
    agentflow wake [--db URL]

``send-event`` and ``pause`` only write to the database: the process that serves the run picks them up.
The others execute the run's code here, found from the run's recorded ref or ``--app`` (see ``replay``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.text import Text

from ._app import AgentFlow
from ._cli import DbOption, _console, _fail, _open, _status_text, cli
from ._cli_replay import AppOption, _with_code
from ._models import Run
from .errors import AgentFlowError

RunArg = Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)]


@contextmanager
def _open_or_create(db: str | None) -> Iterator[AgentFlow]:
    """The AgentFlow on ``db``, created if missing (starting a run may be the first thing done)."""
    try:
        with AgentFlow(db) as flow:
            yield flow
    except AgentFlowError as exc:
        _fail(str(exc))


def _report(run: Run) -> None:
    line = Text.assemble(f"run {run.id}: ", _status_text(run.status.value))
    if run.waiting_for:
        line.append(f" (waiting for {run.waiting_for})")
    elif run.wake_at is not None:
        line.append(f" (wakes at {run.wake_at.isoformat(timespec='seconds')})")
    if run.rollback:
        line.append(f"; {run.rollback}")
    _console().print(line)


def _with_run_code(db: str | None, run_id: str, app_ref: str | None, act: Callable[[AgentFlow], Run]) -> Run:
    """``act(flow)`` on the database with the run's workflow code registered (its ref, or ``--app``)."""
    with _open(db) as flow:  # an AgentFlowError in here prints as a message, exit 1
        _with_code(flow, flow.get_run(run_id), app_ref)
        return act(flow)


@cli.command("start")
def start_command(
    ref: Annotated[
        str,
        typer.Argument(metavar="REF", help="The workflow function or Agent: module:name or path/to/script.py:name."),
    ],
    args: Annotated[
        str, typer.Option("--args", metavar="JSON", help="The arguments after the context, as a JSON list.")
    ] = "[]",
    run_id: Annotated[str | None, typer.Option("--run-id", help="Name the run (an idempotency key).")] = None,
    deadline: Annotated[
        float | None, typer.Option("--deadline", metavar="SECONDS", help="Stop the run after this long.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Start a run here; it executes until it ends or waits (a waiting run needs no process)."""
    from ._refs import load_ref

    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        _fail(f"--args is not JSON: {exc}")
    if not isinstance(arguments, list):
        _fail("--args must be a JSON list of the workflow's arguments, like '[\"A-17\"]'")
    with _open_or_create(db) as flow:
        try:
            workflow = load_ref(ref)
            if getattr(workflow, "__agentflow_workflow__", None) is not None:
                flow.register(workflow)
            handle = flow.start(workflow, *arguments, run_id=run_id, deadline=deadline)
            run = handle.settled()
        except AgentFlowError as exc:
            _fail(str(exc))
    _report(run)


@cli.command("send-event")
def send_event_command(
    run_id: RunArg,
    type: Annotated[str, typer.Argument(metavar="TYPE", help="The event type a wait_for_event waits for.")],
    payload: Annotated[str, typer.Argument(metavar="PAYLOAD_JSON", help="The payload, as JSON.")] = "null",
    db: DbOption = None,
) -> None:
    """Send an event to a run; it is kept until the run's wait takes it (each event delivered once)."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"the payload is not JSON: {exc}")
    with _open(db) as flow:
        event_id = flow.send_event(run_id, type, value)
        run = flow.get_run(run_id)
    _console().print(f"event {event_id} ({type}) sent to run {run_id}")
    _report(run)


@cli.command("pause")
def pause_command(run_id: RunArg, db: DbOption = None) -> None:
    """Pause a run at its next step boundary; a waiting run stays asleep until resumed."""
    with _open(db) as flow:  # an AgentFlowError in here prints as a message, exit 1
        _report(flow.pause(run_id))


@cli.command("resume")
def resume_command(run_id: RunArg, app_ref: AppOption = None, db: DbOption = None) -> None:
    """Resume a paused, waiting or crashed run here: recorded steps are served, the rest runs live."""
    _report(_with_run_code(db, run_id, app_ref, lambda flow: flow.resume(run_id)))


@cli.command("cancel")
def cancel_command(run_id: RunArg, app_ref: AppOption = None, db: DbOption = None) -> None:
    """Cancel a run: its compensations run newest first and it ends cancelled (its children too)."""
    _report(_with_run_code(db, run_id, app_ref, lambda flow: flow.cancel(run_id)))


@cli.command("restart")
def restart_command(
    run_id: RunArg,
    from_key: Annotated[
        str | None, typer.Option("--from", metavar="KEY", help="Run again from this step on (default: all).")
    ] = None,
    app_ref: AppOption = None,
    db: DbOption = None,
) -> None:
    """Run a run again from a step on: the records from it are removed, the ones before it served."""
    _report(_with_run_code(db, run_id, app_ref, lambda flow: flow.restart(run_id, from_key)))


@cli.command("wake")
def wake_command(db: DbOption = None) -> None:
    """Resume every waiting run that is due (for a cron job; `AgentFlow.serve` does this continuously)."""
    with _open(db) as flow:
        due = flow.list_runs(status="waiting")
        now = flow._clock.time()
        for run in due:
            if run.wake_at is not None and run.wake_at.timestamp() <= now:
                _with_code(flow, run, None)
        try:
            woken = flow.wake_due()
        except AgentFlowError as exc:
            _fail(str(exc))
    for run in woken:
        _report(run)
    if not woken:
        _console().print(Text("no waiting run is due", style="dim"))
