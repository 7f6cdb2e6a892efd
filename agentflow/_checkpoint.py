"""Checkpoints of a piece of state (an agent's messages and scratch state) as recorded steps.

A checkpoint is a step of kind ``checkpoint`` under the key ``scope/name#n``. Its output is either a full
snapshot, ``{"snapshot": state}``, or a JSON-patch (RFC 6902, through ``jsonpatch``) against the previous
checkpoint of the same chain, ``{"patch": [...]}``. A snapshot is written for the first checkpoint, every
``every`` checkpoints, and whenever the patch would be larger than the state itself, so rebuilding the
state at any point reads at most ``every`` records of its chain.

A chain is the key without its counter (``support.state``, or ``plan.s2#0/support.state`` for an agent
running inside a graph node): the checkpoints of one piece of state in one scope.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._codec import canonical_json

if TYPE_CHECKING:
    from ._engine import RunEngine
from .errors import AgentFlowError

__all__ = ["chain_of", "rebuild_state", "record_checkpoint"]


@dataclass
class _Last:
    """The last checkpoint of a chain in this execution: its state (a private copy) and how many
    checkpoints were written since the last snapshot."""

    state: Any
    since_snapshot: int


def chain_of(key: str) -> str:
    """The chain a checkpoint key belongs to: the key without its ``#n``."""
    return key.rsplit("#", 1)[0]


def record_checkpoint(engine: RunEngine, scope: str, name: str, state: Mapping[str, Any], *, every: int) -> Any:
    """Record ``state`` as the next checkpoint of the chain ``scope/name``; returns the state as recorded.

    Resumed or replayed, a checkpoint already in the record is not written again and the recorded state
    is returned: it equals ``state`` unless the record was edited (a fork that overrides an agent's
    state), in which case the caller should carry on from the recorded one.
    """
    if every < 1:
        raise AgentFlowError(f"checkpoint every must be at least 1, got {every}")
    key, request, fp, rec = engine.begin(scope, name, {"checkpoint": name})
    text = canonical_json(state)
    copy = json.loads(text)  # a private copy: the caller goes on changing its state
    chains = engine.extras.checkpoints
    chain = chain_of(key)
    last = chains.get(chain)
    if rec is not None:
        recorded = json.loads(rec.output or "{}")
        if "snapshot" in recorded:
            chains[chain] = _Last(recorded["snapshot"], 0)
        else:
            import jsonpatch

            base = last.state if last is not None else copy
            patched = jsonpatch.apply_patch(base, recorded.get("patch", []), in_place=False)
            chains[chain] = _Last(patched, last.since_snapshot + 1 if last is not None else 0)
        return json.loads(canonical_json(chains[chain].state))
    output: str | None = None
    if last is not None and last.since_snapshot + 1 < every:
        import jsonpatch

        patch = jsonpatch.make_patch(last.state, copy).patch
        patch_text = canonical_json({"patch": patch})
        if len(patch_text) < len(text):
            output = patch_text
    if output is None:
        output = '{"snapshot":' + text + "}"
        chains[chain] = _Last(copy, 0)
    else:
        chains[chain] = _Last(copy, last.since_snapshot + 1 if last is not None else 0)
    now = engine.clock.time()
    engine.record(key=key, kind="checkpoint", name=name, fp=fp, request=request, started=now, attempts=1, output=output)
    return state  # recorded as given: the caller's own object (so it can tell nothing was edited)


class _CheckpointLike(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> Any: ...

    @property
    def output(self) -> Any: ...


def _output(step: _CheckpointLike) -> Any:
    return json.loads(step.output) if isinstance(step.output, str) else step.output


def checkpoint_chains(steps: Iterable[_CheckpointLike]) -> dict[str, list[_CheckpointLike]]:
    """The checkpoints of a run by chain, in record order."""
    chains: dict[str, list[_CheckpointLike]] = {}
    for step in steps:
        if str(step.kind) == "checkpoint":
            chains.setdefault(chain_of(step.key), []).append(step)
    return chains


def rebuild_state(checkpoints: list[_CheckpointLike], upto_seq: int) -> Any:
    """The state of one chain as its last checkpoint at or before ``upto_seq`` left it (None: none yet)."""
    import jsonpatch

    upto = [c for c in checkpoints if c.seq <= upto_seq]
    if not upto:
        return None
    outputs = [_output(c) for c in upto]
    snapshots = [i for i, out in enumerate(outputs) if "snapshot" in out]
    if not snapshots:
        raise AgentFlowError(f"checkpoint {upto[0].key} is a patch with no snapshot before it: the record is damaged")
    start = snapshots[-1]
    state = copy.deepcopy(outputs[start]["snapshot"])  # a Step's output is shared: never patch it in place
    for out in outputs[start + 1 :]:
        state = jsonpatch.apply_patch(state, out["patch"], in_place=True)
    return state
