"""Outputs over HTTP: our durable copy of each media file (Range, ETag, conditional requests),
signed links for `<img>`/`<video>` tags and sharing, and deleting a job's media.

A download holds a place (MAX_DOWNLOADS_PER_USER) until its last byte is sent or its client is
gone: a client that opens many and reads none would otherwise pin a piece of each in memory. A
signed link carries no credential of whoever uses it, so its downloads take the places of the
output it opens: a link's holders cannot use up the owner's own downloads, the links to one output
share one budget however many are made, and nothing rests on client addresses, which proxies and
NAT share and an attacker can multiply.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from service.auth.stream_tokens import StreamTokens
from service.errors import Gone, NotFound
from service.http.dependencies import CallerDependency, PoolDependency, provide_caller
from service.http.errors import error_response
from service.http.events import stream_caller
from service.jobs.media import output_path
from service.outputs.access import (
    MediaAccess,
    OutputRecord,
    RangeNotSatisfiable,
    output_scope,
    parse_range,
)
from service.outputs.sources import SourcePolicy
from service.realtime.admission import Admission, Ticket

CACHE_CONTROL = "private, max-age=31536000, immutable"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4",
               "video/webm": "webm", "audio/mpeg": "mp3", "audio/wav": "wav"}


class OutputLink(msgspec.Struct):
    url: str
    """The output's URL with a signed `?token=` that opens this output only."""
    expires_at: int


def _etag(record: OutputRecord) -> str:
    return f'"{record.sha256}"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [value.strip().removeprefix("W/") for value in header.split(",")]
    return "*" in candidates or etag in candidates


def _file_name(record: OutputRecord) -> str:
    return f"{record.request_id}-{record.index}.{_EXTENSIONS.get(record.content_type or '', 'bin')}"


class AdmittedDownload(Stream):
    """An output's bytes, holding the download's place until the response ends, however it ends."""

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


class OutputsController(Controller):
    path = "/api/jobs"
    tags = ["outputs"]

    @get("/{request_id:str}/outputs/{index:int}", summary="One output: our stored copy, or a redirect to fal's until stored",
         status_code=200)
    async def get_output(
        self, request: Request, pool: PoolDependency, tokens: NamedDependency[StreamTokens],
        media: NamedDependency[MediaAccess], media_policy: NamedDependency[SourcePolicy],
        admission: NamedDependency[Admission], request_id: FromPath[str], index: FromPath[int],
        token: Annotated[str | None, QueryParameter(description="a signed link's token (POST …/outputs/{n}/link)")] = None,
        download: Annotated[bool, QueryParameter(description="serve as an attachment (a download)")] = False,
    ) -> Response:
        if token:
            caller = await stream_caller(request, pool, tokens, output_scope(request_id, index), token)
        else:
            caller = await provide_caller(request, pool)
        record = await media.output(caller.user_id, request_id, index)
        if record.status == "deleted":
            raise Gone(f"output {index} of job {request_id!r} was deleted with its job")
        if record.status != "stored" or record.store_key is None or record.size is None:
            if media_policy.allows_redirect(record.source_url):
                # Not ours yet (or never: too large, say): fal's copy, while fal keeps it.
                return Redirect(record.source_url, status_code=307, headers={"Cache-Control": "no-store"})
            raise NotFound(f"output {index} of job {request_id!r} is {record.status}: {record.last_error}")
        etag = _etag(record)
        headers = {
            "ETag": etag, "Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes",
            # The bytes came from outside: opened as a document on our origin (an SVG, say), they
            # run no script (nosniff comes with every answer, from the security headers).
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; sandbox",
            "Content-Disposition": f'{"attachment" if download else "inline"}; filename="{_file_name(record)}"',
        }
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(content=b"", status_code=304, headers=headers)
        if_match = request.headers.get("if-match")
        if if_match and not _matches(if_match, etag):
            return error_response(412, "precondition_failed", "if-match: the output's ETag is its sha256")
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range and if_range.strip() != etag:
            range_header = None  # changed since the client's copy (never, for us): send it all
        try:
            wanted = parse_range(range_header, record.size)
        except RangeNotSatisfiable:
            return error_response(416, "range_not_satisfiable",
                                  f"range: {range_header!r} is outside the output's {record.size} bytes",
                                  {"Content-Range": f"bytes */{record.size}", **headers})
        start, end = (wanted.start, wanted.end) if wanted else (0, record.size)
        ticket = admission.admit(caller, "download", holder=f"link:{output_scope(request_id, index)}" if token else None)
        try:
            body = await media.store.read(record.store_key, start, end) if end > start else _empty()
        except BaseException:
            ticket.release()
            raise
        headers["Content-Length"] = str(end - start)
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}"
        return AdmittedDownload(body, ticket, status_code=206 if wanted else 200, headers=headers,
                                media_type=record.content_type or "application/octet-stream")

    @post("/{request_id:str}/outputs/{index:int}/link", status_code=200,
          summary="A short-lived signed URL for one output (for <img>/<video> tags and sharing)")
    async def output_link(
        self, caller: CallerDependency, tokens: NamedDependency[StreamTokens], media: NamedDependency[MediaAccess],
        request_id: FromPath[str], index: FromPath[int],
    ) -> OutputLink:
        await media.output(caller.user_id, request_id, index)
        token, expires_at = tokens.issue(caller, output_scope(request_id, index))
        return OutputLink(url=f"{output_path(request_id, index)}?token={token}", expires_at=expires_at)


async def _empty() -> AsyncGenerator[bytes, None]:
    if False:
        yield b""
