"""Serving a stored object over HTTP: ETag, conditional requests, one `Range`, and a download's
place (admission) held until the last byte is sent. Outputs and uploads are served the same way."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from litestar import Request, Response
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from service.http.errors import error_response
from service.outputs.access import RangeNotSatisfiable, parse_range
from service.outputs.store import MediaStore
from service.realtime.admission import Ticket


class AdmittedDownload(Stream):
    """An object's bytes, holding the download's place until the response ends, however it ends."""

    __slots__ = ("_ticket",)

    def __init__(self, pieces: AsyncGenerator[bytes, None], ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(pieces, **kwargs)
        self._ticket = ticket

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIApp:  # type: ignore[override]
        return _Releasing(super().to_asgi_response(*args, **kwargs), self.iterator, self._ticket)  # type: ignore[arg-type]


class _Releasing:
    def __init__(self, response: ASGIApp, pieces: AsyncGenerator[bytes, None], ticket: Ticket) -> None:
        self._response = response
        self._pieces = pieces
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:
            self._ticket.release()
            # A client gone mid-body cancels the sending and leaves the pieces suspended: the
            # store's stream is closed here rather than whenever the garbage collector gets to it.
            await self._pieces.aclose()


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [value.strip().removeprefix("W/") for value in header.split(",")]
    return "*" in candidates or etag in candidates


async def serve_stored(
    request: Request, store: MediaStore, *, key: str, size: int, sha256: str, content_type: str | None,
    headers: dict[str, str], admit: Callable[[], Ticket], what: str,
) -> Response:
    """`key`'s bytes (all, or the one range asked for), with `headers`; the ETag is the sha256."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", **headers}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(content=b"", status_code=304, headers=headers)
    if_match = request.headers.get("if-match")
    if if_match and not _matches(if_match, etag):
        return error_response(412, "precondition_failed", f"if-match: the {what}'s ETag is its sha256")
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range and if_range.strip() != etag:
        range_header = None  # changed since the client's copy (never, for us): send it all
    try:
        wanted = parse_range(range_header, size)
    except RangeNotSatisfiable:
        return error_response(416, "range_not_satisfiable", f"range: {range_header!r} is outside the {what}'s {size} bytes",
                              {"Content-Range": f"bytes */{size}", **headers})
    start, end = (wanted.start, wanted.end) if wanted else (0, size)
    ticket = admit()
    try:
        body = await store.read(key, start, end) if end > start else _empty()
    except BaseException:
        ticket.release()
        raise
    headers["Content-Length"] = str(end - start)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return AdmittedDownload(body, ticket, status_code=206 if wanted else 200, headers=headers,
                            media_type=content_type or "application/octet-stream")


async def _empty() -> AsyncGenerator[bytes, None]:
    if False:
        yield b""
