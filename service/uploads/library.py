"""A user's uploads: taking one in (intake.py), listing, reading, deleting, and the retention the
sweep applies. One row per (user, sha256): the same file twice is the first upload again, its
expiry renewed, and the second copy's bytes are dropped."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from service.errors import NotFound
from service.uploads.intake import Budget, CountedBody, UploadLimits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from service.outputs.store import MediaStore

log = logging.getLogger(__name__)

UPLOADS_PREFIX = "uploads/"
"""Where uploads live in the store (`uploads/<user id>/<upload id>`)."""
DB_TIMEOUT_S = 10.0
RETENTION_BATCH = 500
"""Expired uploads one sweep removes at most (the next sweep takes the rest)."""
LIST_LIMIT = 200
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class Upload(msgspec.Struct, frozen=True):
    upload_id: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    created_at: datetime
    expires_at: datetime


class StoredUpload(msgspec.Struct, frozen=True):
    upload: Upload
    user_id: str
    store_key: str
    cdn_url: str | None = None
    cdn_expires_at: datetime | None = None


_COLUMNS = "upload_id, content_type, size, sha256, width, height, created_at, expires_at"

_INSERT = f"""
INSERT INTO fal_uploads (upload_id, user_id, sha256, content_type, size, width, height, store_key, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(days => $9))
ON CONFLICT (user_id, sha256) DO UPDATE SET expires_at = EXCLUDED.expires_at
RETURNING {_COLUMNS}, store_key, (xmax = 0) AS inserted
"""

_SPEND = """
INSERT INTO fal_upload_usage AS u (user_id, day, bytes) VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2)
ON CONFLICT (user_id, day) DO UPDATE SET bytes = u.bytes + EXCLUDED.bytes
WHERE u.bytes + EXCLUDED.bytes <= $3
RETURNING bytes
"""

_EXPIRED = """
DELETE FROM fal_uploads WHERE upload_id IN (
    SELECT u.upload_id FROM fal_uploads u
    WHERE u.expires_at < now() AND NOT EXISTS (
        SELECT 1 FROM fal_job_uploads ju JOIN fal_jobs j ON j.request_id = ju.request_id
        WHERE ju.upload_id = u.upload_id AND j.status IN ('pending', 'in_progress'))
    ORDER BY u.expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING store_key
"""


def check_upload_id(upload_id: str) -> None:
    if not UPLOAD_ID.match(upload_id):
        raise NotFound(f"upload {upload_id!r} not found")


def seconds_to_next_day(now: datetime) -> int:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


class Uploads:
    def __init__(self, pool: asyncpg.Pool, store: MediaStore, limits: UploadLimits) -> None:
        self._pool = pool
        self.store = store
        self.limits = limits

    async def _budget(self, user_id: str) -> Budget:
        used = await self._pool.fetchval(
            "SELECT bytes FROM fal_upload_usage WHERE user_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
            user_id, timeout=DB_TIMEOUT_S) or 0
        return Budget(max_bytes=self.limits.max_bytes, quota_left=max(0, self.limits.max_bytes_per_day - used),
                      retry_after_s=seconds_to_next_day(datetime.now(UTC)))

    async def create(self, user_id: str, chunks: AsyncIterator[bytes], *, content_length: int | None) -> Upload:
        """Take a file in: 413 past the size limit, 429 past the day's quota, 415 for a type not
        accepted, 422 for an image too large (all before anything is kept)."""
        budget = await self._budget(user_id)
        if content_length is not None:
            budget.check(content_length, announced=True)
        body = CountedBody(chunks, budget)
        sniffed = await body.read_head(self.limits.max_pixels)
        upload_id = uuid.uuid4().hex
        key = f"{UPLOADS_PREFIX}{user_id}/{upload_id}"
        sha256 = await self.store.put(key, body.rest())
        try:
            async with self._pool.acquire(timeout=DB_TIMEOUT_S) as connection, connection.transaction():
                row = await connection.fetchrow(
                    _INSERT, upload_id, user_id, sha256, sniffed.content_type, body.size, sniffed.width,
                    sniffed.height, key, self.limits.retention_days, timeout=DB_TIMEOUT_S)
                if row["inserted"] and await connection.fetchval(
                        _SPEND, user_id, body.size, self.limits.max_bytes_per_day, timeout=DB_TIMEOUT_S) is None:
                    raise budget.spent()  # another upload took the rest meanwhile
        except BaseException:
            await self.store.delete(key)
            raise
        if not row["inserted"]:
            await self.store.delete(key)  # the same file again: the first copy stays the one
        log.info("upload stored", extra={"action": "upload.create", "upload_id": row["upload_id"],
                                         "size": body.size, "content_type": sniffed.content_type,
                                         "repeat": not row["inserted"]})
        return _upload(row)

    async def list(self, user_id: str) -> list[Upload]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM fal_uploads WHERE user_id = $1 ORDER BY created_at DESC, upload_id LIMIT $2",
            user_id, LIST_LIMIT, timeout=DB_TIMEOUT_S)
        return [_upload(row) for row in rows]

    async def get(self, user_id: str | None, upload_id: str) -> StoredUpload:
        """The upload; another user's (or any, with `user_id` None: a signed link's owner is checked
        by its caller) is NotFound, like their jobs."""
        check_upload_id(upload_id)
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS}, user_id, store_key, cdn_url, cdn_expires_at FROM fal_uploads WHERE upload_id = $1",
            upload_id, timeout=DB_TIMEOUT_S)
        if row is None or (user_id is not None and row["user_id"] != user_id):
            raise NotFound(f"upload {upload_id!r} not found")
        return StoredUpload(upload=_upload(row), user_id=row["user_id"], store_key=row["store_key"],
                            cdn_url=row["cdn_url"], cdn_expires_at=row["cdn_expires_at"])

    async def remember_cdn_copy(self, upload_id: str, url: str, expires_at: datetime) -> None:
        await self._pool.execute("UPDATE fal_uploads SET cdn_url = $2, cdn_expires_at = $3 WHERE upload_id = $1",
                                 upload_id, url, expires_at, timeout=DB_TIMEOUT_S)

    async def delete(self, user_id: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        key = await self._pool.fetchval(
            "DELETE FROM fal_uploads WHERE upload_id = $1 AND user_id = $2 RETURNING store_key",
            upload_id, user_id, timeout=DB_TIMEOUT_S)
        if key is None:
            raise NotFound(f"upload {upload_id!r} not found")
        await self.store.delete(key)
        log.info("upload deleted", extra={"action": "upload.delete", "upload_id": upload_id})

    async def remove_expired(self) -> int:
        """Uploads past their retention that no open job uses: rows, then bytes. A process that
        dies between the two leaves an object no row names (nothing serves it)."""
        keys = [row["store_key"] for row in await self._pool.fetch(_EXPIRED, RETENTION_BATCH, timeout=DB_TIMEOUT_S)]
        for key in keys:
            await self.store.delete(key)
        if keys:
            log.info("expired uploads removed", extra={"action": "upload.expire", "count": len(keys)})
        return len(keys)


def _upload(row: asyncpg.Record) -> Upload:
    return Upload(upload_id=row["upload_id"], content_type=row["content_type"], size=row["size"],
                  sha256=row["sha256"], width=row["width"], height=row["height"], created_at=row["created_at"],
                  expires_at=row["expires_at"])
