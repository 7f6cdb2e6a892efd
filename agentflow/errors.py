"""The exceptions agentflow raises, all importable from ``agentflow``.

Tree::

    AgentFlowError                    base of everything agentflow raises
    ├── ConfigurationError            bad arguments: an unknown backoff, a workflow registered twice
    ├── WorkflowNotRegistered         a run names a workflow this AgentFlow does not know
    ├── RunNotFound                   no run with that id
    ├── RunConflict                   a run id reused for another workflow or other input
    ├── SerializationError            a value cannot be stored as JSON (names the step or the run)
    ├── StepFailed                    a step failed for good; raised into the workflow, live and on resume
    ├── StepTimeout                   one attempt of a step passed its timeout (retried by the policy)
    ├── GraphFailed                   nodes of a step graph failed; the others ran or were skipped
    ├── BudgetExceeded                a model call would take the run past its budget (not made)
    ├── MaxTurnsExceeded              an agent took all its turns without a final answer
    ├── EventTimeout                  a wait for an event passed its timeout
    ├── DeadlineExceeded              a run passed its deadline (its compensations run)
    ├── RunCancelled                  the run was cancelled (recorded as its error; raised by handles)
    ├── PlanInvalid                   a planning agent's model could not produce a plan that can run
    ├── StructuredOutputError         a model's answer does not parse into the requested model
    ├── ReplayDivergence              the code asks for something other than what the record holds
    ├── BundleError                   a run bundle is not one, is damaged or newer, or clashes with a run
    └── StoreError                    the database cannot be used
        ├── NotAnAgentFlowDatabase    the file is damaged, not SQLite, or holds someone else's tables
        ├── SchemaVersionError        the database was written by a newer agentflow
        └── LeaseLost                 a worker wrote to a run another worker has taken over (not written)

    NonRetryableError                 raised by *your* step code to stop retries at once; it is the
                                      user's signal, not agentflow's failure, so it subclasses Exception

Errors that come from bad input always say what to do next and change nothing in the database.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentFlowError",
    "BudgetExceeded",
    "BundleError",
    "ConfigurationError",
    "DeadlineExceeded",
    "EventTimeout",
    "GraphFailed",
    "LeaseLost",
    "MaxTurnsExceeded",
    "NonRetryableError",
    "NotAnAgentFlowDatabase",
    "PlanInvalid",
    "ProviderAnswerError",
    "ReplayDivergence",
    "RunCancelled",
    "RunConflict",
    "RunNotFound",
    "SchemaVersionError",
    "SerializationError",
    "StepFailed",
    "StepTimeout",
    "StoreError",
    "StructuredOutputError",
    "WorkflowNotRegistered",
]


class AgentFlowError(Exception):
    """Base class of every error agentflow raises."""


class ConfigurationError(AgentFlowError):
    """An argument or a setting is not usable; the message names it."""


class WorkflowNotRegistered(AgentFlowError):
    """A run refers to a workflow name this ``AgentFlow`` instance has not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"workflow {name!r} is not registered with this AgentFlow (registered: {listed}); "
            "import the module that defines it, or decorate it with @app.workflow(), before resuming"
        )


class RunNotFound(AgentFlowError):
    """No run has this id in the store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}; `agentflow runs` lists the runs in this database")


class RunConflict(AgentFlowError):
    """A caller-supplied run id already belongs to a run of another workflow or with other input."""

    def __init__(self, run_id: str, detail: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run id {run_id!r} already names a run with {detail}; "
            "a run id is an idempotency key: pick a new id for a different run"
        )


class SerializationError(AgentFlowError):
    """A step output, a workflow input or a workflow output cannot be stored as JSON."""

    def __init__(self, where: str, value: object, reason: str) -> None:
        self.where = where
        super().__init__(
            f"{where}: a value of type {type(value).__qualname__} cannot be stored as JSON ({reason}); "
            "return JSON data, a pydantic model or a dataclass"
        )


class StepFailed(AgentFlowError):
    """A step failed after its retries; raised into the workflow.

    The same exception type is raised live and when a resumed or replayed run serves the recorded
    failure, so a workflow that catches it behaves the same both times. Live, ``__cause__`` holds the
    original exception; ``error_type`` and ``error_message`` hold what was recorded.
    """

    def __init__(self, key: str, error_type: str, error_message: str, attempts: int) -> None:
        self.key = key
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
        plural = "s" if attempts != 1 else ""
        super().__init__(f"step {key!r} failed after {attempts} attempt{plural}: {error_type}: {error_message}")


class StepTimeout(AgentFlowError):
    """One attempt of a step ran longer than its policy's ``timeout``."""

    def __init__(self, key: str, timeout: float) -> None:
        self.key = key
        self.timeout = timeout
        super().__init__(f"step {key!r}: attempt timed out after {timeout:g} s")


class GraphFailed(AgentFlowError):
    """Nodes of a step graph failed for good; raised by ``Graph.run`` once every other node ran.

    The nodes that depend (directly or not) on a failed one were skipped; the independent ones ran to
    their end. ``outputs`` maps each completed node's id to its output, ``errors`` each failed node's id
    to its ``StepFailed``, and ``skipped`` lists the ids that did not run. Completed and failed nodes are
    recorded, so a resumed run serves them (the failures too) without running them again. Catch it to use
    the partial outputs or to take another path.
    """

    def __init__(self, graph: str, outputs: dict[str, Any], errors: dict[str, StepFailed], skipped: list[str]) -> None:
        self.graph = graph
        self.outputs = outputs
        self.errors = errors
        self.skipped = skipped
        failed = "; ".join(f"{nid!r} ({exc.error_type}: {exc.error_message})" for nid, exc in errors.items())
        not_run = ", ".join(repr(nid) for nid in skipped) or "none"
        done = ", ".join(repr(nid) for nid in outputs) or "none"
        plural = "s" if len(errors) != 1 else ""
        super().__init__(
            f"graph {graph!r}: node{plural} {failed} failed; skipped, as they depend on a failed node: {not_run}; "
            f"completed: {done}. The completed outputs are in .outputs and the failures in .errors: catch "
            "GraphFailed to use them, or fix the failing node and start a new run"
        )


class BudgetExceeded(AgentFlowError):
    """A model call could take the run past its budget; raised before the call is made."""


class EventTimeout(AgentFlowError):
    """``ctx.wait_for_event`` waited its whole timeout and no event of the type came."""

    def __init__(self, key: str, type: str) -> None:
        self.key = key
        self.type = type
        super().__init__(f"{key}: no event {type!r} came before the timeout")


class DeadlineExceeded(AgentFlowError):
    """The run reached the deadline it was started with; it stops at its next step."""

    def __init__(self, run_id: str, deadline: float) -> None:
        self.run_id = run_id
        self.deadline = deadline
        super().__init__(f"run {run_id!r} passed its deadline ({deadline:.0f} s since the epoch) and was stopped")


class RunCancelled(AgentFlowError):
    """The run was cancelled (``app.cancel``): it stopped at a step boundary and its compensations ran."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} was cancelled")


class MaxTurnsExceeded(AgentFlowError):
    """An agent used all of its ``max_turns`` model turns and the model still asked for tools."""

    def __init__(self, agent: str, max_turns: int, last_tools: list[str]) -> None:
        self.agent = agent
        self.max_turns = max_turns
        super().__init__(
            f"agent {agent!r} reached max_turns={max_turns} without a final answer (the last turn asked for "
            f"{', '.join(last_tools) or 'nothing'}); raise max_turns or make the instructions say when to stop"
        )


class PlanInvalid(AgentFlowError):
    """The model's plan still had problems after ``max_fixes`` rounds of being told what was wrong."""

    def __init__(self, planner: str, max_fixes: int, problems: list[str]) -> None:
        self.planner = planner
        self.problems = problems
        listing = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        super().__init__(
            f"planner {planner!r} got no plan that can run after {max_fixes} round(s) of fixes: {listing}. "
            "Raise max_fixes, or give the model clearer tool descriptions"
        )


class ProviderAnswerError(AgentFlowError):
    """A provider answered (HTTP 200) with no usable chat completion (no choice, a stream without a
    chunk). Retried by the call's policy like a server error, and recorded as the step's failure when the
    policy gives up."""


class StructuredOutputError(AgentFlowError):
    """The model's answer does not parse into the requested ``response_format`` model."""


class ReplayDivergence(AgentFlowError):
    """The workflow asked for a step that differs from the recorded one at the same key.

    Raised when a resumed run's code computes another request (function, arguments) at a key than the
    one recorded there. The run is left as it was, so it can be resumed after the code is fixed.
    """

    def __init__(
        self,
        run_id: str,
        key: str,
        recorded: Any,
        current: Any,
        reason: str,
        *,
        diff: list[dict[str, Any]] | None = None,
        note: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.key = key
        self.path = key.split("/")  # the enclosing steps' keys, outermost first, then the step's own
        self.recorded = recorded
        self.current = current
        self.reason = reason
        self.diff = diff or []
        self.note = note
        lines = [f"run {run_id!r} diverged from its record at step {key!r}: {reason}"]
        if len(self.path) > 1:
            lines.append(f"  step path: {' > '.join(self.path)}")
        if note:
            lines.append(f"  {note}")
        if self.diff:
            lines.append("  diff (JSON patch, recorded -> now):")
            lines += [f"    {_op(op)}" for op in self.diff[:20]]
            if len(self.diff) > 20:
                lines.append(f"    ... and {len(self.diff) - 20} more")
        else:
            lines += [f"  recorded: {_short(recorded)}", f"  now:      {_short(current)}"]
        lines.append(
            "The code changed since this run was recorded. Restore the code that recorded it to resume, "
            "replay it with mode='live' to go on from here in a new run, or start a new run."
        )
        super().__init__("\n".join(lines))


def _short(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _op(op: dict[str, Any]) -> str:
    value = f" {_short(op['value'], 200)}" if "value" in op else ""
    source = f" from {op['from']}" if "from" in op else ""
    return f"{op.get('op')} {op.get('path')}{source}{value}"


class BundleError(AgentFlowError):
    """A run bundle cannot be exported or imported: the file is not a bundle, was changed or damaged after it
    was exported, comes from a newer agentflow, or holds a run whose id names another run here.

    An import that raises it has written nothing.
    """


class StoreError(AgentFlowError):
    """The database cannot be used as an agentflow store."""


class NotAnAgentFlowDatabase(StoreError):
    """The database is damaged, is not SQLite, or holds tables agentflow did not create."""


class SchemaVersionError(StoreError):
    """The database schema was written by a newer agentflow than this one."""


class LeaseLost(StoreError):
    """A worker tried to write to a run whose lease it no longer holds: the lease expired (the worker
    stalled or lost its database connection) and another worker claimed the run, with a newer fencing
    token. Nothing was written; the execution in this worker stops and leaves the run to its new holder.

    ``run_id`` is the run whose lease was lost: the run written to, or for a child run the root run the
    worker held (a child run is executed under its root's lease). ``what`` says which write it was."""

    def __init__(self, run_id: str, token: int, what: str) -> None:
        self.run_id = run_id
        self.token = token
        super().__init__(
            f"{what} was refused: this worker's lease on run {run_id!r} (token {token}) was taken over by "
            "another worker after it expired. Nothing was written; the run goes on there"
        )


class NonRetryableError(Exception):
    """Raise from a step to fail it at once, without the retries its policy would allow."""
