"""The public API changes only on purpose: this list must be edited along with agentflow.__all__."""

import agentflow

EXPECTED = {
    "Plan",
    "PlanInvalid",
    "ProviderAnswerError",
    "PlanResult",
    "PlanStep",
    "PlanningAgent",
    "check_plan",
    "plan_step",
    "Agent",
    "AgentResult",
    "MaxTurnsExceeded",
    "Replay",
    "ToolCall",
    "SyncLLMStream",
    "StructuredOutputError",
    "SupersededStep",
    "StreamChunk",
    "LLMStream",
    "LLMResponse",
    "BudgetExceeded",
    "BundleError",
    "Budget",
    "IdempotencyKey",
    "Tool",
    "ToolArgumentsError",
    "ToolResult",
    "tool",
    "AgentFlow",
    "AgentFlowError",
    "Backoff",
    "Clock",
    "ConfigurationError",
    "Context",
    "ErrorInfo",
    "FakeClock",
    "Graph",
    "GraphFailed",
    "Node",
    "SyncGraph",
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
    "SyncContext",
    "SystemClock",
    "Usage",
    "WorkflowNotRegistered",
    "__version__",
    "Lease",
    "LeaseLost",
    "Queue",
    "QueuedRun",
    "RateLimit",
    "WorkerReport",
}


def test_all_is_the_pinned_public_api() -> None:
    assert set(agentflow.__all__) == EXPECTED


def test_every_exported_class_is_documented() -> None:
    for name in agentflow.__all__:
        member = getattr(agentflow, name)
        if isinstance(member, type):
            assert member.__doc__, f"{name} has no docstring"
