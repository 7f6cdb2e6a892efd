"""Tokens counted offline with tiktoken, as OpenAI counts them: a prompt before a call (budgets, rate
limits, conversation memory), a completion when a provider reported no usage.

The encodings load from the files litellm ships (``TIKTOKEN_CACHE_DIR`` points there unless set), so
nothing is downloaded. Images, audio and files are estimated, never counted as base64 text.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._llm import ToolCall

__all__ = ["count_completion_tokens", "count_prompt_tokens"]

_BUNDLED_ENCODINGS = ("cl100k_base", "o200k_base")


@functools.cache
def _encoding(name: str) -> Any:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        spec = importlib.util.find_spec("litellm")
        if spec and spec.submodule_search_locations:
            bundled = os.path.join(next(iter(spec.submodule_search_locations)), "litellm_core_utils", "tokenizers")
            os.environ["TIKTOKEN_CACHE_DIR"] = bundled
    import tiktoken

    return tiktoken.get_encoding(name)


def _encoding_name(model: str) -> str:
    import tiktoken.model

    base = model.rsplit("/", 1)[-1]
    try:
        name = tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        return "o200k_base"
    # Only the encodings litellm ships load offline; others would be downloaded.
    return name if name in _BUNDLED_ENCODINGS else "cl100k_base"


def count_prompt_tokens(model: str, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """Prompt tokens as OpenAI counts them (content plus ~3 tokens of framing a message), offline.

    A content list is counted part by part: text parts with tiktoken, images, audio and files by the
    estimates of ``_content_part_tokens`` (their base64 data is never counted as text).
    """
    enc = _encoding(_encoding_name(model))
    total = 3  # the reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        for name, value in message.items():
            if name == "content" and type(value) is list:
                total += sum(_content_part_tokens(enc, part, model) for part in value)
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str) if value else ""
            total += len(enc.encode(text, disallowed_special=()))
            if name == "name":
                total += 1
    if tools:
        total += len(enc.encode(json.dumps(tools, default=str), disallowed_special=()))
    return total


def count_completion_tokens(
    model: str, text: str | None, tool_calls: Iterable[ToolCall] = (), reasoning: str | None = None
) -> int:
    """Completion tokens of an answer, counted with tiktoken: its text, reasoning, and each tool call's name
    and arguments. An estimate, for answers whose provider reported no usage."""
    enc = _encoding(_encoding_name(model))
    pieces = [text or "", reasoning or ""]
    for call in tool_calls:
        pieces += [call.name, call.arguments]
    return sum(len(enc.encode(piece, disallowed_special=())) for piece in pieces if piece)


# Fixed estimates for content parts whose size is not known without decoding them. OpenAI bills an image at
# a base plus a rate per 512 px tile (after scaling): 85 + 170 for most models, 2,833 + 5,667 for
# gpt-4o-mini (whose tokens cost a 33rd: an image costs the same money). An image of unknown size counts
# as 4 tiles, a 1024 x 1024 image at high detail (765 tokens; the largest, 768 x 2048, is 8 tiles). Audio
# and files have no rule that can be read off their encoded size: 1,000 tokens each (audio is billed at
# about 10 tokens a second).
_IMAGE_RATES = {"gpt-4o-mini": (2_833, 5_667)}  # (base, per tile) by model name prefix
_IMAGE_RATE = (85, 170)
_IMAGE_TILES_UNKNOWN_SIZE = 4
_AUDIO_PART_TOKENS = 1_000
_FILE_PART_TOKENS = 1_000


def _content_part_tokens(enc: Any, part: Any, model: str) -> int:
    """Tokens of one part of a message's content list."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text":
        return len(enc.encode(str(part.get("text") or ""), disallowed_special=()))
    if kind == "image_url":
        return _image_tokens(part.get("image_url"), _image_rate(model))
    if kind == "input_audio":
        return _AUDIO_PART_TOKENS
    if kind == "file":
        return _FILE_PART_TOKENS
    return len(enc.encode(json.dumps(part, default=str), disallowed_special=()))


def _image_rate(model: str) -> tuple[int, int]:
    base = model.rsplit("/", 1)[-1]
    return next((rate for prefix, rate in _IMAGE_RATES.items() if base.startswith(prefix)), _IMAGE_RATE)


def _image_tokens(image_url: Any, rate: tuple[int, int]) -> int:
    """Prompt tokens of an ``image_url`` content part by OpenAI's published rule, ``rate`` being the
    model's (base, per tile): the base alone at ``detail="low"``; otherwise the image is scaled to fit
    2048 x 2048, then its shorter side to 768 px (never scaled up), and costs the base plus the rate per
    512 px tile. The size is read from the first bytes of a PNG or JPEG data URL; any other image (a web
    URL, another format) counts as 4 tiles, a 1024 x 1024 image."""
    base, per_tile = rate
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    detail = image_url.get("detail") if isinstance(image_url, Mapping) else None
    if detail == "low":
        return base
    size = _data_url_image_size(url) if isinstance(url, str) else None
    if size is None:
        return base + per_tile * _IMAGE_TILES_UNKNOWN_SIZE
    width, height = float(size[0]), float(size[1])
    if max(width, height) > 2048:
        scale = 2048 / max(width, height)
        width, height = width * scale, height * scale
    if min(width, height) > 768:
        scale = 768 / min(width, height)
        width, height = width * scale, height * scale
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return base + per_tile * tiles


_JPEG_SCAN_CHARS = 65_536  # base64 characters of a JPEG read for its size (~48 KB: past a typical EXIF block)


def _data_url_image_size(url: str) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG or JPEG in a base64 data URL, from its first bytes; None if unknown."""
    if not url.startswith("data:"):
        return None
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        return None
    try:
        head = base64.b64decode(data[:32])
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(base64.b64decode(data[:_JPEG_SCAN_CHARS]))
    except (binascii.Error, ValueError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's start-of-frame segment, found by walking its segments from the start."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None
