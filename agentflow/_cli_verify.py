"""CLI command that checks the hash chains of runs: ``verify``, for audits.

    agentflow verify RUN_ID [RUN_ID ...] [--db URL]
    agentflow verify RUN_ID --head HASH [--db URL]
    agentflow verify --all [--db URL]

Each run's step records are checked against their hash chain (with the records its restarts took out,
``AgentFlow.verify``); a named run that holds says its chain's head, the last record's link. The chain
alone cannot tell a record rewritten together with every link after it: a head kept somewhere else can.
``--head`` checks that the run's chain still passes through a head noted before (the run may have gone on
since). Exit code 0 when every check holds, 1 when one does not or a run is unknown. Only reads;
registered on the ``agentflow`` command by ``_cli``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ._app import AgentFlow
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
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="HASH",
            help="A chain head noted before (verify prints it): check that the run's chain still passes through it.",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Check that the recorded steps of runs are as they were written: each run's hash chain, with the
    records its restarts took out. Exit code 1 if a record was changed, removed or inserted."""
    if bool(run_ids) == every:
        _fail("name the runs to check, or pass --all (not both)")
    if head is not None and len(run_ids or []) != 1:
        _fail("--head checks one run: name it")
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
                    intact = Text(f"run {run_id}: intact{_head_of(flow, run_id)}", style="green")
                    progress.console.print(intact, soft_wrap=True)  # the head in one piece, to copy
                progress.advance(task)
        if head is not None and not broken:
            at = _passes_through(flow, ids[0], head.strip().lower())
            if at is None:
                out.print(
                    Text(
                        f"run {ids[0]}: its chain does not pass through {head}: records up to that head were "
                        "rewritten since it was noted, or it is another run's",
                        style="bold red",
                    )
                )
                raise typer.Exit(code=1)
            out.print(
                Text(f"run {ids[0]}: its chain passes through {head} at step {at!r}", style="green"), soft_wrap=True
            )
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


def _head_of(flow: AgentFlow, run_id: str) -> str:
    """ ", chain head <hex>" for a run with steps: the last record's link, to keep for ``--head``."""
    steps = flow.get_run(run_id).steps
    return f", {len(steps)} steps, chain head {steps[-1].chain}" if steps else ", no steps yet"


def _passes_through(flow: AgentFlow, run_id: str, head: str) -> str | None:
    """The key of the run's record (or superseded record) whose link is ``head``; None if there is none."""
    kept = [taken.step for taken in flow.superseded_steps(run_id)]
    return next((step.key for step in [*flow.get_run(run_id).steps, *kept] if step.chain == head), None)
