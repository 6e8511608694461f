"""HTTP face of the emulator: fal's queue API, the JWKS, and the media it generates.

Queue routes are one catch-all per method, parsed by hand: model ids have any number of path
segments (fal-ai/flux/dev, workflows/owner/app/...), which a route template cannot express.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post, put
from litestar.params import FromPath
from litestar.response import Stream

from .engine import AppRef, FalEmulator, QueueError, split_model_path
from .faults import FaultOptionsError
from .media import MAX_SIDE, is_drawn, png_bytes, video_size, video_slice

_TRUE = {"1", "true", "yes", "on"}
_IMAGE_NAME = re.compile(r"^(\d{1,30})\.png$")
_IMAGE_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def _json(status_code: int, body: Any) -> Response[bytes]:
    # msgspec keeps integers exact (seeds above 2**53) and omits UNSET members.
    return Response(content=msgspec.json.encode(body), status_code=status_code, media_type="application/json")


def _queue_target(path: str) -> tuple[AppRef, str, list[str]] | None:
    """'[ns/]owner/app/requests/{id}[/rest...]' -> (app, request id, rest)."""
    split = split_model_path(path)
    if split is None:
        return None
    app_ref, model_id = split
    parts = model_id.split("/")
    offset = 3 if app_ref.namespace else 2
    if len(parts) < offset + 2 or parts[offset] != "requests":
        return None
    return app_ref, parts[offset + 1], parts[offset + 2 :]


def create_emulator_app(emulator: FalEmulator) -> Litestar:
    def unauthorized() -> Response[bytes]:
        return _json(401, {"detail": "Unauthorized: send 'Authorization: Key <FAL_KEY>' with a valid key"})

    @get("/.well-known/jwks.json", sync_to_thread=False)
    def jwks() -> Response[bytes]:
        if not emulator.jwks_available:
            return _json(503, {"detail": "JWKS temporarily unavailable (emulated)"})
        return _json(200, emulator.jwks())

    # Drawing a 2048x2048 PNG takes ~100 ms of CPU: never on the event loop, and at most two at a
    # time, so that anyone fetching images cannot stall the service the emulator is mounted in.
    renders = asyncio.Semaphore(2)

    @get("/media/image/{size:str}/{name:str}")
    async def image(request: Request[Any, Any, Any], size: FromPath[str], name: FromPath[str]) -> Response[bytes] | Stream:
        emulator.media_fetches.append(request.url.path)
        size_match, name_match = _IMAGE_SIZE.match(size), _IMAGE_NAME.match(name)
        if not size_match or not name_match:
            return _json(404, {"detail": "Not Found"})
        width, height = int(size_match[1]), int(size_match[2])
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            return _json(404, {"detail": "Not Found"})
        seed = int(name_match[1])
        if is_drawn(width, height):
            data = png_bytes(width, height, seed)  # a palette's worth of work: a thread hop would cost more
        else:
            async with renders:
                data = await asyncio.to_thread(png_bytes, width, height, seed)
        return _media(request, len(data), "image/png", lambda start, end: data[start:end])

    @get("/media/video/{name:str}", sync_to_thread=False)
    def video(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes] | Stream:
        emulator.media_fetches.append(request.url.path)
        if not name.endswith(".mp4"):
            return _json(404, {"detail": "Not Found"})
        size = video_size(_int_param(request, "bytes"))
        return _media(request, size, "video/mp4", video_slice)

    @post("/{path:path}")
    async def submit(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        raw = await request.body()
        try:
            model_input = msgspec.json.decode(raw) if raw.strip() else {}
        except msgspec.DecodeError as exc:
            return _json(422, {"detail": f"Request body is not valid JSON: {exc}"})
        if not isinstance(model_input, dict):
            return _json(422, {"detail": "Request body must be a JSON object"})
        try:
            answer = await emulator.submit(path, model_input, request.query_params.get("fal_webhook"),
                                           request.headers.get("x-fal-object-lifecycle-preference"))
        except FaultOptionsError as exc:
            return _json(422, {"detail": exc.detail()})
        except QueueError as exc:
            return _json(exc.status_code, exc.body)
        return _json(200, answer)

    @get("/{path:path}")
    async def queue_get(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes] | Stream:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        target = _queue_target(path)
        if target is None:
            return _json(404, {"detail": "Not Found"})
        app_ref, request_id, rest = target
        with_logs = (request.query_params.get("logs") or "").lower() in _TRUE
        try:
            if rest == [] or rest == ["response"]:
                return _json(*emulator.result(app_ref, request_id))
            if rest == ["status"]:
                if emulator.stalls(app_ref, request_id):
                    await emulator.wait_closed()  # no answer: the caller's time-out decides
                return _json(*emulator.status(app_ref, request_id, with_logs=with_logs))
            if rest == ["status", "stream"]:
                emulator.status(app_ref, request_id, with_logs=with_logs)  # 404 before the stream opens
                return Stream(
                    _status_events(emulator, app_ref, request_id, with_logs),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
        except QueueError as exc:
            return _json(exc.status_code, exc.body)
        return _json(404, {"detail": "Not Found"})

    @put("/{path:path}")
    async def cancel(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        target = _queue_target(path)
        if target is None or target[2] != ["cancel"]:
            return _json(404, {"detail": "Not Found"})
        return _json(*emulator.cancel(target[0], target[1]))

    return Litestar(
        route_handlers=[jwks, image, video, submit, queue_get, cancel],
        # Mounted inside another app, the outer app owns the emulator and closes it; aclose is idempotent.
        on_shutdown=[emulator.aclose],
        openapi_config=None,
        # Litestar's default logging config would replace the root handler of the app it is
        # mounted in, turning the service's JSON log lines into plain text without their fields.
        logging_config=None,
    )


_MEDIA_CHUNK = 1024 * 1024


def _int_param(request: Request[Any, Any, Any], name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value is not None and value.isdigit() else None


def _media(request: Request[Any, Any, Any], size: int, media_type: str,
           slice_of: Callable[[int, int], bytes]) -> Response[bytes] | Stream:
    """A media file as fal's CDN serves it, with the faults its URL names (see `media_query`)."""
    completed_ms = _int_param(request, "t")
    age_ms = time.time() * 1000 - completed_ms if completed_ms is not None else 0.0
    ttl_ms = _int_param(request, "ttl")
    if ttl_ms is not None and age_ms >= ttl_ms:
        return _json(404, {"detail": "File not found (expired)"})
    if age_ms < (_int_param(request, "fail") or 0):
        return _json(503, {"detail": "Media temporarily unavailable (emulated)"})
    stall_until_s = (completed_ms + (_int_param(request, "stall") or 0)) / 1000 if completed_ms else 0.0

    stalled = age_ms < (_int_param(request, "stall") or 0)

    async def body() -> AsyncIterator[bytes]:
        head = min(size, 65536)
        yield slice_of(0, head)
        if stalled:
            # The first 64 KiB went out; a stalled fetch now hears nothing until the window ends.
            await asyncio.sleep(max(0.0, stall_until_s - time.time()))
        for start in range(head, size, _MEDIA_CHUNK):
            yield slice_of(start, min(start + _MEDIA_CHUNK, size))

    return Stream(body(), media_type=media_type,
                  headers={"Cache-Control": "public, max-age=86400", "Content-Length": str(size)})


class StreamBroken(Exception):
    """Raised inside a status stream to cut its connection mid-body (fal_emulator.stream_breaks)."""


async def _status_events(emulator: FalEmulator, app_ref: AppRef, request_id: str, with_logs: bool) -> AsyncIterator[bytes]:
    """SSE: one `data:` event per visible change, a `:` heartbeat when quiet, closed after COMPLETED."""
    last: bytes | None = None
    req = emulator.requests[request_id]
    breaks = req.stream_breaks > 0
    req.stream_breaks -= breaks
    while not emulator.closed and not req.forgotten:
        changed = emulator.changed()  # taken before reading state so no change slips between
        _, view = emulator.current_status(req, with_logs=with_logs)
        encoded = msgspec.json.encode(view)
        if encoded != last:
            if last is not None and breaks:
                raise StreamBroken(f"status stream of {request_id} cut (fal_emulator.stream_breaks)")
            yield b"data: " + encoded + b"\n\n"
            last = encoded
        while req.faults.stream_stall and not emulator.closed:
            await emulator.changed().wait()  # silent until the client gives up or the emulator closes
        if view.status == "COMPLETED":
            return
        try:
            await asyncio.wait_for(changed.wait(), emulator.heartbeat_s)
        except TimeoutError:
            yield b": heartbeat\n\n"
