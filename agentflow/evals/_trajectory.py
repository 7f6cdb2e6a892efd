"""A run read as a trajectory: its model turns, the tool calls it made, its answer, and what it used.

Scorers look at a ``Trajectory``, never at step records: it is built once per run, from the run's record
and its steps, decoding only what scoring needs (a model call's response, a tool's request and result), so
re-scoring a thousand recorded runs does not parse a thousand agents' checkpointed states.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._models import ErrorInfo

if TYPE_CHECKING:
    from .._models import Run, Step
    from .._store import RunRecord, StepRecord

__all__ = ["ModelTurn", "ToolUse", "Trajectory", "trajectory_from_records", "trajectory_from_run"]


@dataclass(frozen=True)
class ToolUse:
    """One tool call a run made, as recorded: the tool's name, the arguments it got, and its result or
    the error it gave (a failed call, bad arguments, or a counterfactual call the record had no answer for).
    """

    key: str
    name: str
    arguments: dict[str, Any]
    output: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def label(self) -> str:
        """``name(arg=value, ...)``: how reports show the call."""
        args = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(self.arguments.items()))
        return f"{self.name}({args})"


@dataclass(frozen=True)
class ModelTurn:
    """One model call: the text it answered and the tool calls it asked for (name and parsed arguments)."""

    key: str
    model: str
    text: str | None
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Trajectory:
    """What a run did, for scoring: built from a recorded run by ``trajectory_from_run`` (or from records).

    ``output`` is the answer: an agent's or a planning agent's final text, else the workflow's output as
    JSON data; ``result`` is the whole output. ``tool_calls`` are the tool calls the run made, in the
    order they were recorded (tools run side by side are recorded as they finish); ``turns`` its model
    calls. ``errors`` names every failed step and the run's own error. ``latency`` is seconds from the
    run's creation to its last update.
    """

    run_id: str
    workflow: str
    status: str
    input: dict[str, Any]
    output: Any
    result: Any
    error: str | None
    turns: tuple[ModelTurn, ...]
    tool_calls: tuple[ToolUse, ...]
    errors: tuple[str, ...]
    step_count: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    waiting_for: str | None = None
    events: tuple[tuple[str, Any], ...] = field(default=(), repr=False)  # (event type, payload) received
    _order: tuple[str, ...] = field(default=(), repr=False, compare=False)  # keys of turns and tools, in order

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tool_names(self) -> list[str]:
        return [call.name for call in self.tool_calls]

    def path(self) -> list[dict[str, Any]]:
        """The trajectory as a list of plain events (model turns and tool calls, in record order): what an
        eval stores per case, and what ``first_divergence`` compares."""
        out: list[dict[str, Any]] = []
        turns = {turn.key: turn for turn in self.turns}
        tools = {call.key: call for call in self.tool_calls}
        for key in self._order:
            turn = turns.get(key)
            if turn is not None:
                calls = [{"name": n, "arguments": a} for n, a in turn.tool_calls]
                out.append({"kind": "model", "key": key, "text": turn.text, "calls": calls})
                continue
            call = tools[key]
            event: dict[str, Any] = {"kind": "tool", "key": key, "name": call.name, "arguments": call.arguments}
            event["ok"] = call.ok
            if call.error is not None:
                event["error"] = call.error
            out.append(event)
        return out


def answer_of(result: Any) -> Any:
    """The answer in a workflow's output: an ``AgentResult``'s or a ``PlanResult``'s text, else the output."""
    if isinstance(result, dict) and "output" in result and ("turns" in result or "plans" in result):
        return result["output"]
    return result


def _error_text(error: ErrorInfo | None) -> str | None:
    return None if error is None else f"{error.type}: {error.message}" if error.type else error.message


def _turn(key: str, output: Any, prompt: int, completion: int, cost: float) -> ModelTurn:
    response = output.get("response") if isinstance(output, dict) else None
    if not isinstance(response, dict):  # a streamed call records its assembled response the same way
        return ModelTurn(key, "", None, (), prompt, completion, cost)
    from .._llm import LLMResponse

    parsed = LLMResponse.from_raw(response, cost, replayed=True)
    calls = []
    for call in parsed.tool_calls:
        try:
            args = call.args()
        except ValueError:
            args = {"__invalid_json__": call.arguments}
        calls.append((call.name, args))
    return ModelTurn(key, parsed.model, parsed.text, tuple(calls), prompt, completion, cost)


@dataclass
class _Builder:
    """Collects a run's steps into a ``Trajectory``; steps arrive decoded (``Step``) or as records."""

    turns: list[ModelTurn] = field(default_factory=list)
    tools: list[ToolUse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    count: int = 0

    def add(
        self,
        key: str,
        kind: str,
        name: str,
        output: Any,
        request: Any,
        error: ErrorInfo | None,
        usage: tuple[int, int, float],
    ) -> None:
        self.count += 1
        if kind == "llm":
            self.turns.append(_turn(key, output, *usage))
            self.order.append(key)
        elif kind == "tool":
            arguments = request.get("arguments") if isinstance(request, dict) else None
            self.tools.append(ToolUse(key, name, dict(arguments or {}), output, _error_text(error)))
            self.order.append(key)
        elif kind == "event" and error is None and isinstance(request, dict) and isinstance(output, dict):
            self.events.append((str(request.get("event")), output.get("payload")))
        if error is not None:
            self.errors.append(f"{key}: {_error_text(error)}")


def _finish(
    builder: _Builder,
    *,
    run_id: str,
    workflow: str,
    status: str,
    input: dict[str, Any],
    result: Any,
    error: ErrorInfo | None,
    usage: tuple[int, int, float],
    latency: float,
    waiting_for: str | None,
) -> Trajectory:
    errors = list(builder.errors)
    run_error = _error_text(error)
    if run_error is not None:
        errors.append(f"run: {run_error}")
    return Trajectory(
        run_id=run_id,
        workflow=workflow,
        status=status,
        input=input,
        output=answer_of(result),
        result=result,
        error=run_error,
        turns=tuple(builder.turns),
        tool_calls=tuple(builder.tools),
        errors=tuple(errors),
        step_count=builder.count,
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        cost=usage[2],
        latency=max(latency, 0.0),
        waiting_for=waiting_for,
        events=tuple(builder.events),
        _order=tuple(builder.order),
    )


_DECODED_OUTPUT = frozenset({"llm", "tool", "event"})
_DECODED_REQUEST = frozenset({"tool", "event"})


def trajectory_from_records(run: RunRecord, steps: Iterable[StepRecord]) -> Trajectory:
    """The trajectory of a run from its store records (the fast path: only what scoring reads is parsed)."""
    builder = _Builder()
    for rec in steps:
        kind = rec.kind
        output = json.loads(rec.output) if kind in _DECODED_OUTPUT and rec.output is not None else None
        request = json.loads(rec.request) if kind in _DECODED_REQUEST and rec.request is not None else None
        usage = (rec.prompt_tokens, rec.completion_tokens, rec.cost)
        builder.add(rec.key, kind, rec.name, output, request, ErrorInfo.from_json(rec.error), usage)
    return _finish(
        builder,
        run_id=run.id,
        workflow=run.workflow,
        status=run.status,
        input=json.loads(run.input),
        result=None if run.output is None else json.loads(run.output),
        error=ErrorInfo.from_json(run.error),
        usage=(run.prompt_tokens, run.completion_tokens, run.cost),
        latency=run.updated_at - run.created_at,
        waiting_for=run.waiting_for,
    )


def trajectory_from_run(run: Run, steps: Sequence[Step] | None = None) -> Trajectory:
    """The trajectory of a ``Run`` (``app.get_run(id)``), from its steps (read from the store if not given)."""
    builder = _Builder()
    for step in run.steps if steps is None else steps:
        usage = (step.usage.prompt_tokens, step.usage.completion_tokens, step.cost)
        builder.add(step.key, str(step.kind), step.name, step.output, step.request, step.error, usage)
    return _finish(
        builder,
        run_id=run.id,
        workflow=run.workflow,
        status=str(run.status),
        input=dict(run.input),
        result=_plain(run.output),
        error=run.error,
        usage=(run.usage.prompt_tokens, run.usage.completion_tokens, run.cost),
        latency=(run.updated_at - run.created_at).total_seconds(),
        waiting_for=run.waiting_for,
    )


def _plain(value: Any) -> Any:
    """A run's output as JSON data (an ``AgentResult`` or a pydantic model becomes a dict)."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    from .._codec import Codec

    return json.loads(Codec().encode(value, "a run's output"))


def events_by_type(trajectory: Trajectory) -> Mapping[str, list[Any]]:
    """The payloads of the events a run received, by event type, in the order it took them."""
    found: dict[str, list[Any]] = {}
    for type_, payload in trajectory.events:
        found.setdefault(type_, []).append(payload)
    return found
