"""Ready tools for agents, imported as ``agentflow.tools``.

Each one is a ``Tool`` (see ``agentflow.tool``): a model can call it by name, and a workflow runs it as a
recorded step::

    from agentflow.tools import FileSandbox, calculator, http_get

    answer = await ctx.tool(calculator, expression="2*21")              # 42
    page = await ctx.tool(http_get, url="https://example.com")          # HttpGetResult
    sandbox = FileSandbox("workspace")
    reply = await ctx.llm(model, messages, tools=[calculator, http_get, *sandbox.tools])

The tools:

``calculator(expression)``
    Arithmetic on a string, evaluated by walking its syntax tree (never ``eval``): numbers, ``+ - * / // %
    **``, parentheses, ``sqrt log exp sin cos tan abs round floor ceil min max``, ``pi e tau``. Refuses
    everything else, and any integer over 1000 digits, with a ``CalculatorError``.
``http_get(url, headers=None)``
    GET over http(s), following redirects, returning an ``HttpGetResult`` (status, final URL, content type,
    text, truncated). The body is streamed and cut at 1 MB; the call has a 10 s deadline. Internal addresses
    (localhost, private networks, cloud metadata) are refused. Build one with other limits, an allow-list
    of hosts, ``allow_private=True``, fixed headers or a test transport with ``make_http_get(...)``.
``FileSandbox(root)``
    ``read_file(path)``, ``write_file(path, content)`` and ``list_files(folder=".")``, confined to one
    folder: absolute paths, ``..`` and symbolic links leading out are refused with a ``FileSandboxError``.

Errors a retry cannot fix (a refused URL, a bad expression, a path outside the sandbox) are
``NonRetryableError`` subclasses, so a step fails at once; ``HttpGetError`` (a timeout, a refused
connection) is retried by the step's policy.

This package imports httpx and pydantic; ``import agentflow`` alone does not import it.
"""

from ._calculator import CalculatorError, calculator
from ._files import FileSandbox, FileSandboxError
from ._http import HttpGetError, HttpGetRefused, HttpGetResult, http_get, make_http_get

__all__ = [
    "CalculatorError",
    "FileSandbox",
    "FileSandboxError",
    "HttpGetError",
    "HttpGetRefused",
    "HttpGetResult",
    "calculator",
    "http_get",
    "make_http_get",
]
