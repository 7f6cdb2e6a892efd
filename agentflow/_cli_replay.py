"""CLI commands that work from a run's record: ``replay``, ``fork``, ``diff`` and ``step`` (one step in detail).

    agentflow replay RUN_ID [--mode strict|relaxed|live] [--app module:app] [--db URL]
    agentflow fork RUN_ID --at KEY [--text TEXT | --json JSON] [--app module:app] [--db URL]
    agentflow diff RUN_A RUN_B [--db URL]
    agentflow step RUN_ID KEY [--db URL]

``replay`` and ``fork`` run the workflow's code, so they must find it: the run records its workflow's
import ref (``package.module:function``, or a script path), and ``--app`` names another one (an
``AgentFlow`` with the workflow registered, the workflow function, or an ``Agent``). Registered on the
``agentflow`` command by ``_cli``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ._app import AgentFlow
from ._cli import DbOption, _console, _fail, _open, _status_text, cli
from ._models import Run, Step
from ._refs import register_code
from .errors import AgentFlowError, ReplayDivergence

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="REF",
        help="Where the workflow's code is: module:attribute (an AgentFlow, a workflow function or an Agent) "
        "or path/to/script.py:attribute. Default: the ref the run recorded.",
    ),
]


def _with_code(flow: AgentFlow, run: Run, app_ref: str | None) -> None:
    """Register the run's workflow on ``flow``, from ``--app`` or the ref the run recorded."""
    ref = app_ref or run.workflow_ref
    if ref is None:
        _fail(
            f"run {run.id} did not record where its workflow {run.workflow!r} lives (defined inside a function?); "
            "pass --app module:attribute"
        )
    try:
        register_code(flow, run.workflow, ref)
    except AgentFlowError as exc:
        _fail(f"{exc}" + ("" if app_ref else "; if the code moved, pass --app module:attribute"))


@cli.command("replay")
def replay_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The finished run to replay.", show_default=False)],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            "-m",
            help="strict: serve everything, refuse any difference. relaxed: serve by key, ignore fingerprints. "
            "live: go on live in a new run from the first difference.",
        ),
    ] = "strict",
    app_ref: AppOption = None,
    db: DbOption = None,
) -> None:
    """Run a finished run's code again against its record, offline: does it still do the same thing?"""
    out = _console()
    with _open(db) as flow:
        run = flow.get_run(run_id)
        _with_code(flow, run, app_ref)
        try:
            result = flow.replay(run_id, mode=mode)  # type: ignore[arg-type]
        except ReplayDivergence as exc:
            out.print(Text(f"the replay of {run_id} diverged", style="bold red"))
            out.print(Text(str(exc)), soft_wrap=True)
            raise typer.Exit(code=1) from None
        except AgentFlowError as exc:
            _fail(str(exc))
    if result.diverged is not None:
        out.print(Text(f"the replay diverged at {result.diverged.key}; it went on live in run {result.live_run_id}",
                       style="yellow"))  # fmt: skip
        out.print(Text(str(result.diverged)), soft_wrap=True)
        out.print(Text.assemble("live run: ", _status_text(result.status.value)))
        return
    out.print(
        Text(f"the replay of {run_id} matched its record: {result.served} steps served, nothing called", style="green")
    )
    if result.note:
        out.print(Text(f"  {result.note}", style="yellow"))


@cli.command("fork")
def fork_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to fork.", show_default=False)],
    at: Annotated[str, typer.Option("--at", metavar="KEY", help="The step where the fork departs (llm#1).")],
    text: Annotated[
        str | None, typer.Option("--text", help="The model's answer at --at, instead of the recorded one.")
    ] = None,
    value: Annotated[
        str | None,
        typer.Option("--json", metavar="JSON", help="The output at --at as JSON: a tool's result, an agent's state."),
    ] = None,
    app_ref: AppOption = None,
    db: DbOption = None,
) -> None:
    """A new run that reuses the record before --at, gives --text/--json there, and runs the rest live."""
    if text is not None and value is not None:
        _fail("give --text or --json, not both")
    out = _console()
    with _open(db) as flow:
        run = flow.get_run(run_id)
        _with_code(flow, run, app_ref)
        try:
            if text is not None:
                fork = flow.fork(run_id, at, text)
            elif value is not None:
                fork = flow.fork(run_id, at, json.loads(value))
            else:
                fork = flow.fork(run_id, at)
        except json.JSONDecodeError as exc:
            _fail(f"--json is not JSON: {exc}")
        except AgentFlowError as exc:
            _fail(str(exc))
    out.print(Text.assemble(f"fork {fork.id} of {run_id} at {at}: ", _status_text(fork.status.value)))
    out.print(Text(f"agentflow show {fork.id}   agentflow diff {run_id} {fork.id}", style="dim"))


@cli.command("diff")
def diff_command(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", show_default=False)],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", show_default=False)],
    db: DbOption = None,
) -> None:
    """Compare two runs step by step: which keys differ, and a JSON patch of their outputs."""
    import jsonpatch

    out = _console()
    with _open(db) as flow:
        a, b = flow.get_run(run_a), flow.get_run(run_b)
        steps_a, steps_b = {s.key: s for s in a.steps}, {s.key: s for s in b.steps}
    table = Table(title=f"{run_a} -> {run_b}", show_lines=False)
    for header in ("key", "kind", "difference"):
        table.add_column(header, overflow="fold")
    same = 0
    for key in list(steps_a) + [k for k in steps_b if k not in steps_a]:
        sa, sb = steps_a.get(key), steps_b.get(key)
        if sa is None or sb is None:
            kind = (sa or sb).kind.value  # type: ignore[union-attr]
            table.add_row(key, kind, Text(f"only in {run_b if sa is None else run_a}", style="yellow"))
            continue
        if sa.fingerprint == sb.fingerprint and sa.output == sb.output and sa.error == sb.error:
            same += 1
            continue
        notes = []
        if sa.fingerprint != sb.fingerprint:
            notes.append("asked for something else (request fingerprints differ)")
        if sa.output != sb.output:
            patch = jsonpatch.make_patch(sa.output, sb.output).patch if _patchable(sa, sb) else []
            ops = [f"{op['op']} {op['path']} {json.dumps(op.get('value'))[:120]}" for op in patch[:8]]
            notes.append("output: " + ("; ".join(ops) if ops else f"{_short(sa.output)} -> {_short(sb.output)}"))
        if sa.error != sb.error:
            notes.append(f"error: {sa.error} -> {sb.error}")
        table.add_row(key, sa.kind.value, "\n".join(notes))
    out.print(table)
    out.print(Text(f"{same} step(s) identical; outputs: {_short(a.output)} -> {_short(b.output)}", style="dim"))


@cli.command("step")
def step_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)],
    key: Annotated[str, typer.Argument(metavar="KEY", help="The step's key (llm#0).", show_default=False)],
    db: DbOption = None,
) -> None:
    """One step in full: its request, its response or error, tokens and cost, and whether it ran live."""
    out = _console()
    with _open(db) as flow:
        run = flow.get_run(run_id)
        step = next((s for s in run.steps if s.key == key), None)
        if step is None:
            _fail(f"run {run_id} has no step {key!r}; its steps: {', '.join(s.key for s in run.steps[:12])}")
        request = flow.readable_request(step)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("kind", step.kind.value)
    grid.add_row("status", _status_text(step.status.value))
    grid.add_row("attempts", str(step.attempt))
    grid.add_row("ran", _origin(run, step))
    grid.add_row("tokens", f"{step.usage.prompt_tokens} prompt + {step.usage.completion_tokens} completion")
    grid.add_row("cost", f"${step.cost:.6f}")
    grid.add_row("fingerprint", step.fingerprint)
    out.print(Panel(grid, title=f"{run_id} · {key}", title_align="left"))
    out.print(Text("request", style="bold"))
    out.print(Syntax(json.dumps(request, indent=2, ensure_ascii=False), "json", word_wrap=True))
    if step.error is not None:
        out.print(Text("error", style="bold red"))
        out.print(Text(step.error.traceback or str(step.error)), soft_wrap=True)
    else:
        out.print(Text("output", style="bold"))
        out.print(Syntax(json.dumps(step.output, indent=2, ensure_ascii=False), "json", word_wrap=True))


def _origin(run: Run, step: Step) -> str:
    """Live in this run, or copied from the run it was forked from (a copy keeps its original times)."""
    if run.forked_from and step.started_at < run.created_at:
        if step.key == run.forked_at:
            return f"given by the fork: an edited copy of run {run.forked_from}'s record"
        return f"served: copied from run {run.forked_from}'s record"
    return "live, in this run"


def _patchable(a: Step, b: Step) -> bool:
    return isinstance(a.output, dict | list) and isinstance(b.output, dict | list)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
