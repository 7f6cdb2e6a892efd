"""``agentflow worker``: claim and execute the runs of queues, and how runs and shows render queued runs.

    agentflow worker --app REF [--queue NAME ...] [--concurrency N] [--lease S] [--poll S] [--grace S]
                     [--drain] [--db URL]

``--app`` names the ``AgentFlow`` whose registered workflows (and declared queues) the worker runs:
``package.module:app`` or ``path/to/script.py:app``. ``--db`` opens another database with that app's
workflows and queues. SIGTERM (or Ctrl-C) stops it gracefully: no more claims, runs in flight get
``--grace`` seconds to end, the rest go back to their queue; a second signal releases them at once.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ._app import AgentFlow
from ._cli import DbOption, _Column, _console, _fail, cli
from ._models import Run
from ._queue import Lease
from .errors import AgentFlowError

__all__ = ["QUEUE_COLUMNS", "lease_history", "lease_text", "queue_cells", "queue_text"]

QUEUE_COLUMNS = (_Column("queue"), _Column("worker", flexible=True))


def queue_text(run: Run) -> str:
    """The queue, with the priority and dedup id when they are set."""
    text = run.queue or "-"
    if run.priority:
        text += f" (priority {run.priority})"
    if run.dedup_id:
        text += f", dedup id {run.dedup_id}"
    return text


def lease_text(run: Run) -> Text:
    """Who holds the run and until when, with the fencing token."""
    if run.lease_token == 0:
        return Text("never claimed", style="dim")
    token = f"token {run.lease_token}"
    if run.lease_expires_at is None:
        return Text(f"{token}, not held")
    until = _local(run.lease_expires_at)
    if run.lease_expires_at.timestamp() < time.time():
        return Text(f"{token}, expired at {until} (another worker may take it over)", style="yellow")
    return Text(f"{token}, held until {until}")


def queue_cells(run: Run) -> list[Text]:
    """The queue and worker cells of a run's row in ``agentflow runs``."""
    if run.queue is None:
        return [Text("-", style="dim"), Text("")]
    queue = run.queue + (f" p{run.priority}" if run.priority else "")
    worker = Text(run.worker or "")
    if run.lease_expires_at is not None:
        worker.append(f" #{run.lease_token}", style="dim")
    return [Text(queue), worker]


def lease_history(leases: list[Lease]) -> Table:
    """The claims of a run, one row each."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", title="leases", title_justify="left")
    for header in ("token", "worker", "claimed", "released", "outcome"):
        table.add_column(
            header, no_wrap=header != "worker", overflow="fold", justify="right" if header == "token" else "left"
        )
    for lease in leases:
        table.add_row(
            str(lease.token),
            lease.worker,
            _local(lease.claimed_at),
            "-" if lease.released_at is None else _local(lease.released_at),
            lease.outcome or ("held, or its worker died" if lease.released_at is None else "-"),
        )
    return table


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@cli.command("worker")
def worker_command(
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            metavar="REF",
            help="The AgentFlow whose workflows to run: package.module:app or path/to/script.py:app.",
            show_default=False,
        ),
    ],
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue", "-q", metavar="NAME", help="A queue to serve (repeat it for several). Default: default."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs executing at once here.")] = 1,
    lease: Annotated[
        float, typer.Option("--lease", metavar="SECONDS", help="Lease length; renewed every third of it.")
    ] = 30.0,
    poll: Annotated[float, typer.Option("--poll", metavar="SECONDS", help="How often to look for work.")] = 1.0,
    grace: Annotated[
        float,
        typer.Option("--grace", metavar="SECONDS", help="At SIGTERM, how long runs in flight get to end."),
    ] = 30.0,
    drain: Annotated[bool, typer.Option("--drain", help="Exit once the queues have nothing left to run.")] = False,
    db: DbOption = None,
) -> None:
    """Claim and execute runs of the queues until SIGTERM (many workers may share a Postgres database)."""
    from ._refs import load_ref

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        found = load_ref(app_ref)
    except AgentFlowError as exc:
        _fail(str(exc))
    if not isinstance(found, AgentFlow):
        _fail(f"{app_ref} is a {type(found).__name__}, not an AgentFlow: point --app at the app of your workflows")
    flow = found
    if db is not None:
        try:
            flow = AgentFlow(db)
        except AgentFlowError as exc:
            _fail(str(exc))
        for name in found._workflows:
            flow.adopt_workflow(found, name)
        flow._queues.update(found._queues)
    try:
        report = flow.work(
            queue or ["default"], concurrency=concurrency, lease=lease, poll=poll, grace=grace, drain=drain
        )
    except AgentFlowError as exc:
        _fail(str(exc))
    finally:
        if flow is not found:
            flow.close()
    _console().print(
        f"worker {report.worker_id}: claimed {report.claimed}, finished {report.finished}, released "
        f"{report.released}, lost {report.lost}, errors {report.errors}"
    )
