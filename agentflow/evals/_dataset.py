"""Datasets: recorded runs as eval cases, from a database (by filter) or from bundle files.

A case is one recorded run: its input, its recorded trajectory (the reference a new version is compared
with) and optional expectations. A dataset from bundle files is read without any database; an eval that
runs something against it (a counterfactual run) imports the bundles into its app first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._models import RunStatus
from ..errors import ConfigurationError, RunNotFound
from ._trajectory import Trajectory, trajectory_from_records

if TYPE_CHECKING:
    from .._app import AgentFlow

__all__ = ["JUDGE_WORKFLOW", "Case", "Dataset"]

JUDGE_WORKFLOW = "agentflow.eval-judge"  # the workflow name an LLM judge's recorded calls run under
_FINISHED = (RunStatus.COMPLETED.value, RunStatus.FAILED.value)


@dataclass(frozen=True)
class Case:
    """One recorded run to evaluate against.

    ``id`` is the recorded run's id. ``input`` is its recorded input (``{"args": [...], "kwargs": {...}}``),
    which a counterfactual or fresh run is given again. ``reference`` is the recorded trajectory: what
    scorers compare with when no explicit expectation says otherwise. ``expected`` holds expectations by
    name (``output``, ``contains``, ``regex``, ``json``, ``tool_calls``, or your own scorers' keys).
    ``bundle`` is the file the run came from, when it came from one.
    """

    id: str
    input: dict[str, Any]
    reference: Trajectory
    expected: Mapping[str, Any] = field(default_factory=dict)
    bundle: str | None = None

    @property
    def prompt(self) -> Any:
        """The first positional argument of the recorded input (an agent's user message), or None."""
        args = self.input.get("args") or []
        return args[0] if args else None


@dataclass(frozen=True, repr=False)
class Dataset:
    """An ordered set of ``Case``s with unique ids; build one with ``from_runs`` or ``from_bundles``."""

    name: str
    cases: tuple[Case, ...]

    def __repr__(self) -> str:
        return f"<Dataset {self.name}: {len(self.cases)} cases>"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for case in self.cases:
            if case.id in seen:
                raise ConfigurationError(f"dataset {self.name!r} holds case {case.id!r} twice; case ids must be unique")
            seen.add(case.id)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __getitem__(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(f"dataset {self.name!r} has no case {case_id!r}; its cases: {', '.join(self.ids[:10])}")

    @property
    def ids(self) -> list[str]:
        return [case.id for case in self.cases]

    def expect(self, expectations: Mapping[str, Mapping[str, Any]]) -> Dataset:
        """A copy whose cases carry these expectations (case id -> ``{name: expected value}``), added to
        the ones they have. An id that is not a case is an error, so a typo does not pass silently."""
        unknown = sorted(set(expectations) - set(self.ids))
        if unknown:
            raise ConfigurationError(
                f"expectations for case(s) {', '.join(unknown)} that dataset {self.name!r} does not hold; "
                f"its cases: {', '.join(self.ids[:10])}"
            )
        cases = tuple(
            replace(case, expected={**case.expected, **expectations[case.id]}) if case.id in expectations else case
            for case in self.cases
        )
        return Dataset(self.name, cases)

    # -- building --------------------------------------------------------------------------------------

    @classmethod
    def from_runs(
        cls,
        app: AgentFlow,
        *,
        workflow: str | None = None,
        status: str | Sequence[str] | None = _FINISHED,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        include_derived: bool = False,
        expectations: Mapping[str, Mapping[str, Any]] | None = None,
        name: str | None = None,
    ) -> Dataset:
        """The recorded runs of ``app``'s database that match: those named in ``ids`` (in that order; a
        missing one raises ``RunNotFound``), else those of ``workflow`` with a ``status`` in it (default:
        finished runs), oldest first (then by id), at most ``limit``. Runs derived from others (forks, counterfactual
        runs, live replays), child runs and an LLM judge's runs are left out unless ``include_derived``.

        Reads every run's steps in a few queries, not one per run.
        """
        store = app._store  # the eval layer reads through the store's interface, never SQL
        if ids is not None:
            records = store.get_runs(list(ids))
            missing = [run_id for run_id in ids if run_id not in {r.id for r in records}]
            if missing:
                raise RunNotFound(missing[0])
        else:
            statuses = [status] if isinstance(status, str) else None if status is None else list(status)
            records = store.list_runs(statuses=statuses, workflow=workflow, limit=None)
            records.sort(key=lambda r: (r.created_at, r.id))  # oldest first: stable as runs are added
            if not include_derived:
                records = [
                    r for r in records if r.forked_from is None and r.parent_id is None and r.workflow != JUDGE_WORKFLOW
                ]
            if limit is not None:
                records = records[:limit]
        steps = store.load_steps_of([r.id for r in records])
        cases = tuple(
            Case(id=r.id, input=traj.input, reference=traj)
            for r in records
            for traj in (trajectory_from_records(r, steps[r.id]),)
        )
        dataset = cls(name or workflow or "runs", cases)
        return dataset.expect(expectations) if expectations else dataset

    @classmethod
    def from_bundles(
        cls,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        expectations: Mapping[str, Mapping[str, Any]] | None = None,
        name: str | None = None,
    ) -> Dataset:
        """The runs exported to bundle files (``agentflow export``, ``app.export_run``): one case per
        bundle, its root run. ``paths`` are files, folders (every ``*.json`` in them, sorted) or glob
        patterns. Each bundle is checked whole (``BundleError`` if it is damaged or not a bundle); no
        database is touched."""
        from .._bundle import read_bundle

        files = _expand(paths)
        if not files:
            raise ConfigurationError(f"no bundle files found at {_describe(paths)}")
        cases = []
        for path in files:
            contents = read_bundle(path.read_bytes(), f"bundle {path}")
            root = next(r for r in contents.runs if r.id == contents.root)
            traj = trajectory_from_records(root, [s for s in contents.steps if s.run_id == root.id])
            cases.append(Case(id=root.id, input=traj.input, reference=traj, bundle=str(path)))
        dataset = cls(name or _default_name(files), tuple(cases))
        return dataset.expect(expectations) if expectations else dataset


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.json")))
        elif path.exists():
            files.append(path)
        elif any(ch in str(item) for ch in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            files.extend(sorted(anchor.glob(str(path.relative_to(anchor)) if path.is_absolute() else str(path))))
        else:
            raise ConfigurationError(f"there is no bundle file or folder at {path}")
    return list(dict.fromkeys(files))


def _describe(paths: Any) -> str:
    return str(paths) if isinstance(paths, (str, os.PathLike)) else ", ".join(str(p) for p in paths)


def _default_name(files: list[Path]) -> str:
    parents = {f.parent.name for f in files}
    return parents.pop() if len(parents) == 1 else "bundles"
