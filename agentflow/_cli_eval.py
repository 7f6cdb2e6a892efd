"""``agentflow eval``: run eval suites, list stored evals, compare two of them.

    agentflow eval [PATH ...] [--suite NAME] [--concurrency N] [--html FILE] [--markdown FILE] [--db URL]
    agentflow eval --list [--suite NAME] [--db URL]
    agentflow eval --compare BASELINE_ID CANDIDATE_ID [--max-regression 0.05] [--html FILE] [--db URL]

PATHs are suite files or folders of them (default: ``evals/``); see ``agentflow.evals.Suite``. Each suite
re-scores its recorded runs, evaluates its candidate (with a progress bar over the cases), prints the
comparison, and keeps both evals in the database. The exit code is 1 when a suite misses a threshold or
its candidate regresses past the allowed margin, so the command can gate CI. The HTML report is written
to ``.agentflow/eval-report.html`` unless ``--html`` names another file. Registered on the ``agentflow``
command by ``_cli``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table
from rich.text import Text

from ._app import AgentFlow
from ._cli import DbOption, _console, _fail, _open, cli
from ._cli import _progress as _progress_bar
from .errors import AgentFlowError

if TYPE_CHECKING:
    from .evals import Section

_DEFAULT_HTML = Path(".agentflow") / "eval-report.html"


@cli.command("eval")
def eval_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(metavar="PATH", help="Suite files or folders of them (default: evals/).", show_default=False),
    ] = None,
    suite: Annotated[
        str | None, typer.Option("--suite", "-s", metavar="NAME", help="Only the suite with this name.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", min=1, help="Cases run at once (default: each suite's own).", show_default=False
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help=f"Where to write the HTML report (default: {_DEFAULT_HTML}).",
            show_default=False,
        ),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", metavar="FILE", help="Also write the report as markdown.")
    ] = None,
    list_evals: Annotated[bool, typer.Option("--list", help="List the stored evals, newest first.")] = False,
    compare_ids: Annotated[
        tuple[str, str] | None,
        typer.Option("--compare", metavar="BASELINE CANDIDATE", help="Compare two stored evals.", show_default=False),
    ] = None,
    max_regression: Annotated[
        float,
        typer.Option("--max-regression", min=0.0, max=1.0, help="With --compare: how far the pass rate may fall."),
    ] = 0.0,
    db: DbOption = None,
) -> None:
    """Evaluate agents against recorded runs: run the suites in evals/, or list and compare stored evals."""
    if list_evals:
        _list(db, suite)
    elif compare_ids is not None:
        _compare(db, compare_ids, max_regression, html, markdown)
    else:
        _run_suites(paths or [Path("evals")], suite, concurrency, html or _DEFAULT_HTML, markdown, db)


def _run_suites(
    paths: list[Path], only: str | None, concurrency: int | None, html: Path, markdown: Path | None, db: str | None
) -> None:
    from .evals import Section, load_suites, to_rich

    out = _console()
    try:
        suites = [s for path in paths for s in load_suites(path)]
    except AgentFlowError as exc:
        _fail(str(exc))
    if only is not None:
        suites = [s for s in suites if s.name == only]
        if not suites:
            _fail(f"no suite is named {only!r} in {', '.join(str(p) for p in paths)}")
    if not suites:
        _fail(f"no eval suites in {', '.join(str(p) for p in paths)} (a suite is a module-level agentflow.evals.Suite)")
    sections: list[Section] = []
    failed: list[str] = []
    try:
        with AgentFlow(db) as flow:  # like `agentflow import`, this command may create the database
            for s in suites:
                out.print(Text(f"suite {s.name} ({s.source})", style="bold"))
                with _progress(out) as (on_start, on_case):
                    outcome = s.run(flow, concurrency=concurrency, on_start=on_start, on_case=on_case)
                subject = outcome.comparison or outcome.baseline
                out.print(to_rich(subject, outcome.problems))
                saved = f"eval {outcome.baseline.id}"
                if outcome.candidate is not None:
                    saved = f"evals {outcome.baseline.id} (recorded) and {outcome.candidate.id} (candidate)"
                out.print(Text(f"saved {saved}", style="dim"))
                sections.append(Section(subject, outcome.problems))
                if not outcome.passed:
                    failed.append(s.name)
    except AgentFlowError as exc:
        _fail(str(exc))
    _write_reports(sections, html, markdown)
    if failed:
        out.print(Text(f"{len(failed)} of {len(suites)} suite(s) failed: {', '.join(failed)}", style="bold red"))
        raise typer.Exit(code=1)
    out.print(Text(f"{len(suites)} suite(s) passed", style="bold green"))


@contextmanager
def _progress(out: Console) -> Iterator[tuple[Callable[[str, int], None], Callable[[object], None]]]:
    """A progress bar over a suite's cases, one task per phase (the recorded runs, then the candidate)."""
    progress = _progress_bar(out)
    task: list[TaskID] = []

    def on_start(phase: str, cases: int) -> None:
        task.append(progress.add_task(phase, total=cases))

    def on_case(_: object) -> None:
        if task:
            progress.advance(task[-1])

    with progress:
        yield on_start, on_case


def _write_reports(sections: list[Section], html: Path, markdown: Path | None) -> None:
    from .evals import to_html, to_markdown

    out = _console()
    for path, text in ((html, to_html(sections)), (markdown, to_markdown(sections) if markdown else None)):
        if path is None or text is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {path}: {exc.strerror or exc}")
        out.print(Text(f"report: {path}", style="dim"))


def _list(db: str | None, suite: str | None) -> None:
    from .evals import list_results

    with _open(db) as flow:
        found = list_results(flow, suite=suite)
    out = _console()
    if not found:
        out.print(Text("no evals" + (f" of suite {suite!r}" if suite else "") + "; run one: agentflow eval evals/"))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    width = max(len(e.id) for e in found)
    table.add_column("id", no_wrap=True, min_width=width)
    for header in ("suite", "mode", "created", "cases", "pass rate", "tokens", "cost"):
        right = header in ("cases", "pass rate", "tokens", "cost")
        table.add_column(header, no_wrap=True, justify="right" if right else "left")
    for e in found:
        table.add_row(
            e.id, e.suite, e.mode, datetime.fromtimestamp(e.created_at).strftime("%m-%d %H:%M"),
            str(e.case_count), f"{e.pass_rate:.0%}", f"{e.prompt_tokens + e.completion_tokens:,}",
            f"${e.cost:.6f}",
        )  # fmt: skip
    out.print(table)


def _compare(
    db: str | None, ids: tuple[str, str], max_regression: float, html: Path | None, markdown: Path | None
) -> None:
    from .evals import Section, compare, load_result, to_rich

    with _open(db) as flow:
        baseline, candidate = (load_result(flow, eval_id) for eval_id in ids)
    comparison = compare(baseline, candidate)
    problems = comparison.regressions(max_pass_rate_drop=max_regression)
    _console().print(to_rich(comparison, problems))
    if html is not None or markdown is not None:
        _write_reports([Section(comparison, problems)], html or _DEFAULT_HTML, markdown)
    if problems:
        raise typer.Exit(code=1)
