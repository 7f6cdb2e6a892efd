"""Canonical JSON, the text every request fingerprint is the sha256 of: it must stay ``json.dumps``'s
(sorted keys, no spaces, no ASCII escaping), byte for byte, for recorded fingerprints to keep matching."""

from __future__ import annotations

import datetime
import hashlib
import json
import random
from typing import Any

import pytest

from agentflow._codec import canonical_json, compact_json_encoder, fingerprint, sha256


def _dumps(value: Any, default: Any = None) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.choice([0.1, -2.5e-300, 1e300, float("inf"), float("nan"), 3.0])
    if kind in (3, 4):
        return "".join(rng.choice('ab"\\\n\t\x01é€😀 ') for _ in range(rng.randrange(12)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        "".join(rng.choice("kéy\n") for _ in range(3)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))
    }


def test_the_encoder_made_once_writes_what_json_dumps_writes() -> None:
    rng = random.Random(7)
    encode = compact_json_encoder()
    for _ in range(500):
        value = _random_json(rng)
        assert encode(value) == _dumps(value) == canonical_json(value)


def test_a_default_is_used_for_values_json_cannot_write() -> None:
    value = {"when": datetime.date(2026, 11, 25), "n": [1, datetime.time(8, 30)]}
    assert (
        compact_json_encoder(default=str)(value)
        == _dumps(value, default=str)
        == '{"n":[1,"08:30:00"],"when":"2026-11-25"}'
    )
    with pytest.raises(TypeError):
        compact_json_encoder()(value)


def test_a_circular_value_is_a_value_error_not_a_crash() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        compact_json_encoder()(loop)
    with pytest.raises(ValueError, match="Circular"):
        canonical_json({"x": loop})


def test_sha256_gives_hashlibs_digest_on_both_sides_of_its_size_switch() -> None:
    rng = random.Random(11)
    for size in (0, 1, 63, 64, 500, 4095, 4096, 4097, 70_000):
        data = rng.randbytes(size)
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert sha256(data).digest() == hashlib.sha256(data).digest()
    assert fingerprint('{"a":1}') == hashlib.sha256(b'{"a":1}').hexdigest()
