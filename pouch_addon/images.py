"""Image input tokens for OpenAI vision models, and image sizes read from `data:` URL headers.

Pure core: no I/O. The rules are OpenAI's vision-guide formulas (see section 4.5 of the wire
formats reference). They are estimates for the budget gate; settlement always uses the
provider's reported usage. When a size is unknown (remote URL, unreadable header) the result is
the largest count the model can bill for one image, so a reservation never undershoots.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass

__all__ = ["bare_model", "has_rule", "KNOWN_DETAILS", "image_tokens", "image_size_from_data_url", "image_size_from_bytes"]

# Tile models: low detail = base; high = base + tiles x per_tile (512-px tiles).
_TILE_RULES: list[tuple[str, int, int]] = [
    # (model prefix, base tokens, tokens per tile); first match wins, so longer names first
    ("gpt-4o-mini", 2833, 5667),
    ("computer-use-preview", 65, 129),
    ("gpt-4o", 85, 170),
    ("chatgpt-4o", 85, 170),
    ("gpt-4.1", 85, 170),
    ("gpt-4.5", 85, 170),
    ("gpt-4-turbo", 85, 170),
    ("gpt-4-vision", 85, 170),
    ("gpt-4-1106-vision", 85, 170),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("gpt-5", 70, 140),
]
# Patch models: 32-px patches capped at 1536, times a multiplier; `detail` has no effect.
_PATCH_RULES: list[tuple[str, float]] = [
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
]
# Models we do not know (other providers, new names) get the gpt-4o tile rule: an
# approximation for the reservation, corrected at settlement.
_DEFAULT_TILE = (85, 170)

_PATCH = 32
_MAX_PATCHES = 1536
_TILE = 512
_FIT = 2048
_SHORT_SIDE = 768
# Max tiles after fit-in-2048 and shortest-side-768: 2 (short side <= 768) x 4 (long <= 2048).
_MAX_TILES = 8


@dataclass(frozen=True)
class _Rule:
    base: int = 0
    per_tile: int = 0
    patch_multiplier: float | None = None


def bare_model(model: str) -> str:
    """Drop provider prefixes (`openai/gpt-4o`) and fine-tune wrappers (`ft:gpt-4o:org::id`).

    Shared with `tokens.encoding_for_model`, so both read a model name the same way.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name.split(":")[1]
    return name


def _rule_for(model: str) -> _Rule:
    name = bare_model(model)
    for prefix, multiplier in _PATCH_RULES:
        if name.startswith(prefix):
            return _Rule(patch_multiplier=multiplier)
    for prefix, base, per_tile in _TILE_RULES:
        if name.startswith(prefix):
            return _Rule(base=base, per_tile=per_tile)
    return _Rule(base=_DEFAULT_TILE[0], per_tile=_DEFAULT_TILE[1])


def has_rule(model: str) -> bool:
    """True when one of OpenAI's published vision rules covers `model` (else the gpt-4o tile rule
    is only a guess, and an image's tokens are not bounded by it)."""
    name = bare_model(model)
    return any(name.startswith(prefix) for prefix, *_ in (*_PATCH_RULES, *_TILE_RULES))


#: `detail` values the rules price; another value (a newer one) may cost more than `high`
KNOWN_DETAILS = (None, "auto", "low", "high")


def _tile_count(width: int, height: int) -> int:
    """Fit inside 2048x2048, shrink so the shortest side is 768 (never enlarge), count 512 tiles."""
    w, h = float(width), float(height)
    if max(w, h) > _FIT:
        scale = _FIT / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > _SHORT_SIDE:
        scale = _SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / _TILE) * math.ceil(h / _TILE)


def _patch_count(width: int, height: int) -> int:
    """OpenAI's patch rule: shrink until at most 1536 whole 32-px patches cover the image."""
    patches = math.ceil(width / _PATCH) * math.ceil(height / _PATCH)
    if patches <= _MAX_PATCHES:
        return patches
    shrink = math.sqrt(_PATCH * _PATCH * _MAX_PATCHES / (width * height))
    cols, rows = width * shrink / _PATCH, height * shrink / _PATCH
    shrink *= min(math.floor(cols) / cols, math.floor(rows) / rows)
    # the shrink lands on whole patches; round away float noise (39.0000001 is 39 patches)
    cols, rows = round(width * shrink / _PATCH, 6), round(height * shrink / _PATCH, 6)
    patches = math.ceil(cols) * math.ceil(rows)
    return min(patches, _MAX_PATCHES)


def image_tokens(model: str, width: int | None, height: int | None, detail: str = "auto") -> int:
    """Input tokens one image costs on `model`; unknown size -> the model's maximum for `detail`.

    `detail="auto"` (or any unknown value) is treated as `high`, the dearer choice, because the
    server picks and we must not under-reserve.
    """
    rule = _rule_for(model)
    size = (width, height) if width and height and width > 0 and height > 0 else None
    if rule.patch_multiplier is not None:
        patches = _patch_count(*size) if size else _MAX_PATCHES
        return math.ceil(patches * rule.patch_multiplier)
    if detail == "low":
        return rule.base
    tiles = _tile_count(*size) if size else _MAX_TILES
    return rule.base + tiles * rule.per_tile


# ---------------------------------------------------------------------------------------------
# Image sizes from headers

_FIRST_TRY_BYTES = 4 * 1024
# JPEG can hide its SOF marker behind a large EXIF/ICC segment; look further, but stay bounded.
_SECOND_TRY_BYTES = 256 * 1024


def image_size_from_data_url(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 `data:` image URL, decoding only its first bytes; else None."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        return None
    for limit in (_FIRST_TRY_BYTES, _SECOND_TRY_BYTES):
        chars = (limit // 3) * 4  # a whole number of base64 quanta
        chunk = "".join(payload[:chars].split())  # tolerate wrapped base64
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            head = base64.b64decode(chunk, validate=False)
        except (binascii.Error, ValueError):
            return None
        size = image_size_from_bytes(head)
        if size is not None or len(payload) <= chars:
            return size
    return None


def image_size_from_bytes(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of a PNG, JPEG, GIF or WEBP file, or None if unreadable."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:  # header cut short
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit width-1, height-1
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # lossless: 14-bit fields after signature
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but don't.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        pos += 2 + length
    return None
