"""How the ``blobs`` table holds its rows: compact at rest, the same bytes and hashes above it.

Above the store a blob is ``(hash, data)``: ``hash`` is ``agentflow._llm.blob_hash(data)``, the sha256 of
the data as 43 base64url characters, and ``data`` the bytes that were hashed. In the table:

- ``hash`` is the digest's 32 bytes. Keys that are not blob hashes are refused (``ValueError``): the table
  is content-addressed, and only its own hashes read back the same.
- ``data`` of a message chain's node, the JSON ``["<previous node hash>",[message,...]]`` (or ``[null,...``
  for the first node), is stored as ``0x04`` + the previous hash's 32 bytes (``0x05`` and nothing for
  ``null``) + the messages between the brackets, packed: the JSON that every chat message repeats
  (``{"content":"``, ``","role":"user"}``, a tool call's skeleton: ``MESSAGE_FRAGMENTS_V1``) becomes one control
  character each, behind ``0x06``, or, from 1 KiB on, the whole is deflated against a dictionary of the
  same fragments, behind ``0x07``. A message's own text is stored as it was written: a turn of 235 bytes
  of messages (``{"content":"...","role":"user"}`` of 200 and the reply ``"ok"``) takes ~175 bytes
  plus the 33 of its link, where the JSON was 286.
- Any other data is packed like a step's JSON column (``agentflow._store._packing.pack_json``); data that
  starts with a byte under 0x20 (not JSON) is stored behind ``0x00``. Rows written before this layout
  (plain JSON) read as they are.

The node's hash is computed over its JSON, never over the packed bytes, so the layout can change without
changing a recorded request (whose fingerprint holds its messages' head hash). ``MESSAGE_FRAGMENTS_V1`` is part
of the file format: never change it (a test pins it); a better one gets new first bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._packing import deflate, inflate, pack_json, raw_hash, restore, substitute, text_hash, unpack_json

__all__ = [
    "MESSAGE_FRAGMENTS_V1",
    "pack_blob",
    "pack_blob_hash",
    "packed_blob_rows",
    "unpack_blob",
    "unpack_blob_hash",
]

_VERBATIM = b"\x00"
_PACKED_JSON = (b"\x01", b"\x02")  # pack_json's first bytes
_NODE = b"\x04"
_FIRST_NODE = b"\x05"
_TOKENS = b"\x06"
_DEFLATED = b"\x07"
_MIN_DEFLATE = 1024
_CONTROL = bytes(range(0x20))

# What chat messages repeat, as canonical JSON writes them (keys sorted, no spaces), most specific first:
# a later fragment never matches inside an earlier one's replacement, and restoring goes the other way.
MESSAGE_FRAGMENTS_V1: tuple[str, ...] = (
    '{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"',
    '","role":"assistant","tool_calls":[{"function":{"arguments":"',
    '","type":"function"},{"function":{"arguments":"',
    '","type":"function"}]}',
    '"},"id":"call_',
    '","role":"tool","tool_call_id":"call_',
    '","role":"assistant"}',
    '","role":"system"}',
    '","role":"user"}',
    '{"content":[{"text":"',
    '","type":"text"}],"role":"',
    '{"content":"',
    '","name":"',
    '","role":"',
)
_PAIRS = tuple((fragment, chr(n)) for n, fragment in enumerate(MESSAGE_FRAGMENTS_V1, start=1))
# The fragments tried only when the messages hold their guard, in the table's order (saves ~0.5 us a node).
_GROUPS = (
    ('"tool_calls":[', _PAIRS[0:5]),
    ('"tool_call_id":"', _PAIRS[5:6]),
    ("", _PAIRS[6:9]),
    ('{"content":[', _PAIRS[9:11]),
    ("", _PAIRS[11:]),
)
assert tuple(pair for _, group in _GROUPS for pair in group) == _PAIRS
_RESTORE = tuple((token, fragment) for fragment, token in reversed(_PAIRS))
_DICTIONARY = "".join(reversed(MESSAGE_FRAGMENTS_V1)).encode()


def packed_blob_rows(blobs: Mapping[str, bytes]) -> list[tuple[bytes, bytes]]:
    """``(hash, data)`` rows of the table for ``{hash: data}``."""
    return [(pack_blob_hash(h), pack_blob(data)) for h, data in blobs.items()]


def pack_blob_hash(h: str) -> bytes:
    """A blob hash's 32 bytes."""
    raw = raw_hash(h)
    if raw is None:
        raise ValueError(f"{h!r} is not a blob hash (agentflow._llm.blob_hash: sha256, 43 base64url characters)")
    return raw


def unpack_blob_hash(value: bytes | memoryview) -> str:
    return text_hash(bytes(value))


def pack_blob(data: bytes) -> bytes:
    """A blob's bytes at rest."""
    if data[-2:] == b"]]":
        if data[:2] == b'["' and data[45:48] == b'",[':
            link = raw_hash(data[2:45].decode("ascii", "replace"))
            body = None if link is None else _pack_messages(data[48:-2])
            if link is not None and body is not None:
                return _NODE + link + body
        elif data[:7] == b"[null,[":
            body = _pack_messages(data[7:-2])
            if body is not None:
                return _FIRST_NODE + body
    if data[:1] and data[0] < 0x20:
        return _VERBATIM + data
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data
    packed = pack_json(text)
    assert packed is not None
    return packed


def unpack_blob(value: bytes | memoryview) -> bytes:
    """The bytes ``pack_blob`` was given (or, for a row written before this layout, the row's bytes)."""
    data = bytes(value)
    first = data[:1]
    if first == _NODE:
        return b'["' + text_hash(data[1:33]).encode() + b'",[' + _unpack_messages(data[33:]) + b"]]"
    if first == _FIRST_NODE:
        return b"[null,[" + _unpack_messages(data[1:]) + b"]]"
    if first in _PACKED_JSON:
        text = unpack_json(data)
        assert text is not None
        return text.encode()
    if first == _VERBATIM:
        return data[1:]
    return data


def _pack_messages(body: bytes) -> bytes | None:
    """The messages of a node (the JSON between its list's brackets) packed; None if they are not JSON
    as agentflow writes it (UTF-8 without raw control characters)."""
    if len(body.translate(None, _CONTROL)) != len(body):
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    if len(body) >= _MIN_DEFLATE:
        packed = deflate(body, _DICTIONARY)
        if len(packed) < len(body):
            return _DEFLATED + packed
    short = text
    for guard, pairs in _GROUPS:
        if guard in text:
            short = substitute(short, pairs)
    return _TOKENS + short.encode() if len(short) < len(text) else body


def _unpack_messages(data: bytes) -> bytes:
    first = data[:1]
    if first == _TOKENS:
        return restore(data[1:].decode(), _RESTORE).encode()
    if first == _DEFLATED:
        return inflate(data[1:], _DICTIONARY)
    return data
