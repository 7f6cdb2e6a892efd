"""Agent memory, imported as ``agentflow.memory``: a conversation within a token budget, durable facts.

This folder sits at the top of the repository and is mapped into the package by ``pyproject.toml``.

``ConversationMemory``
    Cuts a conversation to a budget of prompt tokens, counted offline with tiktoken, before each model
    call: ``prompt = await memory.fit(ctx, model, messages)``. ``strategy="window"`` drops the oldest
    messages; ``"summarize"`` folds them into a running summary written by a recorded ``ctx.llm`` call,
    so a resumed or replayed run is served the same summary. System messages, the last ``keep_last``
    messages and tool calls with their results are never split or dropped wrongly.
``window(model, messages, max_tokens)``
    The window strategy as a plain function, for use outside a run.
``LongTermMemory(namespace)``
    Durable facts by key in the run's database, shared across runs: ``remember``, ``recall``,
    ``recall_all``, ``forget``, each a recorded step so that a resumed run reads what it read before;
    ``as_tools(ctx)`` gives a model ``remember_fact`` and ``recall_facts``.

With a ``Context`` the methods are awaited; with a ``SyncContext`` (a ``def`` workflow) they return values.
"""

from ._conversation import DEFAULT_SUMMARY_PROMPT, SUMMARY_HEADER, ConversationMemory, Strategy, window
from ._longterm import LongTermMemory

__all__ = ["DEFAULT_SUMMARY_PROMPT", "SUMMARY_HEADER", "ConversationMemory", "LongTermMemory", "Strategy", "window"]
