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

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from service.auth.stream_tokens import StreamTokens
from service.errors import Gone, NotFound
from service.http.dependencies import CallerDependency, PoolDependency, provide_caller
from service.http.events import stream_caller
from service.http.ranged import serve_stored
from service.jobs.media import output_path
from service.outputs.access import (
    MediaAccess,
    OutputRecord,
    output_scope,
)
from service.outputs.sources import SourcePolicy
from service.realtime.admission import Admission

CACHE_CONTROL = "private, max-age=31536000, immutable"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4",
               "video/webm": "webm", "audio/mpeg": "mp3", "audio/wav": "wav"}


class OutputLink(msgspec.Struct):
    url: str
    """The output's URL with a signed `?token=` that opens this output only."""
    expires_at: int


def _file_name(record: OutputRecord) -> str:
    return f"{record.request_id}-{record.index}.{_EXTENSIONS.get(record.content_type or '', 'bin')}"


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
        headers = {
            "Cache-Control": CACHE_CONTROL,
            # The bytes came from outside: opened as a document on our origin (an SVG, say), they
            # run no script (nosniff comes with every answer, from the security headers).
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; sandbox",
            "Content-Disposition": f'{"attachment" if download else "inline"}; filename="{_file_name(record)}"',
        }
        holder = f"link:{output_scope(request_id, index)}" if token else None
        return await serve_stored(
            request, media.store, key=record.store_key, size=record.size, sha256=record.sha256 or "",
            content_type=record.content_type, headers=headers, what="output",
            admit=lambda: admission.admit(caller, "download", holder=holder),
        )

    @post("/{request_id:str}/outputs/{index:int}/link", status_code=200,
          summary="A short-lived signed URL for one output (for <img>/<video> tags and sharing)")
    async def output_link(
        self, caller: CallerDependency, tokens: NamedDependency[StreamTokens], media: NamedDependency[MediaAccess],
        request_id: FromPath[str], index: FromPath[int],
    ) -> OutputLink:
        await media.output(caller.user_id, request_id, index)
        token, expires_at = tokens.issue(caller, output_scope(request_id, index))
        return OutputLink(url=f"{output_path(request_id, index)}?token={token}", expires_at=expires_at)

