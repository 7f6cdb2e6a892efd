"""What a forked run's step gives instead of its recorded output: ``app.fork(..., override=...)``."""

from __future__ import annotations

import copy
import json
from typing import Any

from ._codec import canonical_json
from ._store import StepRecord
from .errors import AgentFlowError

__all__ = ["NO_OVERRIDE", "override_output"]


class _NoOverride:
    def __repr__(self) -> str:
        return "NO_OVERRIDE"


NO_OVERRIDE: Any = _NoOverride()
"""``fork``'s default: the step ``at`` runs live again instead of giving an overridden output."""


def override_output(rec: StepRecord, value: Any) -> str:
    """The output text to record for ``rec``'s step in a fork, from what the user gave.

    A model call takes the new answer's text, an assistant message dict (``content``, ``tool_calls``),
    a whole response dict (with ``choices``), or an ``LLMResponse``; a checkpoint takes the new state; an
    event wait takes the event's payload (``{"approved": True}``); a tool or a step takes its new result.
    """
    if rec.kind == "llm":
        return canonical_json({"response": _llm_response(rec, value)})
    if rec.kind == "event":  # what the wait receives: the payload of the event
        return canonical_json({"event_id": None, "payload": value})
    if rec.kind == "checkpoint":
        if not isinstance(value, dict):
            raise AgentFlowError(f"{rec.key}: a checkpoint's override is the whole state (a dict), got {value!r}")
        return canonical_json({"snapshot": value})
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise AgentFlowError(f"{rec.key}: the override is not JSON data ({exc})") from exc


def _llm_response(rec: StepRecord, value: Any) -> dict[str, Any]:
    raw = getattr(value, "raw", None)
    if isinstance(raw, dict):  # an LLMResponse
        return raw
    if isinstance(value, dict) and "choices" in value:
        return value
    recorded: dict[str, Any] = json.loads(rec.output or "{}").get("response") or {}
    response = copy.deepcopy(recorded)
    if isinstance(value, str):
        message: dict[str, Any] = {"role": "assistant", "content": value}
    elif isinstance(value, dict):
        message = {"role": "assistant", **value}
    else:
        raise AgentFlowError(
            f"{rec.key}: a model call's override is the answer's text, an assistant message dict or a whole "
            f"response, got {type(value).__name__}"
        )
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}
    response["choices"] = [choice]
    return response
