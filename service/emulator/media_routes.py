"""The media routes: the PNGs and MP4s an output's URLs point at, served as fal's CDN serves them,
with the faults the URL names (see `outputs.media_query`): expired, failing, or stalling."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from litestar.response import Stream

from .media import MAX_SIDE, is_drawn, parse_video_path, png_bytes, video_size, video_slice
from .mp4 import mp4_of
from .responses import json_answer, not_found

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from litestar.handlers import HTTPRouteHandler
    from litestar.params import FromPath

    from .engine import FalEmulator

_IMAGE_NAME = re.compile(r"^(\d{1,30})\.png$")
_IMAGE_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_MEDIA_CHUNK = 1024 * 1024
_FIRST_BYTES = 65536


def media_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    # Drawing a large PNG is real CPU work: never on the event loop, and at most two at a time,
    # so that anyone fetching images cannot stall the service the emulator is mounted in.
    renders = asyncio.Semaphore(2)

    @get("/media/image/{size:str}/{name:str}")
    async def image(request: Request[Any, Any, Any], size: FromPath[str], name: FromPath[str]) -> Response[bytes] | Stream:
        emulator.media_fetches.append(request.url.path)
        drawing = _image_drawing(size, name)
        if drawing is None:
            return not_found()
        if is_drawn(drawing[0], drawing[1]):
            data = png_bytes(*drawing)  # a palette's worth of work: a thread hop would cost more
        else:
            async with renders:
                data = await asyncio.to_thread(png_bytes, *drawing)
        return _media(request, len(data), "image/png", lambda start, end: data[start:end])

    @get("/media/video/{name:str}", sync_to_thread=False)
    def video(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes] | Stream:
        emulator.media_fetches.append(request.url.path)
        if not name.endswith(".mp4"):
            return not_found()
        size = video_size(_int_param(request, "bytes"))
        return _media(request, size, "video/mp4", video_slice)

    @get("/media/video/{length:str}/{name:str}", sync_to_thread=False)
    def video_of_length(request: Request[Any, Any, Any], length: FromPath[str], name: FromPath[str]) -> Response[bytes] | Stream:
        emulator.media_fetches.append(request.url.path)
        seconds = parse_video_path(length)
        if seconds is None or not name.endswith(".mp4"):
            return not_found()
        data = mp4_of(seconds)
        return _media(request, len(data), "video/mp4", lambda start, end: data[start:end])

    return [image, video, video_of_length]


def _image_drawing(size: str, name: str) -> tuple[int, int, int] | None:
    """'{width}x{height}', '{seed}.png' -> (width, height, seed); None for anything else."""
    size_match, name_match = _IMAGE_SIZE.match(size), _IMAGE_NAME.match(name)
    if not size_match or not name_match:
        return None
    width, height = int(size_match[1]), int(size_match[2])
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return None
    return width, height, int(name_match[1])


def _int_param(request: Request[Any, Any, Any], name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True)
class _FaultWindow:
    """Where a fetch stands among its URL's media faults, all counted from the output's completion."""

    age_ms: float
    ttl_ms: int | None
    fail_ms: int
    stall_ms: int
    stall_until_s: float

    @classmethod
    def of(cls, request: Request[Any, Any, Any]) -> _FaultWindow:
        completed_ms = _int_param(request, "t")
        age_ms = time.time() * 1000 - completed_ms if completed_ms is not None else 0.0
        stall_ms = _int_param(request, "stall") or 0
        stall_until_s = (completed_ms + stall_ms) / 1000 if completed_ms else 0.0
        return cls(age_ms, _int_param(request, "ttl"), _int_param(request, "fail") or 0, stall_ms, stall_until_s)


def _media(request: Request[Any, Any, Any], size: int, media_type: str,
           slice_of: Callable[[int, int], bytes]) -> Response[bytes] | Stream:
    """A media file as fal's CDN serves it, with the faults its URL names (see `media_query`)."""
    window = _FaultWindow.of(request)
    if window.ttl_ms is not None and window.age_ms >= window.ttl_ms:
        return json_answer(404, {"detail": "File not found (expired)"})
    if window.age_ms < window.fail_ms:
        return json_answer(503, {"detail": "Media temporarily unavailable (emulated)"})
    stall_until_s = window.stall_until_s if window.age_ms < window.stall_ms else None
    return Stream(_media_body(size, slice_of, stall_until_s), media_type=media_type,
                  headers={"Cache-Control": "public, max-age=86400", "Content-Length": str(size)})


async def _media_body(size: int, slice_of: Callable[[int, int], bytes], stall_until_s: float | None) -> AsyncIterator[bytes]:
    head = min(size, _FIRST_BYTES)
    yield slice_of(0, head)
    if stall_until_s is not None:
        # The first bytes went out; a stalled fetch now hears nothing until the window ends.
        await asyncio.sleep(max(0.0, stall_until_s - time.time()))
    for start in range(head, size, _MEDIA_CHUNK):
        yield slice_of(start, min(start + _MEDIA_CHUNK, size))
