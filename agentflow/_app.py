"""``AgentFlow``: registers workflows, starts and resumes runs, replays and forks them, and reads them back.

The class is assembled from parts, each in a module of its own: ``_app_core`` (state, registration,
executing runs), ``_app_replay`` (replay, fork, counterfactual runs), ``_app_lifecycle`` (start, pause,
cancel, restart, events, serve), ``_app_queues`` (queues and workers) and ``_app_records`` (listing runs,
verifying them, bundles). The parts add methods only; all state lives in the core.
"""

from __future__ import annotations

from ._app_lifecycle import LifecyclePart
from ._app_queues import QueuePart
from ._app_records import RecordsPart
from ._app_replay import ReplayPart

__all__ = ["AgentFlow"]


class AgentFlow(ReplayPart, LifecyclePart, QueuePart, RecordsPart):
    """A store of durable runs and the workflows that make them.

    ``url`` is a SQLite path, ``:memory:``, or a SQLAlchemy URL (``postgresql+psycopg://...``); by default
    ``$AGENTFLOW_DATABASE_URL``, else ``./.agentflow/agentflow.db``. A new database is created and migrated;
    an existing one has its schema version checked. ``durability="full"`` makes SQLite sync every commit
    (power-loss safe); the default survives a killed process. ``clock`` is where time and sleeping come
    from (``FakeClock`` in tests); ``retry`` is the policy of steps and tools that do not name one,
    ``llm_retry`` that of model calls (default: 4 attempts, exponential backoff from 1 s).
    """
