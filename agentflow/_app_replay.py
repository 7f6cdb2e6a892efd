"""Replaying a finished run against its record, forking a run at a step, and counterfactual runs of a
new version of a workflow against a recorded run's world: the part of ``AgentFlow`` that reads one run
to make another."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from ._app_core import FINISHED, AppCore
from ._derived import FORK, SourceRecords, counterfactual_kind, enclosed
from ._engine import RunEngine
from ._journal import Journal
from ._loop import run_sync
from ._models import ErrorInfo, Replay, ReplayMode, Run, RunStatus
from ._overrides import NO_OVERRIDE, override_output
from ._store import RunRecord
from ._store._records import KEY, as_record
from ._workflow import Workflow
from .errors import (
    AgentFlowError,
    ConfigurationError,
    ReplayDivergence,
    RunConflict,
    RunNotFound,
    StoreError,
)

__all__ = ["ReplayPart"]


class ReplayPart(AppCore):
    """``replay``, ``fork`` and ``counterfactual`` of ``AgentFlow``."""

    def replay(self, run_id: str, mode: ReplayMode = "strict") -> Replay:
        """Run a finished run's workflow again against its record, offline, and check it ends the same.

        ``strict``: every step, tool call and model call is served from the record (nothing runs, nothing
        is called, nothing is written, no API key is needed); the replay must ask for exactly the recorded
        steps and end with the recorded output or error, or ``ReplayDivergence`` names the first key where
        code and record part, with the recorded and the new request and the JSON patch between them.
        ``relaxed``: the same, serving by key without checking fingerprints. ``live``: serves until the
        first divergence, then goes on live in a new run (linked to this one by ``forked_from``), and the
        ``Replay`` says where it diverged. No replay makes a non-idempotent tool call the run made.
        """
        return run_sync(lambda: self.replay_async(run_id, mode))

    async def replay_async(self, run_id: str, mode: ReplayMode = "strict") -> Replay:
        """``replay`` for async callers."""
        if mode not in ("strict", "relaxed", "live"):
            raise ConfigurationError(f"replay mode {mode!r}: use 'strict', 'relaxed' or 'live'")
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        if record.status not in FINISHED:
            raise AgentFlowError(
                f"run {run_id!r} is {record.status}, not finished: resume it (app.resume) before replaying it"
            )
        wf = self._lookup(record.workflow)
        steps = self._store.load_step_rows(run_id)  # plain tuples: see StepRow
        engine = RunEngine(
            run_id, Journal(run_id, self._store, steps), self._codec, self._clock, self._default_retry, mode=mode
        )
        engine.extras.llm_retry, engine.extras.budget = self._llm_retry, wf.budget
        engine.children = self  # a live replay's child runs go on live too, from the source's children
        engine.source = SourceRecords(steps)
        engine.code_versions = (record.code_version, wf.current_version())
        diverged: list[ReplayDivergence] = []
        if mode == "live":

            def go_live(report: ReplayDivergence) -> None:
                new_id = f"{run_id}-live-{uuid.uuid4().hex[:8]}"
                self._insert_derived(record, wf, new_id, report.key)
                engine.journal.rebase(new_id, [as_record(r) for r in steps if r[KEY] in engine.served])
                engine.run_id = new_id
                # The new run has used what it kept, not all the source run used (its budget, run.usage).
                engine.prompt_tokens, engine.completion_tokens, engine.cost = engine.journal.usage()
                diverged.append(report)

            engine.on_diverge = go_live
        output_json: str | None = None
        error: Exception | None = None
        try:
            output_json = await self._invoke(wf, engine, record)
        except (ReplayDivergence, StoreError):
            raise
        except Exception as exc:
            engine.raise_if_halted()
            error = exc
        engine.raise_if_halted()
        if diverged:  # the rest ran live, in a run of its own
            if error is None:
                self._finish(engine, RunStatus.COMPLETED, output=output_json)
            else:
                self._finish(engine, RunStatus.FAILED, error=ErrorInfo.encode(error))
            status = RunStatus.COMPLETED if error is None else RunStatus.FAILED
            output = None if output_json is None else self._codec.decode(output_json, wf.return_type)
            return Replay(run_id, status, output, len(engine.served), mode, diverged[0], engine.run_id)
        self._check_ending(record, [r[KEY] for r in steps], engine, output_json, error)
        output = None if output_json is None else self._codec.decode(output_json, wf.return_type)
        recorded_version, current_version = engine.code_versions
        note = None
        if recorded_version != current_version:
            note = f"recorded under code version {recorded_version}, replayed under {current_version}"
        return Replay(run_id, RunStatus(record.status), output, len(engine.served), mode, note=note)

    def _check_ending(
        self,
        record: RunRecord,
        keys: list[str],
        engine: RunEngine,
        output_json: str | None,
        error: Exception | None,
    ) -> None:
        """A replay must have taken every recorded step (their ``keys``, in order) and end as the run did."""
        run_id = record.id

        def taken(key: str) -> bool:  # a step served from the record is served whole, the steps inside it too
            parts = key.split("/")
            return any("/".join(parts[:i]) in engine.served for i in range(1, len(parts) + 1))

        missed = [key for key in keys if not taken(key)]
        if missed:
            raise ReplayDivergence(
                run_id, missed[0], "recorded", "never asked for",
                f"the replay ended without asking for {len(missed)} recorded step(s): {', '.join(missed[:5])}",
            )  # fmt: skip
        if record.status == RunStatus.COMPLETED.value:
            if error is not None or json.loads(output_json or "null") != json.loads(record.output or "null"):
                now = output_json if error is None else ErrorInfo.from_json(ErrorInfo.encode(error))
                raise ReplayDivergence(run_id, "<output>", record.output, now, "the replay ended another way")
        else:
            recorded = ErrorInfo.from_json(record.error)
            got = None if error is None else ErrorInfo.from_json(ErrorInfo.encode(error))
            if recorded is None or got is None or (got.type, got.message) != (recorded.type, recorded.message):
                raise ReplayDivergence(run_id, "<error>", str(recorded), str(got), "the replay ended another way")

    def _insert_derived(self, source: RunRecord, wf: Workflow, new_id: str, at: str) -> RunRecord:
        """Insert a run made from ``source`` (a fork, or the live part of a replay), linked to it."""
        derived = self._new_record(
            wf, new_id, RunStatus.RUNNING, source.input, forked_from=source.id, forked_at=at, derived_as=FORK
        )
        if not self._store.insert_run(derived):
            raise RunConflict(new_id, "a run with this id exists already")
        return derived

    def fork(self, run_id: str, at: str, override: Any = NO_OVERRIDE, *, new_run_id: str | None = None) -> Run:
        """A new run that reuses ``run_id``'s record before the step ``at`` and runs the rest live.

        ``override`` is what the step ``at`` gives in the fork instead of what it gave: the text (or a
        message dict, or a whole response) of a model call, the result of a tool, the value of a step,
        or an agent's state for a checkpoint. Without it, ``at`` runs live too. The new run records
        ``forked_from`` and ``forked_at``; the source run is never changed. A non-idempotent tool call
        the source run made is served from its record, not made again.
        """
        return run_sync(lambda: self.fork_async(run_id, at, override, new_run_id=new_run_id))

    async def fork_async(
        self, run_id: str, at: str, override: Any = NO_OVERRIDE, *, new_run_id: str | None = None
    ) -> Run:
        """``fork`` for async callers."""
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        if record.status == RunStatus.RUNNING.value:
            # A step may be in flight, or was when its process died: its effect (a payment) may have
            # happened without a record, and the fork, a run of its own, would make it again.
            raise AgentFlowError(
                f"run {run_id!r} is running (or was left running by a process that died): resume it "
                "(app.resume) or cancel it before forking it"
            )
        wf = self._lookup(record.workflow)
        steps = self._store.load_steps(run_id)
        target = next((r for r in steps if r.key == at), None)
        if target is None:
            keys = ", ".join(r.key for r in steps[:12])
            raise AgentFlowError(f"run {run_id!r} has no step {at!r} to fork at; its steps: {keys}")
        keep = enclosed([r for r in steps if r.seq < target.seq])
        if override is not NO_OVERRIDE:
            keep.append(target._replace(status="completed", error=None, output=override_output(target, override)))
        derived = self._insert_derived(record, wf, new_run_id or f"{run_id}-fork-{uuid.uuid4().hex[:8]}", at)
        Journal(derived.id, self._store, []).rebase(derived.id, keep)
        # It inherits the source run's records (``_derived.inherit``), the payments among them.
        return await self._execute(wf, derived, fresh=False)

    def counterfactual(
        self,
        workflow: Any,
        source_run_id: str,
        /,
        *,
        missing: Literal["live", "missing"] = "live",
        run_id: str | None = None,
    ) -> Run:
        """Run ``workflow`` (a new version of an agent: another prompt, model or code) on the input of a
        recorded run, against that run's recorded world.

        Model calls are made live; tool calls are served from the source run's record where a recorded
        call has the same tool and arguments (each recorded result used once, in order). A call the
        record has no answer for runs live (``missing="live"``; a non-idempotent tool never does) or
        gets an error result (``missing="missing"``). The new run links to its source (``forked_from``);
        a served tool step keeps the source's times, so ``agentflow show --step`` tells it from a live one.
        """
        return run_sync(lambda: self.counterfactual_async(workflow, source_run_id, missing=missing, run_id=run_id))

    async def counterfactual_async(
        self,
        workflow: Any,
        source_run_id: str,
        /,
        *,
        missing: Literal["live", "missing"] = "live",
        run_id: str | None = None,
    ) -> Run:
        """``counterfactual`` for async callers."""
        if missing not in ("live", "missing"):
            raise ConfigurationError(f"missing={missing!r}: use 'live' or 'missing'")
        source = self._store.get_run(source_run_id)
        if source is None:
            raise RunNotFound(source_run_id)
        wf = self._unregistered(workflow)
        new_id = run_id or f"{source_run_id}-cf-{uuid.uuid4().hex[:8]}"
        record = self._new_record(
            wf, new_id, RunStatus.RUNNING, source.input, forked_from=source_run_id,
            derived_as=counterfactual_kind(missing),
        )  # fmt: skip
        if not self._store.insert_run(record):
            raise RunConflict(record.id, "a run with this id exists already")
        # It inherits the source's recorded world (``_derived.inherit``): the source's and its children's
        # tool results.
        return await self._execute(wf, record, fresh=True)
