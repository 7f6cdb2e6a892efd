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

from ._app import AgentFlow
from ._clock import Clock, FakeClock, SystemClock
from ._context import Context, SyncContext, SyncLLMStream
from ._llm import Budget, LLMResponse, StreamChunk, ToolCall
from ._llm_calls import LLMStream
from ._models import ErrorInfo, Run, RunStatus, Step, StepKind, StepStatus, Usage
from ._retry import Backoff, RetryPolicy
from ._tool import IdempotencyKey, Tool, ToolArgumentsError, ToolResult, tool
from .errors import (
    AgentFlowError,
    BudgetExceeded,
    ConfigurationError,
    NonRetryableError,
    NotAnAgentFlowDatabase,
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

__all__ = [
    "AgentFlow",
    "AgentFlowError",
    "Backoff",
    "Budget",
    "BudgetExceeded",
    "Clock",
    "ConfigurationError",
    "Context",
    "ErrorInfo",
    "FakeClock",
    "IdempotencyKey",
    "LLMResponse",
    "LLMStream",
    "NonRetryableError",
    "NotAnAgentFlowDatabase",
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
    "SyncContext",
    "SyncLLMStream",
    "SystemClock",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WorkflowNotRegistered",
    "__version__",
    "tool",
]
