"""CLI commands that move runs between databases as bundles: ``export`` and ``import``.

    agentflow export RUN_ID -o run.json [--db URL]     (-o - writes the bundle to stdout)
    agentflow import run.json [--db URL]

``export`` only reads (the database must exist); ``import`` creates the database when there is none, like
``AgentFlow()`` does. Registered on the ``agentflow`` command by ``_cli``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from ._app import AgentFlow
from ._cli import DbOption, _console, _fail, _open, _status_text, cli
from .errors import AgentFlowError, RunNotFound


@cli.command("export")
def export_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to export.", show_default=False)],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Where to write the bundle (JSON); - writes it to stdout.",
            show_default=False,
        ),
    ],
    db: DbOption = None,
) -> None:
    """Write a run, its steps, the blobs they refer to and its child runs to a portable JSON bundle (with
    the records its restarts took out of it)."""
    with _open(db) as flow:
        data = flow.export_run(run_id)
        run = flow.get_run(run_id)
        step_count = len(run.steps)
        superseded = len(flow.superseded_steps(run_id))
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    children = len(_run_ids(data)) - 1
    line = Text(f"exported run {run.id} ({run.workflow}, ")
    line.append_text(_status_text(run.status.value))
    line.append(f", {step_count} steps{_superseded(superseded)}")
    if children:
        line.append(f", and {children} child run{'s' if children != 1 else ''}")
    line.append(f") to {output} ({_size(len(data))})")
    _console().print(line)


@cli.command("import")
def import_command(
    bundle: Annotated[
        Path, typer.Argument(metavar="FILE", help="A bundle written by `agentflow export`.", show_default=False)
    ],
    db: DbOption = None,
) -> None:
    """Import the runs of a bundle, all or none (it is checked whole first), creating the database if needed."""
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {bundle}: {exc.strerror or exc}")
    out = _console()
    try:
        with AgentFlow(db) as flow:  # unlike the other commands, this one may create the database
            before = {run_id for run_id in _run_ids(data) if _exists(flow, run_id)}
            run_ids = flow.import_runs(bundle)
            runs = [(flow.get_run(run_id), len(flow.superseded_steps(run_id))) for run_id in run_ids]
    except AgentFlowError as exc:
        _fail(str(exc))
    for run, superseded in runs:
        line = Text(f"{'already here, unchanged' if run.id in before else 'imported'}: run {run.id} ({run.workflow}, ")
        line.append_text(_status_text(run.status.value))
        line.append(f", {len(run.steps)} steps{_superseded(superseded)})")
        out.print(line)
    db_flag = "" if db is None else f" --db {db}" if "://" not in db else " --db URL"  # no password on screen
    out.print(Text(f"replay it offline: agentflow replay {run_ids[0]}{db_flag}", style="dim"))


def _run_ids(data: bytes) -> list[str]:
    """The run ids a bundle names, read without checking it (for messages only; the import checks it)."""
    try:
        runs: Any = json.loads(data).get("runs")
        return [str(entry["record"]["id"]) for entry in runs]
    except (ValueError, AttributeError, TypeError, KeyError):
        return []


def _exists(flow: AgentFlow, run_id: str) -> bool:
    try:
        flow.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _superseded(count: int) -> str:
    return f" and {count} superseded by restarts" if count else ""


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1000 else f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"
