"""Reading runs back: listing them, a model call's request spelled out, checking a run's hash chain, and
portable bundles (export and import): the part of ``AgentFlow`` that reads records without running them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ._app_core import AppCore
from ._chain import first_broken_link
from ._models import Run, RunStatus, Step
from .errors import ConfigurationError, RunNotFound

__all__ = ["RecordsPart"]


class RecordsPart(AppCore):
    """Reading what the store holds: runs, requests, hash chains, bundles."""

    def list_runs(
        self,
        *,
        status: RunStatus | str | Sequence[RunStatus | str] | None = None,
        workflow: Callable[..., Any] | str | None = None,
        limit: int | None = 100,
    ) -> list[Run]:
        """Runs, newest first, optionally of some statuses and one workflow."""
        statuses = _statuses(status)
        name = workflow if isinstance(workflow, str) or workflow is None else self._lookup(workflow).name
        return [self._to_run(r) for r in self._store.list_runs(statuses=statuses, workflow=name, limit=limit)]

    def readable_request(self, step: Step) -> Any:
        """A step's recorded request with a model call's messages spelled out (they are stored as a chain
        of content-addressed blobs): what was asked, for people and diffs."""
        request = step.request
        if isinstance(request, dict) and isinstance(request.get("messages"), str):
            from ._llm import read_messages

            return {**request, "messages": read_messages(request["messages"], self._store.get_blobs)}
        return request

    def verify(self, run_id: str) -> str | None:
        """Check a run's hash chain: the key of the first step record that was altered, or None if intact.
        The records its restarts took out are checked too (a break among them says which restart)."""
        if self._store.get_run(run_id) is None:
            raise RunNotFound(run_id)
        return first_broken_link(run_id, self._store.load_steps(run_id), self._store.load_superseded(run_id))

    # -- bundles -----------------------------------------------------------------------------------------

    def export_run(self, run_id: str, path: str | os.PathLike[str] | None = None) -> bytes:
        """The run, its steps, the blobs they refer to and its child runs as a portable JSON bundle.

        Written to ``path`` too when given. ``import_runs`` loads it into another database (a laptop, CI),
        where ``replay`` runs it offline. The same run exports the same bytes.
        """
        from ._bundle import export_bundle

        data = export_bundle(self._store, run_id)
        if path is not None:
            with open(path, "wb") as file:
                file.write(data)
        return data

    def import_runs(self, bundle: str | os.PathLike[str] | bytes) -> list[str]:
        """Import a bundle made by ``export_run`` (a path, or its bytes): the ids of its runs, the exported
        one first. Everything is checked before anything is written, and written in one transaction; a
        bundle imported before is a no-op. Raises ``BundleError`` for a file that is not a bundle, was
        changed, or holds a run whose id names another run here."""
        from ._bundle import import_bundle

        if isinstance(bundle, bytes):
            return import_bundle(self._store, bundle)
        with open(bundle, "rb") as file:
            return import_bundle(self._store, file.read(), f"bundle {os.fspath(bundle)}")


def _statuses(status: RunStatus | str | Sequence[RunStatus | str] | None) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, (str, RunStatus)) else list(status)
    out = []
    for item in items:
        try:
            out.append(RunStatus(item).value)
        except ValueError:
            valid = ", ".join(s.value for s in RunStatus)
            raise ConfigurationError(f"unknown run status {item!r}; use one of {valid}") from None
    return out
