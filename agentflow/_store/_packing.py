"""How a step record's bulky columns are laid out in the ``steps`` table: compact at rest, plain above it.

Above the store a ``StepRecord`` holds JSON text and hex digests. In the table:

- ``request``, ``output`` and ``error`` are bytes: JSON of 48 bytes or more is deflated against a preset
  dictionary of the fields agentflow's records repeat (an OpenAI-style chat completion, its usage, tool
  calls, stream chunks, a request's keys) behind a first byte ``0x01``; shorter JSON is its UTF-8 bytes.
  JSON text never starts with byte 1, so the two cannot be confused, and rows written before this layout
  (text on SQLite, ``convert_to`` bytes on Postgres) read as they are. A recorded LLM response of ~350
  bytes takes ~60; a message's content is left to the content-addressed ``blobs``, which stay plain.
- ``fingerprint`` and ``chain`` are sha256 digests: 32 raw bytes rather than 64 hex characters. A value
  that is not a 64-digit hex digest (a fingerprint imported from elsewhere) is kept as ``0x00`` + UTF-8.

Deflate with a 2 KiB window (``wbits=-11``), from a copy of a compressor primed with the dictionary, takes
~2.5 us for a response and ~1 us to inflate (~7 us a recorded LLM call in all, for ~370 bytes saved);
``benchmarks/conversation_storage.py`` measures the bytes.

The dictionary is part of the file format: ``DICTIONARY_V1`` must never change. A better one gets a new
first byte (``0x02``) and this module keeps reading ``0x01``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from ._records import STEP_COLUMNS, StepRecord

__all__ = ["pack_digest", "pack_json", "packed_step", "unpack_digest", "unpack_json", "unpacked_step"]

_DEFLATED_V1 = 1
_MIN_DEFLATE = 48  # below this the deflate stream's own framing eats most of the gain
_WBITS = -11  # raw deflate, 2 KiB window: the dictionary and a record fit; small state, fast to set up
_TEXT_DIGEST = b"\x00"

# Fragments agentflow's step records repeat, the most frequent last (deflate reaches back from the end
# most cheaply). Written out here rather than derived from code: this text is part of the stored format.
DICTIONARY_V1 = (
    b'{"type":"function","function":{"name":"","description":"","parameters":{"type":"object","properties":'
    b'{"type":"string"},"required":[],"additionalProperties":false}}}'
    b'{"error":{"type":"","message":"","attempt":1}}{"ok":true,"value":null}'
    b'"system_fingerprint":"fp_","service_tier":"default","annotations":[],"refusal":null,'
    b'"reasoning_content":"","thinking_blocks":[],"logprobs":null,'
    b'"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,'
    b'"rejected_prediction_tokens":0},"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0}},'
    b'{"id":"chatcmpl-","created":17,"model":"","object":"chat.completion.chunk","choices":[{"delta":'
    b'{"content":"","role":"assistant"},"finish_reason":null,"index":0}]}'
    b'"chunks":[],"offsets":[0.0'
    b'{"arguments":{},"idempotent":true,"tool":""}{"checkpoint":""}'
    b'"params":{"temperature":0.0,"max_tokens":,"seed":},"response_format":"","stream":true,'
    b'"tools":"","tool_choice":"auto",'
    b'"tool_calls":[{"function":{"arguments":"{\\"","name":""},"id":"call_","type":"function"}]},'
    b'"finish_reason":"tool_calls","index":0,"message":{"role":"assistant",'
    b'{"messages":"","model":"gpt-4o-mini","n_messages":'
    b'{"response":{"id":"chatcmpl-","created":17,"model":"gpt-4o-mini","object":"chat.completion",'
    b'"choices":[{"finish_reason":"stop","index":0,"message":{"content":"","role":"assistant"},'
    b'"provider_specific_fields":{}}],"usage":{"completion_tokens":,"prompt_tokens":,"total_tokens":'
)

# A compressor with the dictionary loaded, never used itself: each packing works on a copy of it.
_PRIMED = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 2, zdict=DICTIONARY_V1)


def pack_json(text: str | None) -> bytes | None:
    """A JSON column's bytes at rest."""
    if text is None:
        return None
    data = text.encode()
    if len(data) < _MIN_DEFLATE:
        return data
    deflate = _PRIMED.copy()  # ~1.5 us less than loading the dictionary into a new compressor
    packed = deflate.compress(data) + deflate.flush()
    if len(packed) + 1 >= len(data):
        return data
    return bytes((_DEFLATED_V1,)) + packed


def unpack_json(value: bytes | memoryview | str | None) -> str | None:
    """The JSON text of a column as stored by ``pack_json`` (or as text, by an older agentflow)."""
    if value is None or isinstance(value, str):
        return value
    data = bytes(value)
    if data[:1] == b"\x01":
        inflate = zlib.decompressobj(_WBITS, zdict=DICTIONARY_V1)
        return (inflate.decompress(data[1:]) + inflate.flush()).decode()
    return data.decode()


def pack_digest(digest: str) -> bytes:
    """A sha256 hex digest as its 32 bytes; anything else as ``0x00`` + its UTF-8."""
    if len(digest) == 64:
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            pass
        else:
            if raw.hex() == digest:  # lowercase, as hashlib writes it: reads back the same
                return raw
    return _TEXT_DIGEST + digest.encode()


def unpack_digest(value: bytes | memoryview | str) -> str:
    """The text of a digest column as stored by ``pack_digest`` (or as text, by an older agentflow)."""
    if isinstance(value, str):
        return value
    data = bytes(value)
    if len(data) == 32:
        return data.hex()
    if data[:1] == _TEXT_DIGEST:
        return data[1:].decode()
    return data.decode()  # converted from text by the migration of a value that was not a digest


def packed_step(step: StepRecord) -> tuple[Any, ...]:
    """The values of a step's row, in ``STEP_COLUMNS`` order, as the table holds them."""
    return (
        step.run_id,
        step.key,
        step.seq,
        step.kind,
        step.name,
        pack_digest(step.fingerprint),
        pack_json(step.request),
        step.status,
        step.attempt,
        pack_json(step.output),
        pack_json(step.error),
        step.started_at,
        step.finished_at,
        step.prompt_tokens,
        step.completion_tokens,
        step.cost,
        pack_digest(step.chain),
    )


def unpacked_step(row: Sequence[Any]) -> StepRecord:
    """A ``StepRecord`` from a row of the table read in ``STEP_COLUMNS`` order."""
    (run_id, key, seq, kind, name, fingerprint, request, status, attempt, output, error, started_at, finished_at,
     prompt_tokens, completion_tokens, cost, chain) = row  # fmt: skip
    return StepRecord(
        run_id, key, seq, kind, name, unpack_digest(fingerprint), unpack_json(request), status, attempt,
        unpack_json(output), unpack_json(error), started_at, finished_at, prompt_tokens, completion_tokens, cost,
        unpack_digest(chain),
    )  # fmt: skip


assert STEP_COLUMNS == (
    "run_id", "key", "seq", "kind", "name", "fingerprint", "request", "status", "attempt", "output", "error",
    "started_at", "finished_at", "prompt_tokens", "completion_tokens", "cost", "chain",
), "packed_step and unpacked_step list the columns in STEP_COLUMNS order"  # fmt: skip
