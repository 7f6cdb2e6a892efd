"""The ``agentflow`` command: look at the runs a database holds, and at one run's recorded steps.

    agentflow runs [--status failed] [--workflow triage] [--limit 50] [--db URL]
    agentflow show RUN_ID [--traceback] [--db URL]
    agentflow demo [--db URL]
    agentflow replay / fork / diff / step   (see _cli_replay)
    agentflow export / import               (see _cli_bundle)
    agentflow verify RUN_ID... / --all      (see _cli_verify)
    agentflow send-event / pause / resume / cancel / restart / wake   (see _cli_lifecycle)
    agentflow eval [PATH] / --list / --compare A B   (see _cli_eval)
    agentflow worker --app REF [--queue NAME] [--concurrency N]   (see _cli_worker)

Presentation only: everything shown comes from the public API (``AgentFlow.list_runs``, ``get_run``,
``Run.steps``). The database is opened with ``create=False``, so looking never creates one. Errors
agentflow raises are printed as their message (red, on stderr) with exit code 1, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NamedTuple, NoReturn

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from ._app import AgentFlow
from ._models import ErrorInfo, Run, RunStatus, Step
from ._present import human_duration as _human_duration
from ._present import local_time as _local_time
from ._present import milliseconds as _milliseconds
from ._present import one_line as _one_line
from ._present import output_preview as _output_preview
from ._present import to_json as _json
from ._present import truncate as _truncate
from .errors import AgentFlowError

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="agentflow",
    help="Inspect durable agentflow runs: list them, and show one run's recorded steps.",
    no_args_is_help=True,
    add_completion=False,
    # A crash in the CLI itself still shows a traceback, but never the local variables: a database URL
    # with a password in it would end up on the screen.
    pretty_exceptions_show_locals=False,
)

_STATUS_STYLE = {
    RunStatus.COMPLETED.value: "green",
    RunStatus.FAILED.value: "bold red",
    RunStatus.RUNNING.value: "yellow",
    RunStatus.PENDING.value: "cyan",
    RunStatus.WAITING.value: "blue",
    RunStatus.PAUSED.value: "magenta",
    RunStatus.CANCELLED.value: "dim red",
}
_SUMMARY_CHARS = 80  # error summary in the runs table
_PREVIEW_CHARS = 60  # step output preview in the steps table
_STEP_ERROR_CHARS = 200  # step error in the steps table
_DETAIL_CHARS = 500  # run input / output / error in the header panel
_FLEX_MIN = 16  # the narrowest a wrapping column (workflow, error, key, output) gets in a table


class _Column(NamedTuple):
    header: str
    flexible: bool = False  # wraps; the others keep their full width or the table is not used
    right: bool = False


_RUN_COLUMNS = (
    _Column("id"),
    _Column("workflow", flexible=True),
    _Column("status"),
    _Column("created"),
    _Column("duration", right=True),
    _Column("error", flexible=True),
)
_STEP_COLUMNS = (
    _Column("seq", right=True),
    _Column("key", flexible=True),
    _Column("kind"),
    _Column("status"),
    _Column("attempts", right=True),
    _Column("started", right=True),
    _Column("duration", right=True),
    _Column("output / error", flexible=True),
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help=(
            "The database: a SQLite path or a SQLAlchemy URL (postgresql+psycopg://...). "
            "Default: $AGENTFLOW_DATABASE_URL, else ./.agentflow/agentflow.db."
        ),
        show_default=False,
    ),
]


def main() -> None:
    """Entry point of the ``agentflow`` console script."""
    cli()


# -- commands ---------------------------------------------------------------------------------------------


@cli.command("runs")
def runs_command(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help="Only runs with this status: pending, running, completed or failed. Repeat it, or separate "
            "statuses with commas, for several.",
            show_default=False,
        ),
    ] = None,
    workflow: Annotated[
        str | None,
        typer.Option("--workflow", "-w", metavar="NAME", help="Only runs of the workflow with this name."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many runs.")] = 50,
    db: DbOption = None,
) -> None:
    """List runs, newest first: id, workflow, status, when it started, how long it took, and why it failed."""
    statuses = [s.strip() for item in status or [] for s in item.split(",") if s.strip()]
    with _open(db) as flow:
        found = flow.list_runs(status=statuses or None, workflow=workflow, limit=limit)
    out = _console()
    if not found:
        out.print(Text(_no_runs_line(statuses, workflow)))
        return
    out.print(_runs_listing(found, out.width))
    if len(found) == limit:
        out.print(Text(f"showing the {limit} newest matching runs; --limit shows more", style="dim"))


@cli.command("show")
def show_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The id of the run to show.", show_default=False)],
    traceback: Annotated[
        bool,
        typer.Option("--traceback", "-t", help="Also print the recorded tracebacks of failed steps and of the run."),
    ] = False,
    step: Annotated[
        str | None,
        typer.Option(
            "--step",
            "-s",
            metavar="KEY",
            help="Show this one step in full instead: request, response, tokens, cost, served or live.",
        ),
    ] = None,
    superseded: Annotated[
        bool,
        typer.Option("--superseded", help="Also list the records its restarts took out of it (the audit trail)."),
    ] = False,
    db: DbOption = None,
) -> None:
    """Show one run: its status, times, usage and output or error, then its recorded steps in order."""
    if step is not None:
        from ._cli_replay import step_command

        step_command(run_id, step, db)
        return
    with _open(db) as flow:
        run = flow.get_run(run_id)
        steps = sorted(run.steps, key=lambda s: s.seq)
        leases = flow.leases(run_id) if run.queue is not None else []
        kept = flow.superseded_steps(run_id)
    out = _console()
    out.print(_header(run, len(steps)))
    if leases:
        from ._cli_worker import lease_history

        out.print(lease_history(leases))
    if steps:
        out.print(_steps_listing(steps, out.width))
    else:
        out.print(Text("no steps recorded", style="dim"))
    if kept:
        restarts = sorted({k.restart for k in kept})
        if not superseded:
            out.print(Text(f"{len(kept)} record(s) superseded by {len(restarts)} restart(s): --superseded lists them",
                           style="dim"))  # fmt: skip
        for restart in restarts if superseded else ():
            taken = [k for k in kept if k.restart == restart]
            when = taken[0].superseded_at.strftime("%Y-%m-%d %H:%M:%S")
            out.print(Rule(Text(f"superseded by restart {restart} at {when} UTC"), style="dim"))
            out.print(_steps_listing([k.step for k in taken], out.width))
    failures: list[tuple[str, ErrorInfo]] = [(f"step {s.key}", s.error) for s in steps if s.error is not None]
    if run.error is not None:
        failures.append((f"run {run.id}", run.error))
    with_tb = [(label, err) for label, err in failures if err.traceback]
    if not traceback:
        if with_tb:
            out.print(Text("--traceback prints the recorded tracebacks", style="dim"))
        return
    if not with_tb:
        out.print(Text("no tracebacks recorded", style="dim"))
    for label, err in with_tb:
        # A rule, not a panel: the traceback stays copyable, without border characters in it.
        out.print(Rule(Text(f"traceback of {label}"), style="red"))
        out.print(Text(err.traceback.rstrip()), soft_wrap=True)


@cli.command("demo")
def demo_command(db: DbOption = None) -> None:
    """Run the support agent offline, kill it halfway (SIGKILL), resume it, and replay it strictly."""
    from ._demo import run_demo

    try:
        code = run_demo(db)
    except AgentFlowError as exc:
        _fail(str(exc))
    raise typer.Exit(code=code)


# -- opening the database and failing ---------------------------------------------------------------------


@contextmanager
def _open(db: str | None) -> Iterator[AgentFlow]:
    """The AgentFlow on ``db``, never creating a database; an AgentFlowError becomes message + exit 1."""
    try:
        with AgentFlow(db, create=False) as flow:
            yield flow
    except AgentFlowError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code=1)


def _console() -> Console:
    # Made per command, not at import: the width ($COLUMNS) and stdout are the ones in effect now.
    return Console(highlight=False)


def _progress(out: Console, *, transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar for long work: each task's description, a bar, done of total, time elapsed."""
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=out, transient=transient, disable=disable)


# -- rendering --------------------------------------------------------------------------------------------


def _header(run: Run, step_count: int) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("workflow", Text(run.workflow))
    grid.add_row("status", _status_text(run.status.value))
    grid.add_row("created", Text(_local_time(run.created_at)))
    updated = _local_time(run.updated_at)
    if run.status.is_terminal:
        updated += f" (took {_human_duration((run.updated_at - run.created_at).total_seconds())})"
    grid.add_row("updated", Text(updated))
    grid.add_row("code version", Text(run.code_version or "-"))
    if run.parent_id:
        grid.add_row("parent", Text(run.parent_id))
    if run.forked_from:
        grid.add_row("forked from", Text(run.forked_from))
    if run.queue is not None:
        from ._cli_worker import lease_text, queue_text

        grid.add_row("queue", Text(queue_text(run)))
        grid.add_row("worker", Text(run.worker or "-"))
        grid.add_row("lease", lease_text(run))
    grid.add_row("steps", Text(str(step_count)))
    usage = run.usage
    grid.add_row(
        "usage",
        Text(
            f"{usage.total_tokens:,} tokens (prompt {usage.prompt_tokens:,}, completion {usage.completion_tokens:,})"
            f", cost ${run.cost:.4f}"
        ),
    )
    grid.add_row("input", Text(_truncate(_json(run.input), _DETAIL_CHARS)))
    if run.error is not None:
        grid.add_row("error", Text(_truncate(str(run.error), _DETAIL_CHARS), style="red"))
    elif run.status is RunStatus.COMPLETED:
        grid.add_row("output", Text(_truncate(_json(run.output), _DETAIL_CHARS)))
    return Panel(grid, title=Text(f"run {run.id}", style="bold"), title_align="left", expand=False)


def _runs_listing(runs: list[Run], width: int) -> RenderableType:
    """A table when it fits in ``width`` with ids unbroken, else a few lines per run. Runs of queues add
    the queue and the worker that holds (or last held) each run."""
    queued = any(run.queue is not None for run in runs)
    rows = [
        [
            Text(run.id, style="bold"),
            Text(run.workflow),
            _status_text(run.status.value),
            Text(_local_time(run.created_at)),
            Text(_run_duration(run)),
            Text(_error_summary(run.error), style="red"),
        ]
        for run in runs
    ]
    columns: tuple[_Column, ...] = _RUN_COLUMNS
    if queued:
        from ._cli_worker import QUEUE_COLUMNS, queue_cells

        columns = (*_RUN_COLUMNS[:3], *QUEUE_COLUMNS, *_RUN_COLUMNS[3:])
        rows = [[*row[:3], *queue_cells(run), *row[3:]] for row, run in zip(rows, runs, strict=True)]
    table = _table_if_fits(columns, rows, width)
    if table is not None:
        return table
    lines: list[RenderableType] = []
    for row in rows:
        ident, workflow, status = row[:3]
        created, duration, error = row[-3:]
        lines.append(Text("  ").join([ident, status]))
        extra = [cell for cell in row[3:-3] if cell.plain]  # a queued run's queue and worker
        lines.append(_indented(Text(" · ").join([workflow, *extra, created, duration])))
        if error:
            lines.append(_indented(error))
    return Group(*lines)


def _steps_listing(steps: list[Step], width: int) -> RenderableType:
    """A table of the steps when it fits in ``width``, else two lines per step."""
    first_start = min(s.started_at for s in steps)
    rows = []
    for step in steps:
        if step.error is not None:
            result = Text(_truncate(_one_line(str(step.error)), _STEP_ERROR_CHARS), style="red")
        else:
            result = Text(_truncate(_output_preview(step), _PREVIEW_CHARS))
        rows.append(
            [
                Text(str(step.seq)),
                Text(step.key),
                Text(step.kind.value),
                _status_text(step.status.value),
                Text(str(step.attempt)),
                Text(f"+{(step.started_at - first_start).total_seconds():.3f}s"),
                Text(_milliseconds(step.duration)),
                result,
            ]
        )
    table = _table_if_fits(_STEP_COLUMNS, rows, width)
    if table is not None:
        return table
    lines: list[RenderableType] = []
    for seq, key, kind, status, attempts, started, duration, result in rows:
        tries = Text(f"{attempts} attempt" + ("" if attempts.plain == "1" else "s"))
        lines.append(Text("  ").join([Text(f"{seq}.", style="dim"), key, kind, status, tries, started, duration]))
        lines.append(_indented(result))
    return Group(*lines)


def _table_if_fits(columns: tuple[_Column, ...], rows: list[list[Text]], width: int) -> Table | None:
    """The rows as a table, or None when it would not fit in ``width``.

    Rich shrinks a table that is too wide by wrapping, then by truncating, any column: ids would break
    and columns vanish. So the fixed columns must fit whole, with ``_FLEX_MIN`` cells for each flexible one.
    """
    needed = 3 * len(columns) + 1  # SIMPLE_HEAD: one cell of padding each side, one between, the edges
    for index, column in enumerate(columns):
        if column.flexible:
            needed += _FLEX_MIN
        else:
            needed += max([len(column.header)] + [row[index].cell_len for row in rows])
    if needed > width:
        return None
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    for column in columns:
        table.add_column(
            column.header,
            justify="right" if column.right else "left",
            no_wrap=not column.flexible,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*row)
    return table


def _indented(text: Text) -> Padding:
    return Padding(text, (0, 0, 0, 4), expand=False)


def _status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _no_runs_line(statuses: list[str], workflow: str | None) -> str:
    filters = []
    if statuses:
        filters.append("status " + " or ".join(statuses))
    if workflow:
        filters.append(f"workflow {workflow!r}")
    return "no runs" + (" with " + " and ".join(filters) if filters else "")


def _error_summary(error: ErrorInfo | None) -> str:
    return "" if error is None else _truncate(_one_line(str(error)), _SUMMARY_CHARS)


def _run_duration(run: Run) -> str:
    # An unfinished run's updated_at is when it last started, not now: a duration would mislead.
    if not run.status.is_terminal:
        return "-"
    return _human_duration((run.updated_at - run.created_at).total_seconds())


# The commands that work from a run's record (replay, fork, diff, step) live in their own module, and so do
# those that move runs between databases (export, import).
from . import _cli_bundle, _cli_eval, _cli_lifecycle, _cli_replay, _cli_verify, _cli_worker  # noqa: E402, F401
