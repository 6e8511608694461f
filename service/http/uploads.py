"""Uploads over HTTP: a file in (the raw body with its Content-Type, streamed), the user's list,
the bytes back (Range as outputs; a signed `?token=` for fal to fetch), and deleting one."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from service.auth.callers import Caller
from service.auth.stream_tokens import StreamTokens
from service.http.dependencies import CallerDependency, provide_caller
from service.http.ranged import serve_stored
from service.realtime.admission import Admission
from service.uploads.form import check_form_length, file_part, is_form
from service.uploads.library import Upload, Uploads
from service.uploads.references import upload_scope

UPLOAD_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox"
"""The bytes came from a user: opened as a document on our origin, they run nothing."""


class UploadList(msgspec.Struct):
    uploads: list[Upload]


class UploadsController(Controller):
    path = "/api/uploads"
    tags = ["uploads"]

    # The body streams into the store and is counted there (MAX_UPLOAD_BYTES): no cap of Litestar's.
    @post("/", status_code=201, request_max_body_size=None,
          summary="Upload a file (the raw body, or a multipart/form-data file field) for use as a job input: "
                  "`upload:<upload_id>`")
    async def create_upload(self, request: Request, caller: CallerDependency,
                            uploads: NamedDependency[Uploads]) -> Upload:
        header = request.headers.get("content-length")
        length = int(header) if header and header.isdigit() else None
        content_type = request.headers.get("content-type")
        if is_form(content_type):
            check_form_length(length, uploads.limits.max_bytes)
            return await uploads.create(caller.user_id, file_part(request.stream(), content_type or "",
                                                                  max_bytes=uploads.limits.max_bytes),
                                        content_length=None)
        return await uploads.create(caller.user_id, request.stream(), content_length=length)

    @get("/", summary="The caller's uploads, newest first")
    async def list_uploads(self, caller: CallerDependency, uploads: NamedDependency[Uploads]) -> UploadList:
        return UploadList(uploads=await uploads.list(caller.user_id))

    @get("/{upload_id:str}", summary="An upload's bytes (Range, ETag; a signed `?token=` opens it without a key)",
         status_code=200)
    async def get_upload(
        self, request: Request, uploads: NamedDependency[Uploads], input_tokens: NamedDependency[StreamTokens],
        admission: NamedDependency[Admission], upload_id: FromPath[str],
        token: Annotated[str | None, QueryParameter(description="a signed input link's token")] = None,
    ) -> Response:
        if token:
            claims = input_tokens.verify(token, upload_scope(upload_id))
            # fal fetches with the link alone; the link's downloads share the upload's places.
            caller = Caller(user_id=claims.user_id, credential=claims.credential)
            holder: str | None = f"link:{upload_scope(upload_id)}"
        else:
            caller = await provide_caller(request, request.app.state.pool)
            holder = None
        stored = await uploads.get(caller.user_id, upload_id)
        upload = stored.upload
        headers = {"Cache-Control": "private, max-age=3600", "Content-Security-Policy": UPLOAD_CSP,
                   "Content-Disposition": f'inline; filename="{upload.upload_id}"'}
        return await serve_stored(
            request, uploads.store, key=stored.store_key, size=upload.size, sha256=upload.sha256,
            content_type=upload.content_type, headers=headers, what="upload",
            admit=lambda: admission.admit(caller, "download", holder=holder),
        )

    @delete("/{upload_id:str}", status_code=204, summary="Delete an upload and its bytes")
    async def delete_upload(self, caller: CallerDependency, uploads: NamedDependency[Uploads],
                            upload_id: FromPath[str]) -> None:
        await uploads.delete(caller.user_id, upload_id)
