"""Deleting a job's media: the job becomes `deleted` (the status machine), then its bytes leave the
media store (outputs)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.errors import Conflict, NotFound
from service.jobs import queries
from service.jobs.models import Deletion, Job
from service.jobs.status_machine import apply_change
from service.outputs.access import DB_TIMEOUT_S

if TYPE_CHECKING:
    import asyncpg

    from service.outputs.store import MediaStore

log = logging.getLogger(__name__)


class DeleteJob:
    def __init__(self, pool: asyncpg.Pool, store: MediaStore) -> None:
        self._pool = pool
        self._store = store

    async def delete(self, user_id: str, request_id: str) -> Job:
        """Mark the job deleted (one event), then remove its bytes from the store. A removal that
        fails here is retried by the copy workers, which own every row still holding a key."""
        queries.check_request_id(request_id)
        async with self._pool.acquire(timeout=DB_TIMEOUT_S) as connection:
            applied = await apply_change(connection, request_id, Deletion(user_id=user_id))
        if applied.job is None:
            raise NotFound(f"job {request_id!r} not found")
        if not applied.accepted and applied.job.status != "deleted":
            raise Conflict(f"job {request_id!r} is {applied.job.status}; cancel it before deleting it")
        rows = await self._pool.fetch(
            "SELECT index, store_key FROM fal_job_outputs WHERE request_id = $1 AND status = 'deleted' "
            "AND store_key IS NOT NULL", request_id, timeout=DB_TIMEOUT_S,
        )
        for row in rows:
            try:
                await self._store.delete(row["store_key"])
            except Exception:
                log.warning("removing a deleted output failed; the workers retry", exc_info=True,
                            extra={"action": "outputs.delete", "request_id": request_id, "index": row["index"]})
                continue
            await self._pool.execute(
                "UPDATE fal_job_outputs SET store_key = NULL WHERE request_id = $1 AND index = $2 AND store_key = $3",
                request_id, row["index"], row["store_key"], timeout=DB_TIMEOUT_S,
            )
        return applied.job
