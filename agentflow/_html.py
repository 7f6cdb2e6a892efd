"""Runs shown in a notebook: ``Run._repr_html_`` renders the run's header and its steps as an HTML table.

Everything shown comes from the ``Run`` and its ``Step``s (the same as ``agentflow show``); text from the
records is escaped. A long run shows its first steps and says how many more there are.
"""

from __future__ import annotations

from html import escape

from ._models import Run, RunStatus, Step
from ._present import human_duration, local_time, milliseconds, money, one_line, output_preview, to_json, truncate

__all__ = ["run_html"]

MAX_STEPS = 50  # steps shown; the rest are counted
_PREVIEW = 100  # characters of a step's output or error
_DETAIL = 300  # characters of the run's input, output or error
_STATUS_COLOUR = {
    RunStatus.COMPLETED: "#1a7f37",
    RunStatus.FAILED: "#cf222e",
    RunStatus.RUNNING: "#9a6700",
    RunStatus.PENDING: "#0969da",
    RunStatus.WAITING: "#0969da",
    RunStatus.PAUSED: "#8250df",
    RunStatus.CANCELLED: "#cf222e",
}
_CELL = "padding:2px 8px;text-align:left;vertical-align:top"


def run_html(run: Run) -> str:
    """The run's header (status, times, usage, input, output or error) and its steps, as HTML."""
    steps = run.steps
    rows = [
        ("workflow", escape(run.workflow)),
        ("status", _status(run.status.value, _STATUS_COLOUR.get(run.status, "inherit"))),
        ("created", escape(local_time(run.created_at))),
    ]
    if run.status.is_terminal:
        rows.append(("took", escape(human_duration((run.updated_at - run.created_at).total_seconds()))))
    if run.status is RunStatus.WAITING and run.waiting_for:
        rows.append(("waiting for", escape(f"event {run.waiting_for!r}")))
    elif run.status is RunStatus.WAITING and run.wake_at is not None:
        rows.append(("wakes", escape(local_time(run.wake_at))))
    usage = run.usage
    rows.append(("usage", escape(f"{usage.total_tokens:,} tokens, cost {money(run.cost)}")))
    rows.append(("input", _code(truncate(to_json(run.input), _DETAIL))))
    if run.error is not None:
        rows.append(("error", _code(truncate(str(run.error), _DETAIL), colour="#cf222e")))
    elif run.status is RunStatus.COMPLETED:
        rows.append(("output", _code(truncate(to_json(run.output), _DETAIL))))
    header = "".join(
        f'<tr><th style="{_CELL};font-weight:normal;opacity:0.7">{label}</th><td style="{_CELL}">{value}</td></tr>'
        for label, value in rows
    )
    parts = [
        f'<div><strong>run {escape(run.id)}</strong> <span style="opacity:0.7">{len(steps)} steps</span>',
        f"<table>{header}</table>",
    ]
    if steps:
        parts.append(_steps_table(steps))
    parts.append("</div>")
    return "".join(parts)


def _steps_table(steps: list[Step]) -> str:
    head = "".join(f'<th style="{_CELL}">{name}</th>' for name in ("seq", "key", "kind", "status", "took", "output"))
    start = steps[0].started_at
    body = []
    for step in steps[:MAX_STEPS]:
        if step.error is not None:
            said = _code(truncate(one_line(str(step.error)), _PREVIEW), colour="#cf222e")
        else:
            said = _code(truncate(one_line(output_preview(step)), _PREVIEW))
        status = step.status.value + (f" ({step.attempt} attempts)" if step.attempt > 1 else "")
        cells = (
            str(step.seq),
            f"<code>{escape(step.key)}</code>",
            escape(step.kind.value),
            escape(status),
            escape(f"+{(step.started_at - start).total_seconds():.3f}s, {milliseconds(step.duration)}"),
            said,
        )
        body.append("<tr>" + "".join(f'<td style="{_CELL}">{cell}</td>' for cell in cells) + "</tr>")
    if len(steps) > MAX_STEPS:
        more = len(steps) - MAX_STEPS
        body.append(f'<tr><td colspan="6" style="{_CELL};opacity:0.7">… and {more:,} more steps (run.steps)</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(text: str, colour: str) -> str:
    return f'<span style="color:{colour};font-weight:bold">{escape(text)}</span>'


def _code(text: str, colour: str | None = None) -> str:
    style = f' style="color:{colour}"' if colour else ""
    return f"<code{style}>{escape(text)}</code>"
