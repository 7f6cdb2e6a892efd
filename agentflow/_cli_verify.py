"""CLI command that checks the hash chains of runs: ``verify``, for audits.

    agentflow verify RUN_ID [RUN_ID ...] [--db URL]
    agentflow verify --all [--db URL]

Each run's step records are checked against their hash chain (with the records its restarts took out,
``AgentFlow.verify``). Exit code 0 when every chain holds, 1 when one is broken or a run is unknown.
Only reads; registered on the ``agentflow`` command by ``_cli``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ._cli import DbOption, _console, _fail, _open, _progress, cli
from .errors import RunNotFound

_PROGRESS_FROM = 20  # runs: fewer are checked without a progress bar


@cli.command("verify")
def verify_command(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[RUN_ID]...", help="The runs to check.", show_default=False),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Check every run in the database.")] = False,
    db: DbOption = None,
) -> None:
    """Check that the recorded steps of runs are as they were written: each run's hash chain, with the
    records its restarts took out. Exit code 1 if a record was changed, removed or inserted."""
    if bool(run_ids) == every:
        _fail("name the runs to check, or pass --all (not both)")
    out = _console()
    broken: list[tuple[str, str]] = []
    with _open(db) as flow:
        if every:
            ids = [run.id for run in flow.list_runs(limit=None)]
        else:
            ids = list(dict.fromkeys(run_ids or []))
            for run_id in ids:
                try:
                    flow.get_run(run_id)
                except RunNotFound as exc:
                    _fail(str(exc))
        quiet = len(ids) < _PROGRESS_FROM or not out.is_terminal  # piped: no bar (nor the blank line it leaves)
        progress = _progress(out, transient=True, disable=quiet)
        with progress:
            task = progress.add_task("checking", total=len(ids))
            for run_id in ids:
                at = flow.verify(run_id)
                if at is not None:
                    broken.append((run_id, at))
                    progress.console.print(Text(f"run {run_id}: changed at step {at!r}", style="bold red"))
                elif not every:
                    progress.console.print(Text(f"run {run_id}: intact", style="green"))
                progress.advance(task)
    if not ids:
        out.print(Text("no runs to check"))
        return
    if broken:
        out.print(
            Text(
                f"{len(broken)} of {len(ids)} run(s) have a broken hash chain: a record was changed, removed or "
                "inserted after it was written",
                style="bold red",
            )
        )
        raise typer.Exit(code=1)
    out.print(Text(f"{len(ids)} run(s) checked: every hash chain holds", style="bold green"))
