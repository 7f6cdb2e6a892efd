"""Plain-text pieces of presenting runs and steps, shared by the CLI (``_cli``) and the notebook view
(``_html``): a step's output in a line, durations, times, JSON, truncation. No rich, no typer."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ._models import Step

__all__ = [
    "human_duration",
    "local_time",
    "milliseconds",
    "money",
    "one_line",
    "output_preview",
    "to_json",
    "truncate",
]


def output_preview(step: Step) -> str:
    """What a step gave, in a line: a model call's answer (text or the tools it asked for) and tokens."""
    if step.kind.value == "llm" and isinstance(step.output, dict) and "response" in step.output:
        from ._llm import LLMResponse

        answer = LLMResponse.from_raw(step.output["response"], step.cost, replayed=True)
        said = " ".join((answer.text or "").split())
        if answer.tool_calls:
            calls = ", ".join(f"{c.name}({one_line(c.arguments)})" for c in answer.tool_calls)
            said = f"{said} → {calls}" if said else f"→ {calls}"
        return f"[{answer.prompt_tokens}+{answer.completion_tokens} tok] {said or '(no text)'}"
    return to_json(step.output)


def local_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def milliseconds(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def one_line(text: str) -> str:
    return " ".join(text.split())


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def money(dollars: float) -> str:
    """A cost in dollars: cents for a cent or more, else to its first significant digits ($0.00000285)."""
    if dollars == 0 or dollars >= 0.01:
        return f"${dollars:,.4f}"
    return "$" + f"{dollars:.10f}".rstrip("0")
