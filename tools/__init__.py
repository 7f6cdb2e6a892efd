"""Ready tools for agents, imported as ``agentflow.tools``.

This folder sits at the top of the repository and is mapped into the package by ``pyproject.toml``. The
tools themselves (``http_get``, a safe calculator, sandboxed file access) come with the ``@tool`` layer;
until then this package holds nothing.
"""

__all__: list[str] = []
