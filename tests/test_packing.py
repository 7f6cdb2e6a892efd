"""The layout of step records and blobs at rest (``agentflow._store._packing``, ``_blob_packing``): what goes in
comes back exactly, and what every record repeats is stored once."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import pytest

from agentflow._codec import fingerprint
from agentflow._llm import blob_hash
from agentflow._store._blob_packing import (
    MESSAGE_FRAGMENTS_V1,
    pack_blob,
    pack_blob_hash,
    unpack_blob,
    unpack_blob_hash,
)
from agentflow._store._packing import (
    DICTIONARY_V1,
    FRAGMENTS_V1,
    hash_text,
    pack_digest,
    pack_json,
    pack_request,
    packed_step,
    raw_hash,
    text_hash,
    unpack_digest,
    unpack_json,
    unpack_request,
    unpacked_step,
)
from agentflow._store._records import STEP_COLUMNS, StepRecord

RESPONSE = json.dumps(
    {
        "response": {
            "id": "chatcmpl-AZ3kq9x8Yd7TfQm2LrPzW1vN0sK4",
            "created": 1732531200,
            "model": "gpt-4o-mini-2024-07-18",
            "object": "chat.completion",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {
                    "finish_reason": "stop",
                    "index": 0,
                    "message": {"content": "Your order ships tomorrow.", "role": "assistant"},
                    "provider_specific_fields": {},
                }
            ],
            "usage": {"completion_tokens": 7, "prompt_tokens": 161, "total_tokens": 168},
        }
    },
    separators=(",", ":"),
)


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "42",
        '"short"',
        RESPONSE,
        json.dumps({"text": "ünïcödé ✓ 漢字 " * 40}, ensure_ascii=False),
        json.dumps(list(range(500))),
        json.dumps({"document": [f"line {i}: the order ships tomorrow" for i in range(10_000)]}),  # ~400 KB
        "",
    ],
)
def test_json_comes_back_exactly(text: str) -> None:
    packed = pack_json(text)
    assert isinstance(packed, bytes)
    assert unpack_json(packed) == text


def test_a_recorded_response_shrinks_to_a_fraction_and_short_json_is_left_as_it_is() -> None:
    packed = pack_json(RESPONSE)
    assert packed is not None and packed[:1] == b"\x02"  # fragments replaced by tokens
    assert len(packed) * 2 < len(RESPONSE.encode())
    assert pack_json('{"ok":true}') == b'{"ok":true}'
    assert pack_json(None) is None and unpack_json(None) is None


def test_json_of_a_kilobyte_or_more_is_deflated() -> None:
    long = json.dumps({"response": {"choices": [{"message": {"content": "the order ships tomorrow " * 60}}]}})
    packed = pack_json(long)
    assert packed is not None and packed[:1] == b"\x01"
    assert len(packed) * 5 < len(long) and unpack_json(packed) == long


def test_text_holding_raw_control_characters_is_stored_as_it_is() -> None:
    odd = "not JSON \x01\x02 " + "x" * 100  # agentflow writes JSON, which escapes them; stay exact anyway
    assert pack_json(odd) == odd.encode() and unpack_json(pack_json(odd)) == odd
    long_odd = odd * 20  # deflated: exact whatever it holds
    assert unpack_json(pack_json(long_odd)) == long_odd


def test_text_written_before_the_packed_layout_reads_as_it_is() -> None:
    assert unpack_json(RESPONSE) == RESPONSE  # SQLite: the old row still holds text
    assert unpack_json(RESPONSE.encode()) == RESPONSE  # Postgres: converted to its UTF-8 bytes
    assert unpack_json(memoryview(pack_json(RESPONSE) or b"")) == RESPONSE


def test_digests_are_stored_as_32_bytes_and_anything_else_comes_back_unchanged() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert pack_digest(digest) == bytes.fromhex(digest) and len(pack_digest(digest)) == 32
    for value in (digest, digest.upper(), "not-a-digest", "x" * 32, "", "é" * 64):
        assert unpack_digest(pack_digest(value)) == value
        assert unpack_digest(value) == value  # an old row's text


def test_a_step_record_survives_the_round_trip_through_its_row() -> None:
    step = StepRecord(
        run_id="r",
        key="scope/llm#3",
        seq=3,
        kind="llm",
        name="llm",
        fingerprint=hashlib.sha256(b"req").hexdigest(),
        request='{"messages":"abc","model":"gpt-4o-mini","n_messages":3}',
        status="completed",
        attempt=1,
        output=RESPONSE,
        error=None,
        started_at=1.5,
        finished_at=2.25,
        prompt_tokens=161,
        completion_tokens=7,
        cost=0.000123,
        chain=hashlib.sha256(b"chain").hexdigest(),
    )
    assert unpacked_step(packed_step(step)) == step


def test_the_fingerprint_of_a_request_is_derived_not_stored_and_any_other_is_kept() -> None:
    request = '{"args":[1],"kwargs":{}}'
    step = StepRecord("r", "fetch#0", 0, "step", "fetch", fingerprint(request), request, "completed", 1,
                      "42", None, 1.0, 2.0, 0, 0, 0.0, hashlib.sha256(b"c").hexdigest())  # fmt: skip
    row = packed_step(step)
    assert row[STEP_COLUMNS.index("fingerprint")] == b""
    assert unpacked_step(row) == step
    # A fingerprint that is not the request's (an import, a future scheme) is stored as it is.
    other = step._replace(fingerprint=hashlib.sha256(b"another").hexdigest())
    assert len(packed_step(other)[STEP_COLUMNS.index("fingerprint")]) == 32
    assert unpacked_step(packed_step(other)) == other
    no_request = step._replace(request=None)
    assert unpacked_step(packed_step(no_request)) == no_request


HEAD = blob_hash(b"node")


@pytest.mark.parametrize(
    "request_json",
    [
        f'{{"messages":"{HEAD}","model":"gpt-4o-mini","n_messages":9}}',
        f'{{"messages":"{HEAD}"}}',
        f'{{"messages":"{HEAD}","model":"m","params":{{"stop":["{"x" * 2000}"]}}}}',  # the rest deflated
        '{"messages":"' + HEAD[:-1] + 'B","model":"m"}',  # not a hash base64 gives back (low bits set)
        '{"messages":"short","model":"gpt-4o-mini","n_messages":1}',
        '{"messages":null,"model":"gpt-4o-mini"}',
        '{"tool":"add","arguments":{"a":1}}',
    ],
)
def test_a_request_comes_back_exactly(request_json: str) -> None:
    packed = pack_request(request_json)
    assert unpack_request(packed) == request_json
    assert unpack_request(request_json) == request_json  # an old row's text


def test_a_model_calls_message_head_is_stored_as_32_bytes() -> None:
    text = f'{{"messages":"{HEAD}","model":"gpt-4o-mini","n_messages":9}}'
    packed = pack_request(text)
    assert packed is not None and packed[:1] == b"\x03" and packed[1:33] == base64.urlsafe_b64decode(HEAD + "=")
    assert len(packed) < len(text) - 20


def _node(previous: str | None, messages: list[dict[str, Any]]) -> bytes:
    return json.dumps([previous, messages], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


USER = {"role": "user", "content": "Where is my order A-1002? It was due on Monday."}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_9xK2", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "A-1002"}'}},
        {"id": "call_7Qw1", "type": "function", "function": {"name": "track", "arguments": '{"id": "A-1002"}'}},
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_9xK2", "content": '{"status": "shipped"}'}


@pytest.mark.parametrize(
    "data",
    [
        _node(None, [{"role": "system", "content": "Be brief."}, USER]),
        _node(HEAD, [{"role": "assistant", "content": "ok"}, USER]),
        _node(HEAD, [CALL, RESULT]),
        _node(HEAD, [{"role": "user", "content": [{"type": "text", "text": "Look: ünïcödé ✓ 漢字"}]}]),
        _node(HEAD, [{"role": "user", "content": "the order ships tomorrow " * 100}]),  # deflated
        _node(HEAD, []),
        _node(HEAD[:-1] + "B", [USER]),  # a link base64 would not give back
        b'[null,[{"content":"\x01"}]]',  # a raw control character: not JSON agentflow writes
        b'["' + HEAD.encode() + b'",[\xff]]',  # not UTF-8
        json.dumps({"type": "function", "function": {"name": "lookup", "parameters": {}}}).encode(),
        b"\x04 starts like a packed node",
        b"\x00\x01\x02 binary",
        b"\xff\xfe not UTF-8",
        b"",
    ],
)
def test_a_blob_comes_back_exactly(data: bytes) -> None:
    packed = pack_blob(data)
    assert unpack_blob(packed) == data
    assert unpack_blob(memoryview(packed)) == data


def test_a_conversation_node_keeps_its_text_and_drops_what_every_message_repeats() -> None:
    turn = [{"role": "assistant", "content": "ok"}, USER]
    data = _node(HEAD, turn)
    packed = pack_blob(data)
    assert packed[:1] == b"\x04" and packed[1:33] == base64.urlsafe_b64decode(HEAD + "=")
    text_bytes = len(USER["content"].encode()) + len(b"ok")
    assert len(packed) <= 1 + 32 + 1 + text_bytes + 5  # the link, the layout byte, the texts, 5 bytes of JSON
    assert USER["content"].encode() in packed  # the text itself stays as written
    assert len(pack_blob(_node(HEAD, [CALL, RESULT]))) < len(_node(HEAD, [CALL, RESULT])) - 150


def test_blob_hashes_are_stored_as_32_bytes_and_other_keys_are_refused() -> None:
    assert pack_blob_hash(HEAD) == base64.urlsafe_b64decode(HEAD + "=")
    assert unpack_blob_hash(pack_blob_hash(HEAD)) == HEAD
    for odd in (hashlib.sha256(b"x").hexdigest(), HEAD[:-1] + "B", "short", HEAD + "A"):
        with pytest.raises(ValueError, match="not a blob hash"):
            pack_blob_hash(odd)


def test_the_fragments_and_the_dictionary_are_frozen() -> None:
    # Part of the file format: records packed with them must unpack forever. New ones get a new marker.
    assert hashlib.sha256(DICTIONARY_V1).hexdigest() == FROZEN_DICTIONARY_SHA256
    assert hashlib.sha256(json.dumps(FRAGMENTS_V1).encode()).hexdigest() == FROZEN_FRAGMENTS_SHA256
    assert hashlib.sha256(json.dumps(MESSAGE_FRAGMENTS_V1).encode()).hexdigest() == FROZEN_MESSAGE_FRAGMENTS_SHA256


FROZEN_DICTIONARY_SHA256 = "ac4439b6878e31be335b5de4e28380054b08da2b73091fd03e77379c10fdad4e"
FROZEN_FRAGMENTS_SHA256 = "38d75683e60ad07369d12d940ddea37bd789d9319d00cc613d1695cef6681e2d"
FROZEN_MESSAGE_FRAGMENTS_SHA256 = "1d3fd5c8a8b5c3c6d600202f20a062ce3d504276e4f1a9c3d6d4c88d792540e0"


def test_blob_hash_text_reads_as_base64_would() -> None:
    rng = random.Random(5)
    for _ in range(300):
        raw = rng.randbytes(32)
        text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        assert text_hash(raw) == text
        assert raw_hash(text) == raw
    for odd in ("é" * 43, HEAD[:-1] + "=", HEAD.replace(HEAD[5], "*", 1), "", HEAD[:42]):
        assert raw_hash(odd) is None


def test_hashes_made_here_are_read_back_without_decoding_and_the_memory_of_them_is_bounded() -> None:
    from agentflow._store import _packing

    rng = random.Random(6)
    for _ in range(600):
        raw = rng.randbytes(32)
        text = hash_text(raw)
        assert text == text_hash(raw) and raw_hash(text) == raw
        assert len(_packing._RECENT_HASHES) <= 256
    assert raw_hash(HEAD[:-1] + "B") is None  # a text that decodes but does not read back the same
    assert HEAD[:-1] + "B" not in _packing._RECENT_HASHES
