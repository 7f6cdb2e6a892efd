"""Recording runs as bundles, offline: the regression cases and eval traces a project keeps in its repository.

A ``BundleCase`` names a workflow (or agent), its input, the fake model that answers it, and where its
bundle goes. ``record_bundles`` runs every case once in a scratch database with a fake clock and that fake
model (``FakeProvider``, so litellm's real code runs and nothing reaches the network), answers the events it
waits for from the case, checks that the run completed and replays strictly, and exports it. Recording
unchanged code again writes the same bytes, so a diff of the bundles shows what a change did.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AgentFlowError

__all__ = ["BundleCase", "record_bundles"]


@dataclass(frozen=True)
class BundleCase:
    """One run to record: ``workflow(*args, **kwargs)`` under ``run_id``, answered by ``model`` (what
    ``FakeProvider.default`` takes: a reply, or a function of the request body returning one), exported
    to ``path``. ``events`` answers waits: when the run waits for an event type listed there, that
    payload is sent and the run resumed. ``base_url`` is where the workflow's model calls go (its
    ``api_base``: a proxy, vLLM, Azure), OpenAI's by default."""

    run_id: str
    workflow: Any
    path: Path | str
    model: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    events: Mapping[str, Any] = field(default_factory=dict)
    base_url: str = "https://api.openai.com/v1"


def record_bundles(
    cases: Iterable[BundleCase],
    *,
    progress: Callable[[BundleCase, Path], None] | None = None,
) -> list[Path]:
    """Record each case in one scratch database (in a scratch working directory, so files a workflow
    writes next to itself stay out of the repository); the bundles written, in order.

    A run that does not complete, that waits for an event the case does not answer, that cannot be
    replayed strictly, or whose workflow cannot be imported by name (defined in ``__main__`` or in a
    function) raises ``AgentFlowError`` naming the case; the bundles written before it stay.
    """
    from ._app import AgentFlow
    from ._clock import FakeClock
    from .testing import FakeProvider

    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="agentflow-record-") as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            with AgentFlow(str(Path(scratch) / "record.db"), clock=FakeClock()) as app:
                for case in cases:
                    with FakeProvider(case.base_url) as fake:
                        fake.default = case.model
                        run = app.run(case.workflow, *case.args, run_id=case.run_id, **case.kwargs)
                        while run.status == "waiting" and (event := run.waiting_for) in case.events:
                            assert event is not None
                            app.send_event(case.run_id, event, case.events[event])
                            run = app.resume(case.run_id)
                    if run.status != "completed":
                        waiting = f", waiting for {run.waiting_for!r}" if run.waiting_for else ""
                        raise AgentFlowError(
                            f"case {case.run_id!r} did not complete: {run.status}{waiting}"
                            f"{f': {run.error}' if run.error else ''}; nothing was written for it"
                        )
                    if run.workflow_ref is None or run.workflow_ref.startswith("__main__"):
                        raise AgentFlowError(
                            f"case {case.run_id!r}: its workflow cannot be imported by name "
                            f"({run.workflow_ref or 'no reference'}), so its bundle would not replay elsewhere; "
                            "define it at the top level of an importable module"
                        )
                    app.replay(case.run_id)  # strict: the bundle is good before it is written
                    path = Path(cwd, case.path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    app.export_run(case.run_id, path)
                    written.append(path)
                    if progress is not None:
                        progress(case, path)
        finally:
            os.chdir(cwd)
    return written
