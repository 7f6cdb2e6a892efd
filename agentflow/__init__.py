"""agentflow: durable, replayable AI agents.

Every step a workflow takes is recorded under an idempotency key; a run that crashes resumes where it
stopped, and nothing recorded runs twice.

    from agentflow import AgentFlow, Context

    app = AgentFlow()                      # SQLite at ./.agentflow/agentflow.db

    @app.workflow()
    async def pipeline(ctx: Context, n: int) -> int:
        a = await ctx.step("fetch", fetch, n)
        return await ctx.step("score", score, a)

    run = app.run(pipeline, 3, run_id="job-1")

Model calls (``ctx.llm``, ``ctx.llm_stream``) go through litellm and tools (``@tool``, ``ctx.tool``) are
recorded steps too; ``agentflow.testing.FakeProvider`` fakes a model at the HTTP level for tests.
"""

from ._agent import Agent, AgentResult
from ._app import AgentFlow
from ._clock import Clock, FakeClock, SystemClock
from ._context import Context, SyncContext, SyncLLMStream
from ._graph import Graph, Node, SyncGraph
from ._llm import Budget, LLMResponse, StreamChunk, ToolCall
from ._llm_calls import LLMStream
from ._models import ErrorInfo, Replay, Run, RunStatus, Step, StepKind, StepStatus, SupersededStep, Usage
from ._queue import Lease, Queue, QueuedRun, RateLimit, WorkerReport
from ._retry import Backoff, RetryPolicy
from ._tool import IdempotencyKey, Tool, ToolArgumentsError, ToolResult, tool
from .errors import (
    AgentFlowError,
    BudgetExceeded,
    BundleError,
    ConfigurationError,
    GraphFailed,
    LeaseLost,
    MaxTurnsExceeded,
    NonRetryableError,
    NotAnAgentFlowDatabase,
    PlanInvalid,
    ProviderAnswerError,
    ReplayDivergence,
    RunConflict,
    RunNotFound,
    SchemaVersionError,
    SerializationError,
    StepFailed,
    StepTimeout,
    StoreError,
    StructuredOutputError,
    WorkflowNotRegistered,
)

__version__ = "0.1.0"

# Plans are pydantic models: imported on first use, so that `import agentflow` stays light.
_LAZY = {"Plan", "PlanResult", "PlanStep", "PlanningAgent", "check_plan", "plan_step"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import _plan

        return getattr(_plan, name)
    if name == "evals":  # agentflow.evals (datasets, scorers, reports): a subpackage, imported on first use
        import importlib

        return importlib.import_module(".evals", __name__)
    raise AttributeError(f"module 'agentflow' has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentFlow",
    "AgentFlowError",
    "AgentResult",
    "Backoff",
    "Budget",
    "BudgetExceeded",
    "BundleError",
    "Clock",
    "ConfigurationError",
    "Context",
    "ErrorInfo",
    "FakeClock",
    "Graph",
    "GraphFailed",
    "IdempotencyKey",
    "LLMResponse",
    "LLMStream",
    "Lease",
    "LeaseLost",
    "MaxTurnsExceeded",
    "Node",
    "NonRetryableError",
    "NotAnAgentFlowDatabase",
    "Plan",
    "PlanInvalid",
    "PlanResult",
    "PlanStep",
    "PlanningAgent",
    "ProviderAnswerError",
    "Queue",
    "QueuedRun",
    "RateLimit",
    "Replay",
    "ReplayDivergence",
    "RetryPolicy",
    "Run",
    "RunConflict",
    "RunNotFound",
    "RunStatus",
    "SchemaVersionError",
    "SerializationError",
    "Step",
    "StepFailed",
    "StepKind",
    "StepStatus",
    "StepTimeout",
    "StoreError",
    "StreamChunk",
    "StructuredOutputError",
    "SupersededStep",
    "SyncContext",
    "SyncGraph",
    "SyncLLMStream",
    "SystemClock",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WorkerReport",
    "WorkflowNotRegistered",
    "__version__",
    "check_plan",
    "plan_step",
    "tool",
]
