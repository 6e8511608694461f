"""fal's storage for input files, as fal-client uses it (`upload`): a storage token from the REST
API (`POST /storage/auth/token?storage_type=fal-cdn-v3`, `Authorization: Key …`), then the bytes to
the CDN (`POST /files/upload` with `Authorization: <token_type> <token>`), which answers the file's
`access_url`; the file is then served there, as fal's CDN serves it."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post

from .responses import json_answer, not_found, unauthorized

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.params import FromPath

    from .engine import FalEmulator

TOKEN_LIFETIME_S = 3600
MAX_FILE_BYTES = 256 * 1024**2


class CdnFile(msgspec.Struct, frozen=True):
    """One file uploaded to the emulated CDN, as the emulator recorded it."""

    file_id: str
    name: str
    content_type: str
    sha256: str
    lifecycle: str | None
    """The X-Fal-Object-Lifecycle header the upload carried."""
    data: bytes = msgspec.field(default=b"")


class StorageState:
    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}
        self.files: dict[str, CdnFile] = {}
        self.token_requests = 0


def storage_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    storage = emulator.storage

    @post("/storage/auth/token")
    async def storage_token(request: Request[Any, Any, Any]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        if request.query_params.get("storage_type") != "fal-cdn-v3":
            return json_answer(422, {"detail": "storage_type: expected fal-cdn-v3"})
        storage.token_requests += 1
        token = secrets.token_urlsafe(24)
        storage.tokens[token] = expires = time.time() + TOKEN_LIFETIME_S
        return json_answer(200, {"token": token, "token_type": "Bearer", "base_url": emulator.base_url,
                                 "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()})

    @post("/files/upload", request_max_body_size=MAX_FILE_BYTES)
    async def upload_file(request: Request[Any, Any, Any]) -> Response[bytes]:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme != "Bearer" or storage.tokens.get(token.strip(), 0) < time.time():
            return unauthorized()
        data = await request.body()
        file_id, name = secrets.token_hex(8), request.headers.get("x-fal-file-name") or "upload.bin"
        storage.files[file_id] = CdnFile(
            file_id=file_id, name=name, content_type=request.headers.get("content-type") or "application/octet-stream",
            sha256=hashlib.sha256(data).hexdigest(), lifecycle=request.headers.get("x-fal-object-lifecycle"), data=data)
        return json_answer(200, {"access_url": f"{emulator.base_url}/files/{file_id}/{name}"})

    @get("/files/{file_id:str}/{name:str}")
    async def cdn_file(file_id: FromPath[str], name: FromPath[str]) -> Response[bytes]:
        found = storage.files.get(file_id)
        if found is None or found.name != name:
            return not_found()
        return Response(found.data, media_type=found.content_type)

    return [storage_token, upload_file, cdn_file]
