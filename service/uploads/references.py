"""Job inputs that name uploads: every string `upload:<upload_id>` in a job's input is replaced, at
submit, by a URL fal can fetch (the job keeps the reference). A reference to an upload that is
missing, deleted or another user's is refused before anything reaches fal, naming the field."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from service.auth.callers import Caller
from service.errors import NotFound, Unprocessable

if TYPE_CHECKING:
    import asyncpg

    from service.auth.stream_tokens import StreamTokens
    from service.fal.cdn import FalCdn
    from service.uploads.library import StoredUpload, Uploads

CDN_REUSE_MARGIN_S = 24 * 3600.0
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
              "video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm", "audio/wav": ".wav",
              "audio/mpeg": ".mp3"}
REFERENCE = re.compile(r"^upload:([A-Za-z0-9_-]{1,64})$")
LINK_CREDENTIAL = "upload-input"
"""The credential a signed input link carries: made for fal at submit, by no key or session."""


def upload_scope(upload_id: str) -> str:
    """The scope of a signed token that opens this one upload and nothing else."""
    return f"upload:{upload_id}"


def references(value: Any, path: str = "input") -> list[tuple[str, str]]:
    """(field path, upload id) for every `upload:<id>` string in `value`, in order."""
    if isinstance(value, str):
        match = REFERENCE.match(value)
        return [(path, match.group(1))] if match else []
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += references(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += references(item, f"{path}[{index}]")
    return found


def _replaced(value: Any, urls: dict[str, str]) -> Any:
    if isinstance(value, str):
        match = REFERENCE.match(value)
        return urls[match.group(1)] if match else value
    if isinstance(value, dict):
        return {key: _replaced(item, urls) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, urls) for item in value]
    return value


class Delivery(Protocol):
    async def url(self, stored: StoredUpload) -> str:
        """A URL fal can fetch the upload's bytes from."""
        ...


class SignedLinks:
    """`INPUT_DELIVERY=signed_url`: a short-lived signed link to our copy; fal fetches it from us."""

    def __init__(self, tokens: StreamTokens, public_url: str | None) -> None:
        self._tokens = tokens
        self._public_url = public_url

    async def url(self, stored: StoredUpload) -> str:
        if self._public_url is None:
            raise Unprocessable("input: uploads are delivered as signed links to this service, which needs a public "
                                "APP_URL that fal can reach (or INPUT_DELIVERY=fal_cdn)")
        token, _ = self._tokens.issue(Caller(user_id=stored.user_id, credential=LINK_CREDENTIAL),
                                      upload_scope(stored.upload.upload_id))
        return f"{self._public_url}/api/uploads/{stored.upload.upload_id}?token={token}"


class FalCdnCopies:
    """`INPUT_DELIVERY=fal_cdn`: the file goes to fal's CDN as fal's own clients upload it; the CDN's
    URL is kept per upload and reused while fal keeps the copy (FAL_MEDIA_EXPIRY_S, else 7 days)."""

    def __init__(self, uploads: Uploads, cdn: FalCdn, *, lifetime_s: int) -> None:
        self._uploads = uploads
        self._cdn = cdn
        self._lifetime_s = lifetime_s

    async def url(self, stored: StoredUpload) -> str:
        now = datetime.now(UTC)
        # Reused only with room left for the job to wait in fal's queue and run.
        margin = timedelta(seconds=min(CDN_REUSE_MARGIN_S, self._lifetime_s / 2))
        if stored.cdn_url is not None and stored.cdn_expires_at is not None and stored.cdn_expires_at - margin > now:
            return stored.cdn_url
        upload = stored.upload
        pieces = await self._uploads.store.read(stored.store_key, 0, upload.size)
        try:
            url = await self._cdn.upload(pieces, size=upload.size, content_type=upload.content_type,
                                         file_name=f"{upload.upload_id}{EXTENSIONS.get(upload.content_type, '')}")
        finally:
            await pieces.aclose()
        await self._uploads.remember_cdn_copy(upload.upload_id, url, now + timedelta(seconds=self._lifetime_s))
        return url


class ResolvedInput(msgspec.Struct, frozen=True):
    input: dict[str, Any]
    """What fal is sent: each reference replaced by its URL."""
    upload_ids: list[str]


class UploadInputs:
    def __init__(self, uploads: Uploads, delivery: Delivery) -> None:
        self._uploads = uploads
        self._delivery = delivery

    async def resolve(self, user_id: str, job_input: dict[str, Any]) -> ResolvedInput:
        found = references(job_input)
        if not found:
            return ResolvedInput(input=job_input, upload_ids=[])
        urls: dict[str, str] = {}
        for path, upload_id in found:
            if upload_id in urls:
                continue
            try:
                stored = await self._uploads.get(user_id, upload_id)
            except NotFound:
                raise Unprocessable(f"{path}: upload {upload_id!r} is not one of yours (missing, deleted or another "
                                    "user's); upload the file with POST /api/uploads and name its upload_id") from None
            urls[upload_id] = await self._delivery.url(stored)
        return ResolvedInput(input=_replaced(job_input, urls), upload_ids=list(urls))


async def record_uses(connection: asyncpg.Connection, request_id: str, upload_ids: list[str]) -> None:
    """Which uploads a job uses: retention keeps them while the job is open."""
    if upload_ids:
        await connection.execute(
            "INSERT INTO fal_job_uploads (request_id, upload_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            request_id, upload_ids)
