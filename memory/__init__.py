"""Agent memory, imported as ``agentflow.memory``.

This folder sits at the top of the repository and is mapped into the package by ``pyproject.toml``. The
token-window conversation memory and the durable long-term memory come with the agent layer; until then
this package holds nothing.
"""

__all__: list[str] = []
