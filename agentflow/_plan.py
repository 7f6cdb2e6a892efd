"""Plans made by a model at run time, checked, compiled into a step graph and executed durably.

A ``PlanningAgent`` asks its model for a ``Plan`` (structured output): steps with ids, each calling a tool
or a sub-agent with arguments that may refer to earlier steps' outputs (``"${s1}"``, ``"${s1.items.0}"``,
or inside text: ``"compare ${s1} with ${s2}"``), and dependencies. The plan is checked (unknown tools,
cycles, dangling references, bad arguments); what is wrong goes back to the model to fix, a bounded number
of times. The plan then becomes a graph (``ctx.graph``) whose node keys are the plan's step ids, so its
independent steps run concurrently and a resumed run finds every finished step however the first run was
scheduled. A step that fails makes the model plan the remaining work again, with the failure and the
results so far in front of it. A resumed run gets its plans from the record: the same plan, not a new one.

Fields are all required, and arguments are JSON text, so that the schema is accepted by providers' strict
structured-output modes.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from ._agent import Agent, code_version_of, tool_fingerprint
from ._context import Context
from ._graph import Node
from ._tool import Tool, tool
from .errors import ConfigurationError, GraphFailed, NonRetryableError, PlanInvalid, StructuredOutputError

__all__ = ["Plan", "PlanResult", "PlanStep", "PlanningAgent", "check_plan", "plan_step"]

_STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_REF = re.compile(r"\$\{([A-Za-z][A-Za-z0-9_-]*)((?:\.[A-Za-z0-9_-]+)*)\}")
_WHOLE_REF = re.compile(r"^\$\{([A-Za-z][A-Za-z0-9_-]*)((?:\.[A-Za-z0-9_-]+)*)\}$")


class PlanStep(BaseModel):
    """One step of a plan: call ``action`` (a tool or a sub-agent, by name) with ``args``."""

    id: str = Field(description="a short unique id, letters first: s1, search_a")
    action: str = Field(description="the name of the tool or sub-agent to call")
    args: str = Field(
        description='the arguments as a JSON object, e.g. {"query": "solar"}; a string "${s1}" stands for the '
        'output of step s1, "${s1.field}" for a part of it, and "${s1}" inside longer text is replaced there. '
        'A sub-agent takes {"task": "..."}'
    )
    depends_on: list[str] = Field(description="ids of steps that must finish first (referenced ones are implied)")
    why: str = Field(description="one short sentence: why this step")

    def arguments(self) -> dict[str, Any]:
        """``args`` parsed; ``ValueError`` when it is not a JSON object."""
        parsed = json.loads(self.args) if self.args.strip() else {}
        if not isinstance(parsed, dict):
            raise ValueError("args is not a JSON object")
        return parsed


class Plan(BaseModel):
    """Steps to reach a goal; independent ones run at the same time."""

    steps: list[PlanStep]


def plan_step(id: str, action: str, args: Mapping[str, Any] | None = None, depends_on: Sequence[str] = ()) -> PlanStep:
    """A ``PlanStep`` from plain values (for tests and hand-written plans)."""
    return PlanStep(id=id, action=action, args=json.dumps(dict(args or {})), depends_on=list(depends_on), why="")


# -- checking -----------------------------------------------------------------------------------------------


def _refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.group(1) for m in _REF.finditer(value)]
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in _refs(v)]
    return []


def check_plan(
    plan: Plan, tools: Mapping[str, Tool], agents: Mapping[str, Agent], done: Mapping[str, Any] | None = None
) -> list[str]:
    """Every problem of ``plan`` as a sentence the model can act on; empty when it can run.

    ``done`` holds the outputs of steps finished under earlier plans: they may be referred to, not redone.
    """
    done = done or {}
    problems: list[str] = []
    if not plan.steps:
        problems.append("the plan has no steps")
    ids = [s.id for s in plan.steps]
    seen: set[str] = set()
    for s in plan.steps:
        if not _STEP_ID.match(s.id):
            problems.append(f"step id {s.id!r} must start with a letter and hold only letters, digits, '_' and '-'")
        if s.id in seen:
            problems.append(f"two steps have the id {s.id!r}; ids must be unique")
        if s.id in done:
            problems.append(f"step id {s.id!r} is taken by a step that already finished; use a new id")
        seen.add(s.id)
    known = set(ids)
    for s in plan.steps:
        where = f"step {s.id!r}"
        try:
            args = s.arguments()
        except ValueError as exc:
            problems.append(f"{where}: args must be a JSON object ({exc})")
            args = None
        if s.action in tools:
            if args is not None:
                problems.extend(f"{where}: {p}" for p in _check_tool_args(tools[s.action], args))
        elif s.action in agents:
            if args is not None and set(args) != {"task"}:
                problems.append(f'{where}: sub-agent {s.action!r} takes {{"task": "..."}}, got {sorted(args)}')
        else:
            names = sorted(tools) + sorted(agents)
            problems.append(f"{where}: there is no tool or sub-agent {s.action!r}; use one of: {', '.join(names)}")
        for dep in s.depends_on:
            if dep not in known and dep not in done:
                problems.append(f"{where} depends on {dep!r}, which is not a step of the plan")
        for ref in _refs(args or {}):
            if ref not in known and ref not in done:
                problems.append(f"{where} refers to ${{{ref}}}, which is not a step of the plan")
    cycle = _find_cycle(plan)
    if cycle:
        problems.append(f"the steps {' -> '.join(cycle)} depend on each other in a cycle; break it")
    return problems


def _check_tool_args(t: Tool, args: Mapping[str, Any]) -> list[str]:
    params = t.parameters
    properties = params.get("properties", {})
    problems = [f"tool {t.name!r} has no argument {name!r}" for name in args if name not in properties]
    problems += [
        f"tool {t.name!r} needs the argument {name!r}" for name in params.get("required", []) if name not in args
    ]
    return problems


def _dependencies(s: PlanStep) -> set[str]:
    try:
        refs = _refs(s.arguments())
    except ValueError:
        refs = []
    return set(s.depends_on) | set(refs)


def _find_cycle(plan: Plan) -> list[str]:
    deps = {s.id: _dependencies(s) for s in plan.steps}
    state: dict[str, int] = {}  # 1: on the path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(deps.get(node, ())):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for s in plan.steps:
        if s.id not in state:
            found = visit(s.id)
            if found:
                return found
    return []


# -- running ------------------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    """What a planning agent did: its answer, the plans it made, and every finished step's output."""

    output: str | None
    plans: list[Plan]
    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # step id -> why it failed (later re-planned)

    @property
    def replans(self) -> int:
        return max(len(self.plans) - 1, 0)


class PlanningAgent:
    """An agent that plans first, then executes the plan as a durable graph, re-planning on failure.

        research = PlanningAgent(name="research", model="gpt-4o-mini", tools=[search, fetch],
                                 agents=[writer], concurrency=4)
        result = await research.run(ctx, "Compare solar and wind for a small farm")

    ``agents`` are sub-agents a step may call with ``{"task": ...}``. ``max_fixes`` bounds the rounds in
    which the model corrects an invalid plan; ``max_replans`` the new plans after failed steps. The
    answer is a last model call that reads the step results.
    """

    def __init__(
        self,
        *,
        model: str,
        name: str = "planner",
        instructions: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        agents: Sequence[Agent] = (),
        concurrency: int | None = 4,
        max_fixes: int = 2,
        max_replans: int = 2,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.instructions = instructions
        self.tools = {t.name: t for t in (t if isinstance(t, Tool) else tool(t) for t in tools)}
        self.agents = {a.name: a for a in agents}
        clash = set(self.tools) & set(self.agents)
        if clash:
            raise ConfigurationError(f"planner {name!r}: {sorted(clash)} name both a tool and a sub-agent")
        if not self.tools and not self.agents:
            raise ConfigurationError(f"planner {name!r} needs at least one tool or sub-agent to plan with")
        self.concurrency = concurrency
        self.max_fixes = max_fixes
        self.max_replans = max_replans
        self.params = dict(params or {})
        self.defined_in: str | None = sys._getframe(1).f_globals.get("__name__")  # where the code lives
        self._workflow: Callable[..., Any] | None = None

    def code_version(self) -> str:
        """A hash of the model, instructions, limits, tools and sub-agents (recorded with each run)."""
        return code_version_of(
            {
                "model": self.model,
                "instructions": self.instructions,
                "limits": [self.concurrency, self.max_fixes, self.max_replans],
                "tools": [tool_fingerprint(t) for t in self.tools.values()],
                "agents": {name: agent.code_version() for name, agent in self.agents.items()},
            }
        )

    def __agentflow_workflow__(self) -> tuple[str, Callable[..., Any]]:
        """``app.run(planner, goal)``: the planner as a workflow of its own, registered under its name."""
        if self._workflow is None:
            planner = self

            async def run_planner(ctx: Context, goal: str) -> PlanResult:
                return await planner.run(ctx, goal)

            run_planner.__qualname__ = f"PlanningAgent[{self.name}]"
            self._workflow = run_planner
        return self.name, self._workflow

    async def run(self, ctx: Context, goal: str) -> PlanResult:
        """Plan, execute, re-plan on failure, answer."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system_prompt()},
            {"role": "user", "content": f"Goal: {goal}\nMake a plan."},
        ]
        result = PlanResult(output=None, plans=[])
        for attempt in range(self.max_replans + 1):
            plan = await self._make_plan(ctx, messages, result.results)
            result.plans.append(plan)
            try:
                outputs = await self._execute(ctx, plan, attempt, result.results)
            except GraphFailed as failed:
                result.results.update(failed.outputs)
                why = {node: str(err) for node, err in failed.errors.items()}
                result.failures.update(why)
                if attempt == self.max_replans:
                    raise
                messages.append({"role": "user", "content": self._replan_prompt(failed, why, result.results)})
                continue
            result.results.update(outputs)
            break
        answer = await ctx.llm(
            model=self.model,
            messages=[*messages, {"role": "user", "content": self._answer_prompt(goal, result.results)}],
            **self.params,
        )
        result.output = answer.text
        return result

    async def _make_plan(self, ctx: Context, messages: list[dict[str, Any]], done: Mapping[str, Any]) -> Plan:
        problems: list[str] = []
        for _ in range(self.max_fixes + 1):
            try:
                response = await ctx.llm(model=self.model, messages=messages, response_format=Plan, **self.params)
            except StructuredOutputError as exc:
                problems = [str(exc)]
                messages.append({"role": "user", "content": f"That was not a valid plan: {exc}. Send the plan again."})
                continue
            messages.append(response.message())
            plan: Plan = response.parsed
            problems = check_plan(plan, self.tools, self.agents, done)
            if not problems:
                return plan
            listing = "\n".join(f"- {p}" for p in problems)
            messages.append({"role": "user", "content": f"The plan cannot run:\n{listing}\nSend a corrected plan."})
        raise PlanInvalid(self.name, self.max_fixes, problems)

    async def _execute(self, ctx: Context, plan: Plan, attempt: int, done: Mapping[str, Any]) -> dict[str, Any]:
        graph = ctx.graph(f"plan{attempt}", concurrency=self.concurrency)
        nodes: dict[str, Node] = {}
        for s in _in_dependency_order(plan):
            args = _compile(s.arguments(), nodes, done)
            deps = [d for d in s.depends_on if d in nodes]
            action = self.tools.get(s.action) or self.agents[s.action]
            nodes[s.id] = graph.add(s.id, self._runner(ctx, action), args, deps=deps)
        return await graph.run()

    def _runner(self, ctx: Context, action: Tool | Agent) -> Callable[[dict[str, Any]], Any]:
        if isinstance(action, Agent):

            async def run_agent(args: dict[str, Any]) -> str | None:
                outcome = await action.run(ctx, str(_render(args)["task"]))
                return outcome.output

            run_agent.__qualname__ = f"agent:{action.name}"
            return run_agent

        async def run_tool(args: dict[str, Any]) -> Any:
            outcome = await ctx.tool(action, _render(args))
            if not outcome.ok:
                raise NonRetryableError(outcome.error or "the tool failed")
            return outcome.value

        run_tool.__qualname__ = f"tool:{action.name}"
        return run_tool

    def _system_prompt(self) -> str:
        lines = [self.instructions or "You plan work as steps that tools and sub-agents carry out.", "", "Tools:"]
        for t in self.tools.values():
            lines.append(f"- {t.name}: {t.description} Arguments (JSON schema): {json.dumps(t.parameters)}")
        if self.agents:
            lines.append('Sub-agents (arguments {"task": "..."}):')
            lines += [f"- {a.name}: {a.instructions or 'an assistant'}" for a in self.agents.values()]
        lines += [
            "",
            "Answer with a plan. Steps that do not depend on each other run at the same time, so only add a",
            "dependency where a step needs another's output. Refer to an output as ${id} or ${id.field}.",
        ]
        return "\n".join(lines)

    @staticmethod
    def _replan_prompt(failed: GraphFailed, why: Mapping[str, str], done: Mapping[str, Any]) -> str:
        finished = "\n".join(f"- {k}: {_preview(v)}" for k, v in done.items()) or "- none"
        failures = "\n".join(f"- {k}: {v}" for k, v in why.items())
        return (
            f"Some steps failed:\n{failures}\nSkipped because of them: {', '.join(failed.skipped) or 'none'}.\n"
            f"Finished so far (refer to them as ${{id}}, do not redo them):\n{finished}\n"
            "Plan the remaining work with new step ids, working around the failure."
        )

    @staticmethod
    def _answer_prompt(goal: str, results: Mapping[str, Any]) -> str:
        listing = "\n".join(f"- {k}: {_preview(v, 2000)}" for k, v in results.items())
        return f"The plan ran. Results:\n{listing}\nNow answer the goal: {goal}"


def _preview(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _in_dependency_order(plan: Plan) -> list[PlanStep]:
    """The steps so that each comes after those it depends on (the plan was checked: no cycles)."""
    by_id = {s.id: s for s in plan.steps}
    ordered: list[PlanStep] = []
    placed: set[str] = set()

    def place(s: PlanStep) -> None:
        if s.id in placed:
            return
        for dep in sorted(_dependencies(s)):
            if dep in by_id:
                place(by_id[dep])
        placed.add(s.id)
        ordered.append(s)

    for s in plan.steps:
        place(s)
    return ordered


def _compile(value: Any, nodes: Mapping[str, Node], done: Mapping[str, Any]) -> Any:
    """Arguments with their ``${...}`` references made graph references (or earlier plans' outputs)."""
    if isinstance(value, str):
        whole = _WHOLE_REF.match(value)
        if whole:
            return _ref(whole.group(1), whole.group(2), nodes, done)
        if _REF.search(value):
            parts: list[Any] = []
            last = 0
            for m in _REF.finditer(value):
                parts += [value[last : m.start()], _ref(m.group(1), m.group(2), nodes, done)]
                last = m.end()
            parts.append(value[last:])
            return {_TEMPLATE: parts}
        return value
    if isinstance(value, Mapping):
        return {k: _compile(v, nodes, done) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile(v, nodes, done) for v in value]
    return value


def _ref(step_id: str, path: str, nodes: Mapping[str, Node], done: Mapping[str, Any]) -> Any:
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")[1:]]
    if step_id in nodes:
        return nodes[step_id].path(*parts) if parts else nodes[step_id]
    value = done[step_id]
    for p in parts:
        value = value[p]
    return value


_TEMPLATE = "__agentflow_template__"


def _render(value: Any) -> Any:
    """Resolved arguments with text templates joined: ``{"__agentflow_template__": ["a ", 1]}`` -> ``"a 1"``."""
    if isinstance(value, Mapping):
        if set(value) == {_TEMPLATE}:
            return "".join(p if isinstance(p, str) else json.dumps(p, default=str) for p in value[_TEMPLATE])
        return {k: _render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v) for v in value]
    return value
