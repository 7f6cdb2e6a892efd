"""``Agent``: a tool-calling loop in which every model turn and every tool call is a recorded step.

One turn: fit the conversation to the memory (when the agent has one), check the agent's budget, ask the
model (``ctx.llm``), run the tool calls it asked for concurrently (``ctx.tool``; a bad call or a failing
tool goes back to the model as an error message it can act on), then checkpoint the agent's state. A turn
without tool calls ends the run with the model's text.

The agent holds no state of its own between runs: everything a run knows is in its messages and scratch
state, rebuilt on resume by serving the recorded turns, so one ``Agent`` serves many runs at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ._context import Context
from ._llm import Budget, LLMResponse, ToolCall
from ._llm_calls import over_budget
from ._tool import Tool, tool
from .errors import BudgetExceeded, ConfigurationError, MaxTurnsExceeded

T = TypeVar("T")

__all__ = ["Agent", "AgentResult", "ConversationFit"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class ConversationFit(Protocol):
    """What an agent needs from a conversation memory (``agentflow.memory.ConversationMemory``): the
    messages to send this turn, fitted to a budget (their recorded summary calls go through ``ctx``)."""

    async def fit(
        self,
        ctx: Context,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]: ...


@dataclass
class AgentResult:
    """How an agent's run ended: its final text, the whole conversation, and what it used."""

    output: str | None
    turns: int
    messages: list[dict[str, Any]]
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Agent:
    """A model with tools, instructions and limits, run as a loop of recorded turns.

        support = Agent(name="support", model="gpt-4o-mini", instructions="You help shoppers.",
                        tools=[lookup_order, issue_refund], max_turns=8, budget=Budget(max_tokens=20_000))

        @app.workflow()
        async def handle(ctx: Context, ticket: str) -> str:
            result = await support.run(ctx, ticket)
            return result.output

        app.run(support, "Where is order A-1?")   # or as a workflow of its own, named after the agent

    ``tools`` are ``@tool`` objects or typed functions. ``memory`` fits the conversation to a token budget
    before each turn (the full conversation stays in the state). ``budget`` limits this agent's tokens
    and cost in one run: a turn that could pass it raises ``BudgetExceeded`` before the call. ``params``
    go to every model call (``temperature``, ``api_key``, ``api_base``...; keys are never recorded). The
    state (messages and scratch) is checkpointed after each turn under ``<name>.state``: a JSON patch
    against the previous checkpoint, a full snapshot every ``snapshot_every`` turns.
    """

    def __init__(
        self,
        *,
        model: str,
        instructions: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        name: str = "agent",
        memory: ConversationFit | None = None,
        max_turns: int = 10,
        budget: Budget | None = None,
        params: Mapping[str, Any] | None = None,
        snapshot_every: int = 10,
    ) -> None:
        if not _NAME.match(name):
            raise ConfigurationError(
                f"an agent's name is a workflow name and a key part: letters, digits, '_' and '-', got {name!r}"
            )
        if max_turns < 1:
            raise ConfigurationError(f"agent {name!r}: max_turns must be at least 1, got {max_turns}")
        if snapshot_every < 1:
            raise ConfigurationError(f"agent {name!r}: snapshot_every must be at least 1, got {snapshot_every}")
        self.name = name
        self.model = model
        self.instructions = instructions
        self.tools: list[Tool] = [t if isinstance(t, Tool) else tool(t) for t in tools]
        by_name: dict[str, Tool] = {}
        for t in self.tools:
            if t.name in by_name:
                raise ConfigurationError(f"agent {name!r} has two tools named {t.name!r}; rename one with @tool(name=)")
            by_name[t.name] = t
        self._by_name = by_name
        self.memory = memory
        self.max_turns = max_turns
        self.budget = budget
        self.params = dict(params or {})
        self.snapshot_every = snapshot_every
        self.defined_in: str | None = sys._getframe(1).f_globals.get("__name__")  # where the code lives
        self._workflow: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model!r}, tools={[t.name for t in self.tools]})"

    # -- running as a workflow ----------------------------------------------------------------------------

    def code_version(self) -> str:
        """A hash of what decides the agent's behaviour: model, instructions, limits, and each tool's
        schema and source. Recorded with each run; a replay under another version says so."""
        return code_version_of(
            {
                "model": self.model,
                "instructions": self.instructions,
                "max_turns": self.max_turns,
                "tools": [tool_fingerprint(t) for t in self.tools],
                "memory": type(self.memory).__qualname__ if self.memory is not None else None,
            }
        )

    def __agentflow_workflow__(self) -> tuple[str, Callable[..., Any]]:
        """``app.run(agent, input)``: the agent as a workflow of its own, registered under its name."""
        if self._workflow is None:
            agent = self

            async def run_agent(ctx: Context, input: str | list[dict[str, Any]]) -> AgentResult:
                return await agent.run(ctx, input)

            run_agent.__qualname__ = f"Agent[{self.name}]"
            self._workflow = run_agent
        return self.name, self._workflow

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(
        self, ctx: Context, input: str | Sequence[Mapping[str, Any]], *, scratch: Mapping[str, Any] | None = None
    ) -> AgentResult:
        """Run the loop on ``input`` (a user message, or a message list to continue) until the model
        answers without tool calls. Raises ``MaxTurnsExceeded`` after ``max_turns`` turns that all asked
        for tools, ``BudgetExceeded`` before a turn that could pass the budget."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(input, str):
            messages.append({"role": "user", "content": input})
        else:
            messages.extend(dict(m) for m in input)
        result = AgentResult(output=None, turns=0, messages=messages, scratch=dict(scratch or {}))
        for turn in range(1, self.max_turns + 1):
            send = messages
            if self.memory is not None:
                send = await self.memory.fit(ctx, self.model, messages, tools=self.tools or None)
            self._check_budget(ctx, result, send)
            response = await ctx.llm(model=self.model, messages=send, tools=self.tools or None, **self.params)
            result.turns = turn
            result.prompt_tokens += response.prompt_tokens
            result.completion_tokens += response.completion_tokens
            result.cost += response.cost
            messages.append(response.message())
            if response.tool_calls:
                # Every approval of the turn is settled before any of its tools is called: a call's key
                # (tool#n) is then taken in the order of the model's calls, whichever approvals a resume
                # finds already given, so a resumed turn asks for the same steps as the first pass.
                verdicts = await _settled(self._verdict(ctx, call) for call in response.tool_calls)
                contents = await _settled(
                    self._call_tool(ctx, call, verdict)
                    for call, verdict in zip(response.tool_calls, verdicts, strict=True)
                )
                result.tool_calls += len(response.tool_calls)
                for call, content in zip(response.tool_calls, contents, strict=True):
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
            result.scratch["turn"] = turn
            self._checkpoint(ctx, result)
            if not response.tool_calls:
                result.output = response.text
                return result
        raise MaxTurnsExceeded(self.name, self.max_turns, _asked_for(response))

    def state(self, result: AgentResult) -> dict[str, Any]:
        """The checkpointed state of a run: its messages and scratch state."""
        return {"messages": result.messages, "scratch": result.scratch}

    def _checkpoint(self, ctx: Context, result: AgentResult) -> None:
        live = self.state(result)
        recorded = ctx.checkpoint(f"{self.name}.state", live, snapshot_every=self.snapshot_every)
        if recorded is not live and recorded != json.loads(json.dumps(live, default=str)):
            # Served from a record that differs from the live state: a fork edited it. Go on from it.
            result.messages[:] = recorded.get("messages", result.messages)
            result.scratch = dict(recorded.get("scratch", result.scratch))

    def _check_budget(self, ctx: Context, result: AgentResult, messages: list[dict[str, Any]]) -> None:
        if self.budget is None:
            return
        params = {**self.params, "tools": [t.schema() for t in self.tools] or None}
        problem = over_budget(self.budget, result.total_tokens, result.cost, self.model, messages, params)
        if problem is not None:
            raise BudgetExceeded(
                f"agent {self.name!r} in run {ctx.run_id!r} {problem}; turn {result.turns + 1} was not taken"
            )

    async def _verdict(self, ctx: Context, call: ToolCall) -> tuple[Tool, dict[str, Any]] | str:
        """``(tool, arguments)`` when the call may be made; else the error the model reads instead. A tool
        that ``needs_approval`` for these arguments waits (durably) for a person's "approval" event."""
        found = self._by_name.get(call.name)
        if found is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            return f"error: there is no tool named {call.name!r}; the tools are: {known}"
        try:
            arguments = call.args()
        except ValueError as exc:
            return f"error: the arguments of {call.name!r} are not a JSON object ({exc}); send them as one"
        if found.needs_approval is not None and found.needs_approval(arguments):
            # A person decides: the run waits (suspended, holding nothing) for an "approval" event.
            decision = await ctx.wait_for_event(f"approve.{found.name}", type="approval")
            if not (isinstance(decision, dict) and decision.get("approved")):
                why = decision.get("note") if isinstance(decision, dict) else None
                return f"error: a person declined this {found.name} call" + (f": {why}" if why else "")
        return found, arguments

    async def _call_tool(self, ctx: Context, call: ToolCall, verdict: tuple[Tool, dict[str, Any]] | str) -> str:
        """The tool message content for one call: the result, or an error the model can act on."""
        if isinstance(verdict, str):
            return verdict
        found, arguments = verdict
        result = await ctx.tool(found, arguments)  # a mapping: an argument may be named like ``retry``
        return result.content


def tool_fingerprint(t: Tool) -> dict[str, Any]:
    """What a tool contributes to an agent's code version: its schema and its function's source."""
    try:
        source = inspect.getsource(t.fn)
    except (OSError, TypeError):
        source = getattr(t.fn, "__qualname__", repr(t.fn))
    return {"schema": t.schema(), "idempotent": t.idempotent, "source": source}


def code_version_of(description: Mapping[str, Any]) -> str:
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _settled(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``calls``, run concurrently, each started in order (so each takes its keys in
    order); once all have settled, the first wait (``Suspend``) or failure goes on up."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


def _asked_for(response: LLMResponse) -> list[str]:
    return [call.name for call in response.tool_calls]
