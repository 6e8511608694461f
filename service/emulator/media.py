"""Real media files for fake outputs: PNGs drawn on demand, one small committed H.264 MP4.

Image URLs carry everything needed to redraw the image (size and seed), so the media routes are
stateless and an image stays reachable even after the emulator forgets the request.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

# Re-exported: the one list of video models is the catalog's.
from service.jobs.catalog import DEFAULT_IMAGE_SIZE, IMAGE_SIZE_PRESETS
from service.jobs.catalog import is_video_model as is_video_model

MAX_SIDE = 2048
MAX_IMAGES = 8


SAMPLE_MP4_NAME = "sample.mp4"

DEFAULT_VIDEO_S = 5.0
"""Kling's default `duration` ("5"), for a video model asked for none."""
MAX_VIDEO_S = 60.0
_SECONDS = re.compile(r"^\s*(\d{1,3}(?:\.\d{1,3})?)\s*s?\s*$")


def resolve_video_seconds(value: object) -> float:
    """`duration` as fal's video models take it: "5" (Kling), "8s" (Veo), or a number; ValueError
    for anything else or outside 1 to MAX_VIDEO_S seconds."""
    if value is None:
        return DEFAULT_VIDEO_S
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _SECONDS.match(value)):
        seconds = float(match[1])
    if seconds is None or not 1 <= seconds <= MAX_VIDEO_S:
        raise ValueError(f"duration must be a number of seconds from 1 to {MAX_VIDEO_S:g}, like \"5\" or \"8s\"")
    return seconds


def video_path(seconds: float) -> str:
    """The media path segment that carries a video's length, so the media route stays stateless."""
    return f"{seconds:g}s"


def parse_video_path(segment: str) -> float | None:
    """video_path's inverse; None for anything that is not a length it could have written."""
    if not segment.endswith("s"):
        return None
    try:
        return resolve_video_seconds(segment)
    except ValueError:
        return None


def _side(size: dict[object, object], name: str) -> int:
    side = size.get(name)
    if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= MAX_SIDE:
        raise ValueError(f"image_size.{name} must be an integer between 1 and {MAX_SIDE}")
    return side


def resolve_image_size(value: object) -> tuple[int, int]:
    """`image_size` as fal accepts it: a preset name or {"width", "height"}; ValueError otherwise."""
    if value is None:
        return IMAGE_SIZE_PRESETS[DEFAULT_IMAGE_SIZE]
    if isinstance(value, str):
        if value not in IMAGE_SIZE_PRESETS:
            raise ValueError(f"unknown image_size preset {value!r}; expected one of {sorted(IMAGE_SIZE_PRESETS)}")
        return IMAGE_SIZE_PRESETS[value]
    if isinstance(value, dict):
        return _side(value, "width"), _side(value, "height")
    raise ValueError("image_size must be a preset name or an object with width and height")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


_ROTATIONS = [bytes(range(offset, 256)) + bytes(range(offset)) for offset in range(128)]
"""translate() tables adding `offset` to every byte (mod 256), built once."""


_DRAWN: OrderedDict[tuple[int, int], bytes] = OrderedDict()
_DRAWN_SIZES_KEPT = 16


def is_drawn(width: int, height: int) -> bool:
    """Whether an image of this size costs only its palette now (no drawing: fine on the event loop)."""
    return (width, height) in _DRAWN


def _gradient_idat(width: int, height: int) -> bytes:
    """The compressed pixels of a diagonal gradient of palette indices: the costly part of an image,
    the same for every seed, so drawn once per size (the last 16 kept)."""
    key = (width, height)
    if key in _DRAWN:
        _DRAWN.move_to_end(key)
        return _DRAWN[key]
    _DRAWN[key] = idat = _draw_gradient(width, height)
    if len(_DRAWN) > _DRAWN_SIZES_KEPT:
        _DRAWN.popitem(last=False)
    return idat


def _draw_gradient(width: int, height: int) -> bytes:
    base = bytes((x * 255 // max(width - 1, 1)) // 2 for x in range(width))
    raw = bytearray()
    for y in range(height):
        offset = (y * 255 // max(height - 1, 1)) // 2
        # translate() shifts the whole row's indices in C; the leading 0 is filter type "None".
        raw += b"\x00" + base.translate(_ROTATIONS[offset])
    return zlib.compress(bytes(raw), 6)


def png_bytes(width: int, height: int, seed: int) -> bytes:
    """An indexed-colour PNG whose palette comes from the seed, so different seeds look different;
    a new seed costs a 768-byte palette, not a new image (see _gradient_idat)."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError("image side out of range")
    r0, g0, b0 = seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF
    palette = b"".join(bytes(((r0 + i) & 0xFF, (g0 + i * 2 // 3) & 0xFF, (b0 + 255 - i) & 0xFF)) for i in range(256))
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", palette)
            + _chunk(b"IDAT", _gradient_idat(width, height)) + _chunk(b"IEND", b""))


@lru_cache(maxsize=1)
def sample_mp4() -> bytes:
    return (Path(__file__).parent / "assets" / SAMPLE_MP4_NAME).read_bytes()


def video_size(size: int | None) -> int:
    return len(sample_mp4()) if size is None else size


@lru_cache(maxsize=1)
def _repeated_sample() -> bytes:
    sample = sample_mp4()
    return sample * (VIDEO_SLICE_MAX // len(sample) + 2)


VIDEO_SLICE_MAX = 1024 * 1024


def video_slice(start: int, end: int) -> bytes:
    """Bytes `start` to `end` (at most VIDEO_SLICE_MAX apart) of the sample repeated end to end:
    a video of any size, made on the fly, so even a very large output costs the emulator no memory."""
    if end - start > VIDEO_SLICE_MAX:
        raise ValueError("video slice too long")
    offset = start % len(sample_mp4())
    return _repeated_sample()[offset:offset + end - start]
