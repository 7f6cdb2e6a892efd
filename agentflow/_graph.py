"""Durable step graphs: declared steps with explicit dependencies, run concurrently under a limit.

A graph is built first and run once. Each node is a durable step (the same engine path as
``ctx.step``: recorded, served from the record on resume, retried by its policy, steps it takes scoped
under its key), named ``<graph name>.<node id>``. Its key is therefore ``scope/<graph>.<node>#n``: it comes
from the names, never from the order in which nodes happen to start or finish, so a resumed run finds
every node's record however the first run was scheduled. ``n`` counts earlier graphs of the same name in
the same scope; each run of a graph takes one key per node (a skipped node too), so the k-th graph of a
name has all its nodes at ``#k``.

A node starts once all its dependencies completed and a slot is free (``concurrency``); nodes start in
the order they were added when several are ready. A node that fails for good (``StepFailed``) has its
dependents skipped while the independent nodes run to their end; then ``run`` raises ``GraphFailed``.
Anything else (a ``ReplayDivergence``, a ``StoreError``, a process-ending exception, cancellation) stops
the graph: the nodes in flight are cancelled and awaited, then the error propagates as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from ._engine import RunEngine
from ._retry import RetryPolicy
from ._scope import current_scope, owning
from .errors import ConfigurationError, GraphFailed, StepFailed

__all__ = ["Graph", "Node", "NodeOutput", "SyncGraph"]

PathPart = str | int


class NodeOutput:
    """A part of a node's output, made by ``node.path("items", 0)``; stands for that value in arguments.

    Each part is a mapping key, a sequence index or an attribute name, applied in turn to the output.
    """

    __slots__ = ("node", "parts")

    def __init__(self, node: Node, parts: tuple[PathPart, ...]) -> None:
        self.node = node
        self.parts = parts

    def resolve(self, output: Any) -> Any:
        """The part of ``output`` this path names; ``ConfigurationError`` when the output has no such part."""
        value = output
        for i, part in enumerate(self.parts):
            try:
                indexable = isinstance(value, Mapping) or (isinstance(part, int) and isinstance(value, Sequence))
                if indexable:
                    value = value[part]
                elif isinstance(part, str):
                    value = getattr(value, part)
                else:
                    raise TypeError(f"a {type(value).__qualname__} cannot be indexed by {part!r}")
            except (LookupError, AttributeError, TypeError) as exc:
                where = self.node.id + "".join(f"[{p!r}]" for p in self.parts[:i])
                raise ConfigurationError(
                    f"graph {self.node.graph.name!r}: {self!r} cannot be taken from the output of node "
                    f"{self.node.id!r}: {where} has no part {part!r} ({type(exc).__name__}: {exc}); "
                    "fix the path, or make the node return what its dependents expect"
                ) from exc
        return value

    def __repr__(self) -> str:
        return f"{self.node.id}.path({', '.join(repr(p) for p in self.parts)})"


class Node:
    """A declared step of a ``Graph``: a handle to pass its output (or ``path``\\s into it) to other nodes.

    Put the handle anywhere in another node's arguments (inside lists, tuples and dicts too): it is
    replaced by this node's output when that node runs, and makes it depend on this one.
    """

    def __init__(
        self,
        graph: _GraphBase,
        node_id: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deps: tuple[str, ...],
        retry: RetryPolicy | None,
    ) -> None:
        self.graph = graph
        self.id = node_id
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.deps = deps  # the ids this node waits for: implied by its arguments, then the explicit ones
        self.retry = retry

    @property
    def step_name(self) -> str:
        """The name the node's step is recorded under: ``<graph name>.<node id>``."""
        return f"{self.graph.name}.{self.id}"

    def path(self, *parts: PathPart) -> NodeOutput:
        """A part of this node's output: ``node.path("items", 0)`` stands for ``output["items"][0]``."""
        for part in parts:
            if not isinstance(part, (str, int)) or isinstance(part, bool):
                raise ConfigurationError(
                    f"node {self.id!r}: a path part must be a key or attribute name (str) or an index (int), "
                    f"got {part!r}"
                )
        return NodeOutput(self, parts)

    def __repr__(self) -> str:
        return f"<Node {self.step_name!r} deps={list(self.deps)}>"


class _GraphBase:
    """Building and running a graph; ``Graph`` and ``SyncGraph`` differ only in how ``run`` returns."""

    def __init__(self, engine: RunEngine, name: str, concurrency: int | None) -> None:
        if not isinstance(name, str) or not name or "/" in name or "#" in name:
            raise ConfigurationError(
                f"a graph name must be a non-empty string without '/' or '#', got {name!r} "
                "(its nodes are recorded as steps named '<graph>.<node>', and these separate scopes and "
                "counters in keys)"
            )
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ConfigurationError(
                f"graph {name!r}: concurrency must be a positive int (how many nodes may run at once) or None "
                f"for no limit, got {concurrency!r}"
            )
        self._engine = engine
        self.name = name
        self.concurrency = concurrency
        self._nodes: dict[str, Node] = {}
        self._started = False

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes in the order they were added."""
        return tuple(self._nodes.values())

    def add(
        self,
        node_id: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        deps: Sequence[str | Node] = (),
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Node:
        """Declare a node that runs ``fn(*args, **kwargs)`` (sync or async) as a step; return its handle.

        ``Node`` handles and ``node.path(...)`` references inside ``args`` and ``kwargs`` (nested lists,
        tuples and dict values included) are replaced by those nodes' outputs and make this node depend on
        them; ``deps`` names further nodes (by id or handle) that must complete first, which may be added
        later. ``retry`` works as for ``ctx.step``; ``deps`` and ``retry`` are not passed to ``fn``.
        Raises ``ConfigurationError`` for a bad or duplicate id, a node of another graph, or a node that
        depends on itself; nothing is recorded.
        """
        if self._started:
            raise ConfigurationError(
                f"graph {self.name!r} has already run; build another graph (ctx.graph) for more nodes"
            )
        _require_node_id(self.name, node_id)
        if node_id in self._nodes:
            raise ConfigurationError(
                f"graph {self.name!r} has a node {node_id!r} already; node ids name their steps' keys, "
                "so each must be unique in its graph"
            )
        if not callable(fn):
            raise ConfigurationError(f"graph {self.name!r}: node {node_id!r} needs a function, got {fn!r}")
        implied: list[Node] = []
        _find_refs((args, kwargs), implied)
        ids: list[str] = []
        for node in implied:
            if node.graph is not self:
                raise ConfigurationError(
                    f"graph {self.name!r}: node {node_id!r} refers to node {node.id!r} of graph "
                    f"{node.graph.name!r}; pass that graph's output value instead, or add the node here"
                )
            ids.append(node.id)
        if isinstance(deps, (str, Node)):
            deps = [deps]
        for dep in deps:
            if isinstance(dep, Node):
                if dep.graph is not self:
                    raise ConfigurationError(
                        f"graph {self.name!r}: node {node_id!r} depends on node {dep.id!r} of graph "
                        f"{dep.graph.name!r}; a node can only depend on nodes of its own graph"
                    )
                ids.append(dep.id)
            elif isinstance(dep, str):
                ids.append(dep)
            else:
                raise ConfigurationError(
                    f"graph {self.name!r}: node {node_id!r}: deps must hold node ids or Node handles, got {dep!r}"
                )
        if node_id in ids:
            raise ConfigurationError(f"graph {self.name!r}: node {node_id!r} depends on itself")
        node = Node(self, node_id, fn, args, kwargs, tuple(dict.fromkeys(ids)), retry)
        self._nodes[node_id] = node
        return node

    def _check(self) -> None:
        """Refuse unknown dependencies and cycles, naming them, before anything runs."""
        for node in self._nodes.values():
            for dep in node.deps:
                if dep not in self._nodes:
                    known = ", ".join(self._nodes)
                    raise ConfigurationError(
                        f"graph {self.name!r}: node {node.id!r} depends on {dep!r}, which is not a node of "
                        f"this graph (its nodes: {known}); add it, or fix the id"
                    )
        # Kahn's algorithm: what cannot be ordered lies on a cycle or depends on one.
        unmet = {nid: len(node.deps) for nid, node in self._nodes.items()}
        dependents = self._dependents()
        ready = [nid for nid, n in unmet.items() if n == 0]
        while ready:
            for dependent in dependents[ready.pop()]:
                unmet[dependent] -= 1
                if unmet[dependent] == 0:
                    ready.append(dependent)
        stuck = {nid for nid, n in unmet.items() if n > 0}
        if stuck:
            # Every stuck node has a stuck dependency: follow them until one repeats.
            path = [next(nid for nid in self._nodes if nid in stuck)]
            while True:
                step = next(dep for dep in self._nodes[path[-1]].deps if dep in stuck)
                if step in path:
                    cycle = [*path[path.index(step) :], step]
                    break
                path.append(step)
            raise ConfigurationError(
                f"graph {self.name!r} has a cycle: {' -> '.join(cycle)} (each node depends on the next); "
                "a graph must be acyclic: remove one of these dependencies"
            )

    def _dependents(self) -> dict[str, list[str]]:
        dependents: dict[str, list[str]] = {nid: [] for nid in self._nodes}
        for node in self._nodes.values():
            for dep in node.deps:
                dependents[dep].append(node.id)
        return dependents

    async def _execute(self, scope: str) -> dict[str, Any]:
        if self._started:
            raise ConfigurationError(
                f"graph {self.name!r} has already run; a graph runs once (build another with ctx.graph)"
            )
        self._check()
        self._engine.raise_if_halted()
        # Two graphs of one name running at once in one scope would take their keys in whatever order
        # their nodes happen to start, and a resumed run could pair a key with the other graph's node.
        running_graphs = self._engine.extras.running_graphs
        if (scope, self.name) in running_graphs:
            raise ConfigurationError(
                f"graph {self.name!r} is running already in this scope; graphs that run at the same time "
                "need different names, so that their nodes' keys do not depend on timing"
            )
        self._started = True
        running_graphs.add((scope, self.name))
        try:
            return await self._schedule(scope)
        finally:
            running_graphs.discard((scope, self.name))

    async def _schedule(self, scope: str) -> dict[str, Any]:
        engine = self._engine
        order = {nid: i for i, nid in enumerate(self._nodes)}
        dependents = self._dependents()
        unmet = {nid: set(node.deps) for nid, node in self._nodes.items()}
        ready = [nid for nid in self._nodes if not unmet[nid]]
        limit = self.concurrency or max(len(self._nodes), 1)
        outputs: dict[str, Any] = {}
        errors: dict[str, StepFailed] = {}
        skipped: set[str] = set()
        running: dict[asyncio.Future[Any], str] = {}
        try:
            while ready or running:
                while ready and len(running) < limit:
                    node = self._nodes[ready.pop(0)]
                    args, kwargs = _resolve((node.args, node.kwargs), outputs)
                    task = asyncio.ensure_future(
                        owning(engine.step(scope, node.step_name, node.fn, args, kwargs, node.retry))
                    )
                    running[task] = node.id
                done, _ = await asyncio.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
                for finished in sorted(done, key=lambda t: order[running[t]]):
                    nid = running.pop(finished)
                    exc = finished.exception()
                    if exc is None:
                        outputs[nid] = finished.result()
                        for dependent in dependents[nid]:
                            unmet[dependent].discard(nid)
                            if not unmet[dependent] and dependent not in skipped:
                                ready.append(dependent)
                    elif isinstance(exc, StepFailed):
                        errors[nid] = exc
                        self._skip_dependents(nid, dependents, skipped, scope)
                    else:
                        raise exc  # halts the graph; the finally clause stops the other nodes
                ready.sort(key=order.__getitem__)
                # A node's function may have caught a divergence or a store failure of a step it took.
                engine.raise_if_halted()
        finally:
            if running:
                for pending in running:
                    pending.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        ordered = {nid: outputs[nid] for nid in self._nodes if nid in outputs}
        if errors:
            failed = {nid: errors[nid] for nid in self._nodes if nid in errors}
            not_run = [nid for nid in self._nodes if nid in skipped]
            raise GraphFailed(self.name, ordered, failed, not_run) from next(iter(failed.values()))
        return ordered

    def _skip_dependents(self, failed: str, dependents: dict[str, list[str]], skipped: set[str], scope: str) -> None:
        pending = list(dependents[failed])
        while pending:
            nid = pending.pop()
            if nid in skipped:
                continue
            skipped.add(nid)
            # Skipped nodes take their key all the same, so that every graph of this name has one key per
            # node: the k-th graph's nodes are all at #k, whichever of the earlier ones failed.
            self._engine.journal.next_key(scope, self._nodes[nid].step_name)
            pending.extend(dependents[nid])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} nodes={list(self._nodes)} concurrency={self.concurrency}>"


class Graph(_GraphBase):
    """Steps declared with their dependencies, run durably and concurrently: ``ctx.graph(name)``.

    Build it with ``add``, then ``outputs = await graph.run()``. Each node is a recorded step keyed by the
    graph's name and the node's id, so a resumed run serves completed nodes from the record and runs only
    the rest.
    """

    def __init__(self, engine: RunEngine, name: str, *, concurrency: int | None = None) -> None:
        super().__init__(engine, name, concurrency)

    async def run(self) -> dict[str, Any]:
        """Run every node, each once all its dependencies completed; return ``{node id: output}``.

        At most ``concurrency`` nodes run at once. When nodes fail for good, their dependents are skipped,
        the other nodes still run, and ``GraphFailed`` is raised with what completed, what failed and what
        was skipped. Unknown dependencies and cycles raise ``ConfigurationError`` before anything runs. A
        ``ReplayDivergence``, a ``StoreError`` or cancellation stop the other nodes and propagate as they
        are. A graph runs once.
        """
        return await self._execute(current_scope())


class SyncGraph(_GraphBase):
    """``Graph`` for plain ``def`` workflows (``SyncContext.graph``): ``run()`` blocks and returns the outputs.

    The nodes still run concurrently, on the run's event loop; sync node functions in worker threads.
    """

    def __init__(
        self,
        engine: RunEngine,
        name: str,
        wait: Callable[[Coroutine[Any, Any, Any]], Any],
        *,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(engine, name, concurrency)
        self._wait = wait

    def run(self) -> dict[str, Any]:
        """Run the graph and return ``{node id: output}``; see ``Graph.run``."""
        outputs: dict[str, Any] = self._wait(self._execute(current_scope()))
        return outputs


def _require_node_id(graph: str, node_id: str) -> None:
    if not isinstance(node_id, str) or not node_id or any(c in node_id for c in "/#."):
        raise ConfigurationError(
            f"graph {graph!r}: a node id must be a non-empty string without '/', '#' or '.', got {node_id!r} "
            "(the node's step is named '<graph>.<node id>', and these separate names, scopes and counters in keys)"
        )


def _find_refs(value: Any, found: list[Node]) -> None:
    """Collect the nodes that ``value`` refers to (handles and paths, inside lists, tuples and dicts)."""
    if isinstance(value, Node):
        found.append(value)
    elif isinstance(value, NodeOutput):
        found.append(value.node)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _find_refs(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _find_refs(item, found)


def _resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
    """``value`` with node handles and paths replaced by the outputs they stand for.

    Containers without references come back as they are (the same object, of their own type).
    """
    if isinstance(value, Node):
        return outputs[value.id]
    if isinstance(value, NodeOutput):
        return value.resolve(outputs[value.node.id])
    if isinstance(value, (list, tuple)):
        items = [_resolve(item, outputs) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # a namedtuple keeps its type
    if isinstance(value, dict):
        resolved = {key: _resolve(item, outputs) for key, item in value.items()}
        return value if all(resolved[key] is item for key, item in value.items()) else resolved
    return value
