"""How a step record's bulky columns are laid out in the ``steps`` table: compact at rest, plain above it.

Above the store a ``StepRecord`` holds JSON text and hex digests. In the table:

- ``request``, ``output`` and ``error`` are bytes. JSON under 48 bytes is its UTF-8. Longer JSON has the
  fragments agentflow's records repeat (the skeleton of a chat completion, its usage, a tool call, a
  request's keys) replaced by one control character each, behind a first byte ``0x02``: JSON text never
  holds a raw control character (it escapes them), so the substitution is exact both ways. JSON of 1 KiB
  or more is deflated instead (raw deflate, 32 KiB window, level 1: ~100 MB/s, so a 1 MB output adds
  ~10 ms to its step), against a dictionary of the same fragments, behind ``0x01``. A value that
  neither shortens is stored as its UTF-8. JSON never starts with byte 1 or 2, so rows written before this
  layout (text on SQLite, ``convert_to`` bytes on Postgres) read as they are. A recorded LLM response of
  ~300 bytes takes ~50. Messages are not here but in the content-addressed ``blobs``
  (``_blob_packing``, which uses this module's ``pack_json`` for blobs other than message nodes).
- A model call's ``request`` names its messages by the hash of their chain's head node (43 base64url
  characters, ``{"messages":"<head>",...``): that hash is kept as its 32 bytes, behind ``0x03``, and the
  rest of the request (without it) packed as above.
- ``fingerprint`` and ``chain`` are sha256 digests: 32 raw bytes rather than 64 hex characters. A value
  that is not a lowercase 64-digit hex digest (one imported from elsewhere) is kept as ``0x00`` + UTF-8.
  The fingerprint is the sha256 of the request's JSON (``agentflow._codec.fingerprint``) for every step
  agentflow records, so it is not stored a second time: an empty value means "the sha256 of ``request``",
  computed again when the row is read (~0.3 us). The hash chain covers the fingerprint, so a request
  changed at rest now breaks the chain (a stored fingerprint would have hidden it).

Why fragments below 1 KiB rather than deflate: the substitution costs ~3.5 us for a response and ~1 us for
a request, deflate (a small window, set up for small values) ~2.7 us each in a tight loop but ~20 us each
inside a run, where litellm's work between two calls leaves deflate's state cold (measured with timers in
``benchmarks/llm_overhead.py``'s breakdown run).

``FRAGMENTS_V1`` and ``DICTIONARY_V1`` are part of the file format and must never change; a test pins
them. Better ones get new first bytes and this module keeps reading ``0x01``, ``0x02`` and ``0x03``.
"""

from __future__ import annotations

import binascii
import re
import zlib
from collections.abc import Sequence
from typing import Any

from .._codec import sha256
from ._records import STEP_COLUMNS, StepRecord

__all__ = [
    "deflate",
    "hash_text",
    "inflate",
    "pack_digest",
    "pack_json",
    "pack_request",
    "packed_step",
    "raw_hash",
    "restore",
    "substitute",
    "text_hash",
    "unpack_digest",
    "unpack_json",
    "unpack_request",
    "unpacked_step",
    "unpacked_step_row",
]

_DEFLATED_V1 = b"\x01"
_TOKENS_V1 = b"\x02"
_RAW_HEAD = b"\x03"
_HEAD_AT = len('{"messages":"')  # where a model call's request spells its messages' head hash
_HEAD_CHARS = 43  # a blob hash: sha256, base64url without padding
_MIN_PACK = 48  # shorter JSON is stored as it is: there is little to gain
_MIN_DEFLATE = 1024  # from here on deflate pays for itself; below, token substitution costs far less
_WBITS = -15  # raw deflate (no zlib header: the first byte says what follows), 32 KiB window
_TEXT_DIGEST = b"\x00"
_CONTROL = re.compile("[\x00-\x1f]")

# What step records repeat, each replaced by one control character (JSON text never holds a raw one: it
# escapes them). Fragments come in groups, each tried only when the record holds its guard (a model
# call's response, its request, a tool call, a checkpoint patch; the last group always), in this order:
# some fragments contain later ones. Part of the stored format: never change it; a new table gets a new
# first byte.
FRAGMENTS_V1: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        '{"response":',
        (
            '"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,'
            '"rejected_prediction_tokens":0},"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0}',
            '","index":0,"message":{"role":"assistant","tool_calls":[{"function":{"arguments":"',
            '","object":"chat.completion","choices":[{"finish_reason":"',
            '","object":"chat.completion.chunk","choices":[{"delta":{',
            '"provider_specific_fields":{}}],"usage":{"completion_tokens":',
            '{"response":{"id":"chatcmpl-',
            '","index":0,"message":{"content":"',
            '","role":"assistant"},',
            '","type":"function"}]},',
            '"},"id":"call_',
            ',"prompt_tokens":',
            ',"total_tokens":',
            '"system_fingerprint":"fp_',
            '","created":',
            ',"model":"',
        ),
    ),
    (
        '{"messages":',
        ('{"messages":"', '","model":"', '","n_messages":', ',"params":{', ',"tools":"', '"temperature":'),
    ),
    ('"idempotent":', ('},"idempotent":true,"tool":"', '},"idempotent":false,"tool":"', '{"arguments":{')),
    ('{"patch":', ('{"patch":[{"op":"', '","path":"/', '"value":')),
    ("", ('"content":"', '"role":"', "gpt-4o")),
)


def _token_tables() -> tuple[tuple[tuple[str, tuple[tuple[str, str], ...]], ...], tuple[tuple[str, str], ...]]:
    """(guard, ((fragment, token), ...)) groups to substitute, and (token, fragment) pairs to restore.
    Tokens are the characters 1, 2, 3... in the order of ``FRAGMENTS_V1``."""
    tokens = (chr(n) for n in range(1, 32))
    groups = tuple((guard, tuple(zip(fragments, tokens, strict=False))) for guard, fragments in FRAGMENTS_V1)
    pairs = [pair for _, group in groups for pair in group]
    assert len(pairs) == sum(len(fs) for _, fs in FRAGMENTS_V1) <= 31, "one control character a fragment"
    assert not any(_CONTROL.search(fragment) for fragment, _ in pairs)
    return groups, tuple((token, fragment) for fragment, token in reversed(pairs))


_SUBSTITUTE, _RESTORE = _token_tables()

# For JSON of 1 KiB and more (long outputs, tracebacks, streams' chunks): deflate against a dictionary of
# the same kind of fragments, the most frequent last (deflate reaches back from the end most cheaply).
DICTIONARY_V1 = (
    b'{"type":"function","function":{"name":"","description":"","parameters":{"type":"object","properties":'
    b'{"type":"string"},"required":[],"additionalProperties":false}}}'
    b'{"type": "", "message": "", "traceback": "Traceback (most recent call last):\\n  File \\"'
    b'"system_fingerprint":"fp_","service_tier":"default","annotations":[],"refusal":null,'
    b'"reasoning_content":"","thinking_blocks":[],"logprobs":null,'
    b'"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,'
    b'"rejected_prediction_tokens":0},"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0}},'
    b'{"id":"chatcmpl-","created":17,"model":"","object":"chat.completion.chunk","choices":[{"delta":'
    b'{"content":"","role":"assistant"},"finish_reason":null,"index":0}]}'
    b'"chunks":[],"offsets":[0.0'
    b'{"arguments":{},"idempotent":true,"tool":""}{"checkpoint":""}{"snapshot":{"messages":['
    b'{"patch":[{"op":"add","path":"/messages/","value":{"content":"","role":"user"}}'
    b'"params":{"temperature":0.0,"max_tokens":,"seed":},"response_format":"","stream":true,'
    b'"tools":"","tool_choice":"auto",'
    b'"tool_calls":[{"function":{"arguments":"{\\"","name":""},"id":"call_","type":"function"}]},'
    b'"finish_reason":"tool_calls","index":0,"message":{"role":"assistant",'
    b'{"messages":"","model":"gpt-4o-mini","n_messages":'
    b'{"response":{"id":"chatcmpl-","created":17,"model":"gpt-4o-mini","object":"chat.completion",'
    b'"choices":[{"finish_reason":"stop","index":0,"message":{"content":"","role":"assistant"},'
    b'"provider_specific_fields":{}}],"usage":{"completion_tokens":,"prompt_tokens":,"total_tokens":'
)


def pack_json(text: str | None) -> bytes | None:
    """A JSON column's bytes at rest."""
    if text is None:
        return None
    if len(text) < _MIN_PACK:
        return text.encode()
    if len(text) >= _MIN_DEFLATE:
        data = text.encode()
        packed = deflate(data, DICTIONARY_V1)
        return _DEFLATED_V1 + packed if len(packed) < len(data) else data
    if _CONTROL.search(text):  # not JSON as agentflow writes it: tokens could not be told from the text
        return text.encode()
    short = text
    for guard, pairs in _SUBSTITUTE:  # a guard is never part of an earlier group's fragments
        if guard in text:
            short = substitute(short, pairs)
    return _TOKENS_V1 + short.encode() if len(short) < len(text) else text.encode()


def unpack_json(value: bytes | memoryview | str | None) -> str | None:
    """The JSON text of a column as stored by ``pack_json`` (or as text, by an older agentflow)."""
    if value is None or isinstance(value, str):
        return value
    data = bytes(value)
    first = data[:1]
    if first == _TOKENS_V1:
        return restore(data[1:].decode(), _RESTORE)
    if first == _DEFLATED_V1:
        return inflate(data[1:], DICTIONARY_V1).decode()
    return data.decode()


def substitute(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``text`` with each ``(fragment, token)``'s fragment replaced by its token, in order."""
    for fragment, token in pairs:
        text = text.replace(fragment, token)
    return text


def restore(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``text`` with each ``(token, fragment)``'s token replaced by its fragment, in order (the reverse of
    the order ``substitute`` went in)."""
    for token, fragment in pairs:
        if token in text:
            text = text.replace(token, fragment)
    return text


def deflate(data: bytes, zdict: bytes) -> bytes:
    """Raw deflate against ``zdict`` at the fastest level with a full window: faster than smaller windows
    or higher levels at every size from 1 KiB (9 us for 1 KiB, ~100 MB/s on large values), and smaller."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, _WBITS, 8, zdict=zdict)
    return compressor.compress(data) + compressor.flush()


def inflate(data: bytes, zdict: bytes) -> bytes:
    """What ``deflate`` was given."""
    decompressor = zlib.decompressobj(_WBITS, zdict=zdict)
    return decompressor.decompress(data) + decompressor.flush()


def pack_request(text: str | None) -> bytes | None:
    """A request column's bytes at rest: ``pack_json``, with a message chain's head hash as 32 bytes."""
    if text is None:
        return None
    end = _HEAD_AT + _HEAD_CHARS
    if text.startswith('{"messages":"') and text[end : end + 1] == '"':
        raw = raw_hash(text[_HEAD_AT:end])
        if raw is not None:
            rest = pack_json(text[:_HEAD_AT] + text[end:])
            assert rest is not None
            return _RAW_HEAD + raw + rest
    return pack_json(text)


def unpack_request(value: bytes | memoryview | str | None) -> str | None:
    """The JSON text of a request column as stored by ``pack_request``."""
    if isinstance(value, (bytes, memoryview)) and value[:1] == _RAW_HEAD:
        data = bytes(value)
        rest = unpack_json(data[33:])
        assert rest is not None
        return rest[:_HEAD_AT] + text_hash(data[1:33]) + rest[_HEAD_AT:]
    return unpack_json(value)


# Blob hashes seen lately, text to bytes: a model call's hashes come round again (its new node's hash in
# its request and as the blob's key, its node's link to the one before), and ``hash_text`` puts a hash in
# as it is made, so none of them is decoded and checked again. Emptied when full: a bound, not an order.
_RECENT_HASHES: dict[str, bytes] = {}
_RECENT_MAX = 256


def raw_hash(text: str) -> bytes | None:
    """A blob hash (43 base64url characters) as its 32 bytes; None for text that would not read back the same."""
    raw = _RECENT_HASHES.get(text)
    if raw is not None:
        return raw
    try:  # binascii rather than base64.urlsafe_b64decode: the same, without its four Python frames
        raw = binascii.a2b_base64(text.translate(_FROM_URLSAFE) + "=")  # drops characters outside the alphabet
    except ValueError:  # binascii.Error, or text that is not ASCII
        return None
    if len(raw) != 32 or text_hash(raw) != text:
        return None
    _remember(text, raw)
    return raw


def text_hash(raw: bytes) -> str:
    """The 43 base64url characters of a blob hash's 32 bytes."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def hash_text(digest: bytes) -> str:
    """``text_hash`` of a digest just made, remembered for ``raw_hash``: a new message node's hash is
    read back into bytes twice when its call is recorded (~8 us a model call inside a run, by an A/B in
    ``benchmarks/llm_overhead.py``'s conditions)."""
    text = text_hash(digest)
    _remember(text, digest)
    return text


def _remember(text: str, raw: bytes) -> None:
    if len(_RECENT_HASHES) >= _RECENT_MAX:
        _RECENT_HASHES.clear()
    _RECENT_HASHES[text] = raw


_FROM_URLSAFE = str.maketrans("-_", "+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


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


def _request_digest(request: str) -> str:
    return sha256(request.encode()).hexdigest()  # type: ignore[no-any-return]


def packed_step(step: StepRecord) -> tuple[Any, ...]:
    """The values of a step's row, in ``STEP_COLUMNS`` order, as the table holds them."""
    derived = step.request is not None and _request_digest(step.request) == step.fingerprint
    return (
        step.run_id,
        step.key,
        step.seq,
        step.kind,
        step.name,
        b"" if derived else pack_digest(step.fingerprint),
        pack_request(step.request),
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
    return StepRecord._make(unpacked_step_row(row))


def unpacked_step_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """``unpacked_step``'s fields as a plain tuple (a ``StepRow``), made without a ``StepRecord``."""
    (run_id, key, seq, kind, name, fingerprint, request, status, attempt, output, error, started_at, finished_at,
     prompt_tokens, completion_tokens, cost, chain) = row  # fmt: skip
    text = unpack_request(request)
    # An empty fingerprint is the request's (there is always a request then).
    fingerprint = unpack_digest(fingerprint) if fingerprint or text is None else _request_digest(text)
    return (
        run_id, key, seq, kind, name, fingerprint, text, status, attempt,
        unpack_json(output), unpack_json(error), started_at, finished_at, prompt_tokens, completion_tokens, cost,
        unpack_digest(chain),
    )  # fmt: skip


assert STEP_COLUMNS == (
    "run_id", "key", "seq", "kind", "name", "fingerprint", "request", "status", "attempt", "output", "error",
    "started_at", "finished_at", "prompt_tokens", "completion_tokens", "cost", "chain",
), "packed_step and unpacked_step list the columns in STEP_COLUMNS order"  # fmt: skip
