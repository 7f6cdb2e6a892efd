"""The layout of step records at rest (``agentflow._store._packing``): what goes in comes back exactly."""

from __future__ import annotations

import hashlib
import json

import pytest

from agentflow._store._packing import (
    DICTIONARY_V1,
    FRAGMENTS_V1,
    pack_digest,
    pack_json,
    packed_step,
    unpack_digest,
    unpack_json,
    unpacked_step,
)
from agentflow._store._records import StepRecord

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


def test_the_fragments_and_the_dictionary_are_frozen() -> None:
    # Part of the file format: records packed with them must unpack forever. New ones get a new marker.
    assert hashlib.sha256(DICTIONARY_V1).hexdigest() == FROZEN_DICTIONARY_SHA256
    assert hashlib.sha256(json.dumps(FRAGMENTS_V1).encode()).hexdigest() == FROZEN_FRAGMENTS_SHA256


FROZEN_DICTIONARY_SHA256 = "ac4439b6878e31be335b5de4e28380054b08da2b73091fd03e77379c10fdad4e"
FROZEN_FRAGMENTS_SHA256 = "38d75683e60ad07369d12d940ddea37bd789d9319d00cc613d1695cef6681e2d"
