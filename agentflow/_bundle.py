"""Run bundles: one run, whole, in a JSON file that another database (or CI) can import and replay.

A bundle holds the run's record, its step records (agent checkpoints are steps), the blobs its model calls
refer to (message chain nodes, followed through their links, tool schemas and response formats), and its
child runs with theirs, recursively, the records their restarts took out of them (``superseded``: the
audit trail of a restarted run travels with it), and the events sent to them (``events``: one sent to a
run that has not taken it yet, an approval say, is still there to take after the import). Every field of
``RunRecord`` and ``StepRecord`` is carried, so a new column travels without a change here. Secrets are
not in a record, so they are not in a bundle either.

    {
     "agentflow_version": "0.1.0",          the agentflow that exported it
     "blobs": {"<hash>": "<base64>", ...},  content-addressed: the key is blob_hash(data)
     "checksum": "sha256:<hex>",            over the canonical JSON of everything else in the file
     "format": "agentflow-bundle",
     "format_version": 1,                   2 when a run carries "superseded", 3 when one carries "events"
     "root": "<run id>",                    the exported run; its children follow it in "runs"
     "runs": [{"record": {...}, "steps": [{...}, ...],
               "superseded": [{"restart": 1, "superseded_at": <time>, "record": {...}}, ...],
               "events": [{"type": ..., "payload": <JSON text>, "sent_at": <time>, "delivered_key": ...}]},
              ...]
    }                                       ("superseded" and "events" only for a run that has them)

Keys are sorted and the order of runs and steps is fixed, so the same run exports the same bytes. An import
checks everything before it writes anything: the format, the checksum (any changed value is caught), every
blob's hash, every run's step hash chain, and that each blob a step refers to is there; then it writes all
runs in one transaction. Importing a bundle again is a no-op; a run id that names another run is refused.
Superseded records are checked for their run, their restart numbers and their blobs, and are part of the
run's hash chain check (``_chain``): a restart can take records out of the middle of a run, and the
records after them still link to them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._chain import first_broken_link
from ._llm import blob_hash
from ._store import RunRecord, StepRecord, Store
from ._store._records import EventRecord, SupersededStep
from .errors import BundleError, RunConflict, RunNotFound

__all__ = ["FORMAT", "FORMAT_VERSION", "BundleContents", "checksum", "export_bundle", "import_bundle", "read_bundle"]

FORMAT = "agentflow-bundle"
FORMAT_VERSION = 3  # the newest this agentflow reads and writes; it writes the oldest that holds the runs


class _BundleSuperseded(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    restart: int = Field(ge=1)
    superseded_at: float
    record: StepRecord


class _BundleEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str
    payload: str
    sent_at: float
    delivered_key: str | None


class _BundleRun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    record: RunRecord
    steps: list[StepRecord]
    superseded: list[_BundleSuperseded] = []
    events: list[_BundleEvent] = []


class _Bundle(BaseModel):
    """The file's shape. Strict: a value of the wrong type, a missing field or an unknown one is refused
    (a field this agentflow does not know would be lost, so it is not dropped quietly)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["agentflow-bundle"]
    format_version: int
    agentflow_version: str
    checksum: str
    root: str
    runs: list[_BundleRun] = Field(min_length=1)
    blobs: dict[str, str]


# -- export ---------------------------------------------------------------------------------------------------


def export_bundle(store: Store, run_id: str) -> bytes:
    """The bundle of run ``run_id`` and its child runs, as UTF-8 JSON bytes."""
    from . import __version__

    root = store.get_run(run_id)
    if root is None:
        raise RunNotFound(run_id)
    records = _with_children(store, root)
    runs: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    for record in records:
        steps = store.load_steps(record.id)
        superseded = store.load_superseded(record.id)
        broken = first_broken_link(record.id, steps, superseded)
        if broken is not None:
            raise BundleError(
                f"run {record.id!r}: its record was changed at step {broken!r} (the hash chain is broken); "
                "a bundle is a faithful copy, so it is not exported"
            )
        blobs.update(_referenced_blobs(store, record.id, [*steps, *(kept.record for kept in superseded)]))
        entry: dict[str, Any] = {"record": asdict(record), "steps": [step._asdict() for step in steps]}
        if superseded:
            entry["superseded"] = [
                {"restart": kept.restart, "superseded_at": kept.superseded_at, "record": kept.record._asdict()}
                for kept in superseded
            ]
        events = store.load_events(record.id)
        if events:
            entry["events"] = [{k: v for k, v in asdict(event).items() if k != "run_id"} for event in events]
        runs.append(entry)
    document: dict[str, Any] = {
        "format": FORMAT,
        # The oldest format that holds the runs: an agentflow that does not know "superseded" (1) or
        # "events" (2) still reads the bundles without them.
        "format_version": 3 if _any(runs, "events") else 2 if _any(runs, "superseded") else 1,
        "agentflow_version": __version__,
        "root": run_id,
        "runs": runs,
        "blobs": {h: base64.b64encode(data).decode("ascii") for h, data in blobs.items()},
    }
    document["checksum"] = checksum(document)
    return (json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _any(runs: list[dict[str, Any]], part: str) -> bool:
    return any(part in entry for entry in runs)


def _with_children(store: Store, root: RunRecord) -> list[RunRecord]:
    """``root`` and the runs below it through ``parent_id``, depth first, oldest child first."""
    found: list[RunRecord] = []
    seen: set[str] = set()
    todo = [root]
    while todo:
        record = todo.pop()
        if record.id in seen:  # a parent_id loop: each run once
            continue
        seen.add(record.id)
        found.append(record)
        todo.extend(reversed(store.child_runs(record.id)))
    return found


def _blob_refs(step: StepRecord) -> tuple[str | None, list[str]]:
    """The message chain head and the other blob refs (tools, response format) of a model call's request."""
    if step.kind != "llm" or not step.request:
        return None, []
    request = json.loads(step.request)
    if not isinstance(request, dict):
        return None, []
    head = request.get("messages")
    others = [request[name] for name in ("tools", "response_format") if isinstance(request.get(name), str)]
    return head if isinstance(head, str) else None, others


def _referenced_blobs(store: Store, run_id: str, steps: list[StepRecord]) -> dict[str, bytes]:
    """Every blob the steps refer to, the message chains followed to their first node; one query per
    chain depth, not per node."""
    found: dict[str, bytes] = {}
    wanted: dict[str, str] = {}  # hash -> the key of a step that needs it (for the message)
    nodes: set[str] = set()  # the hashes that are message chain nodes (they link to a previous node)
    for step in steps:
        head, others = _blob_refs(step)
        if head is not None:
            nodes.add(head)
            wanted.setdefault(head, step.key)
        for ref in others:
            wanted.setdefault(ref, step.key)
    while wanted:
        got = store.get_blobs(wanted)
        missing = [h for h in wanted if h not in got]
        if missing:
            raise BundleError(
                f"run {run_id!r}: step {wanted[missing[0]]!r} refers to blob {missing[0]}, which is not in the "
                "database; the run cannot be exported whole"
            )
        found.update(got)
        following: dict[str, str] = {}
        for h, data in got.items():
            if h in nodes:
                previous = _previous_node(data)
                if previous is not None and previous not in found:
                    nodes.add(previous)
                    following.setdefault(previous, wanted[h])
        wanted = following
    return found


def _previous_node(data: bytes) -> str | None:
    """The hash a message chain node links back to (``[previous or null, [messages...]]``)."""
    try:
        node = json.loads(data)
    except ValueError:
        return None
    if isinstance(node, list) and len(node) == 2 and isinstance(node[0], str):
        return node[0]
    return None


def checksum(document: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the bundle without its ``checksum`` field."""
    content = {k: v for k, v in document.items() if k != "checksum"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# -- import ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleContents:
    """A checked bundle's records and blobs, ready to be written."""

    root: str
    runs: list[RunRecord]
    steps: list[StepRecord]
    blobs: dict[str, bytes]
    superseded: list[SupersededStep] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)


def read_bundle(data: bytes, source: str = "the bundle") -> BundleContents:
    """Parse and check a bundle without touching any database; ``BundleError`` says what is wrong."""
    try:
        document = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise BundleError(f"{source} is not an agentflow bundle: it is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        what = f'its "format" is {found!r}' if found is not None else f'it has no "format": "{FORMAT}"'
        raise BundleError(f"{source} is not an agentflow bundle: {what}")
    version = document.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise BundleError(
            f"{source} is in bundle format {version}, written by agentflow {document.get('agentflow_version')}; "
            f"this agentflow reads format {FORMAT_VERSION} and older. Upgrade agentflow to import it"
        )
    if isinstance(document.get("checksum"), str) and document["checksum"] != checksum(document):
        raise BundleError(
            f"{source} was changed or damaged after it was exported: its checksum does not match its content. "
            "Export the run again"
        )
    try:
        bundle = _Bundle.model_validate_json(data)
    except ValidationError as exc:
        raise BundleError(f"{source} is not a valid agentflow bundle: {_problems(exc)}") from None
    if bundle.format_version < 1:
        raise BundleError(f"{source} is not a valid agentflow bundle: format_version {bundle.format_version}")
    return _check(bundle, source)


def _problems(exc: ValidationError, limit: int = 5) -> str:
    errors = exc.errors()
    listed = "; ".join(_problem(error) for error in errors[:limit])
    return listed + (f" (and {len(errors) - limit} more)" if len(errors) > limit else "")


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    if error["type"] == "unexpected_keyword_argument":
        return f"{where}: unknown field (written by a newer agentflow?)"
    return f"{where}: {str(error['msg']).lower()}"


def _check(bundle: _Bundle, source: str) -> BundleContents:
    """The bundle's own consistency: ids, hash chains, blob hashes, and that nothing it refers to is missing."""
    blobs: dict[str, bytes] = {}
    for h, text in bundle.blobs.items():
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BundleError(f"{source}: blob {h} is not base64") from None
        if blob_hash(data) != h:
            raise BundleError(f"{source}: blob {h} does not hash to its name; the bundle was changed or damaged")
        blobs[h] = data
    ids = [entry.record.id for entry in bundle.runs]
    if ids[0] != bundle.root or len(set(ids)) != len(ids):
        raise BundleError(f"{source}: its runs ({', '.join(ids[:5])}) must start with the root run, each once")
    runs: list[RunRecord] = []
    steps: list[StepRecord] = []
    superseded: list[SupersededStep] = []
    events: list[EventRecord] = []
    complete: set[str] = set()  # message chain nodes known to lead back to a first node inside the bundle
    for index, entry in enumerate(bundle.runs):
        run = entry.record
        if index and run.parent_id not in ids:
            raise BundleError(f"{source}: run {run.id!r} is not a child of a run in the bundle")
        if any(step.run_id != run.id for step in entry.steps):
            raise BundleError(f"{source}: run {run.id!r} holds steps of another run")
        if [s.seq for s in entry.steps] != sorted({s.seq for s in entry.steps}):
            raise BundleError(f"{source}: the steps of run {run.id!r} are not in order")
        if len({s.key for s in entry.steps}) != len(entry.steps):
            raise BundleError(f"{source}: run {run.id!r} holds two steps with the same key")
        kept = [SupersededStep(k.restart, k.superseded_at, k.record) for k in entry.superseded]
        _check_superseded(run.id, kept, source)
        broken = first_broken_link(run.id, entry.steps, kept)
        if broken is not None:
            raise BundleError(
                f"{source}: the record of run {run.id!r} was changed at step {broken!r} (its hash chain is broken)"
            )
        _check_references(entry.steps, blobs, complete, source)
        _check_references((k.record for k in kept), blobs, complete, source)
        runs.append(run)
        steps.extend(entry.steps)
        superseded.extend(kept)
        events.extend(_checked_events(run.id, entry.events, source))
    return BundleContents(bundle.root, runs, steps, blobs, superseded, events)


def _checked_events(run_id: str, events: list[_BundleEvent], source: str) -> list[EventRecord]:
    """A run's events as records; each payload must be JSON text, as ``send_event`` stores it."""
    for index, event in enumerate(events):
        try:
            json.loads(event.payload)
        except ValueError:
            raise BundleError(
                f"{source}: event {index} of run {run_id!r} ({event.type!r}) has a payload that is not JSON"
            ) from None
    return [EventRecord(run_id, e.type, e.payload, e.sent_at, e.delivered_key) for e in events]


def _check_superseded(run_id: str, kept: list[SupersededStep], source: str) -> None:
    """A run's superseded records are its own, restart by restart in ``seq`` order, each key once a restart."""
    if any(k.record.run_id != run_id for k in kept):
        raise BundleError(f"{source}: run {run_id!r} holds superseded records of another run")
    order = [(k.restart, k.record.seq) for k in kept]
    if order != sorted(set(order)):
        raise BundleError(f"{source}: the superseded records of run {run_id!r} are not in order (restart, seq)")
    if len({(k.restart, k.record.key) for k in kept}) != len(kept):
        raise BundleError(f"{source}: run {run_id!r} holds two records of one key superseded by the same restart")


def _check_references(steps: Iterable[StepRecord], blobs: Mapping[str, bytes], complete: set[str], source: str) -> None:
    """Every blob a step refers to is in the bundle, message chains followed back to their first node; each
    node is read once, however many calls share it."""
    for step in steps:
        try:
            head, others = _blob_refs(step)
        except ValueError:
            raise BundleError(
                f"{source}: step {step.key!r} of run {step.run_id!r} has a request that is not JSON"
            ) from None
        walked: set[str] = set()
        node = head
        while node is not None and node not in complete and node not in walked:
            if node not in blobs:
                break
            walked.add(node)
            node = _previous_node(blobs[node])
        for ref in [*others, node]:
            if ref is not None and ref not in blobs:
                raise BundleError(f"{source}: step {step.key!r} of run {step.run_id!r} refers to blob {ref}, "
                                  "which the bundle does not hold")  # fmt: skip
        complete.update(walked)


def import_bundle(store: Store, data: bytes, source: str = "the bundle") -> list[str]:
    """Check the bundle, then write its runs in one transaction: the ids of its runs, the exported one first
    (imported now, or found already there with the same content)."""
    contents = read_bundle(data, source)
    try:
        store.import_runs(contents.runs, contents.steps, contents.blobs, contents.superseded, contents.events)
    except RunConflict as exc:
        raise BundleError(
            f"{source}: run {exc.run_id!r} is in this database already, with other content; nothing was "
            "imported. Import into another database, or rename one of the runs"
        ) from exc
    return [run.id for run in contents.runs]
