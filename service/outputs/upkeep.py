"""Keeping the outputs whole over time: failed copies set pending again while fal still has the
file, and store objects that nothing names found and removed.

The sweep calls `OutputUpkeep.sweep` (one process at a time, under the sweep's lock); the command
line's `outputs retry` and `outputs gc` call the functions below by hand.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from service import metrics
from service.jobs.models import OutputsReopened
from service.jobs.status_machine import apply_change

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from service.outputs.store import MediaStore, StoredObject

log = logging.getLogger(__name__)

OUTPUTS_PREFIX = "outputs/"
"""Where the copies live in the store (`outputs/<request id>/<n>-<claim>`)."""
ORPHAN_AGE_S = 24 * 3600.0
"""An object or staging file younger than this may belong to a copy still in flight."""
STAGING_EVERY_S = 3600.0
"""How often a process's sweep walks the local folder for staging leftovers."""
REDRIVE_BATCH = 500
"""Failed outputs one sweep sets pending again at most (the next sweep takes the rest)."""
DB_TIMEOUT_S = 10.0


class FailedOutput(msgspec.Struct, frozen=True):
    request_id: str
    index: int
    error: str | None


_FAILED = """
SELECT request_id, index, last_error AS error FROM fal_job_outputs
WHERE status = 'failed' AND created_at > now() - make_interval(secs => $1)
  AND ($2::float8 IS NULL OR (retryable AND updated_at < now() - make_interval(secs => $2)))
  AND ($3::text IS NULL OR request_id = $3)
ORDER BY request_id, index
LIMIT $4
"""


async def redrive_failed(
    pool: asyncpg.Pool, *, fal_copy_lifetime_s: float, retryable_after_s: float | None,
    request_id: str | None = None, limit: int = REDRIVE_BATCH, by: str,
) -> list[FailedOutput]:
    """Set `failed` outputs pending again while fal keeps its copy (they were made less than
    `fal_copy_lifetime_s` ago), and answer those that were. With `retryable_after_s`, only
    failures that may pass (a budget of transient failures spent) at least that long ago; without
    it, every failure (a person asked: for one job with `request_id`)."""
    rows = await pool.fetch(_FAILED, float(fal_copy_lifetime_s), retryable_after_s, request_id, limit,
                            timeout=DB_TIMEOUT_S)
    failed = [msgspec.convert(dict(row), FailedOutput) for row in rows]
    by_job: dict[str, list[FailedOutput]] = {}
    for output in failed:
        by_job.setdefault(output.request_id, []).append(output)
    reopened: list[FailedOutput] = []
    for job_id, outputs in by_job.items():
        async with pool.acquire(timeout=DB_TIMEOUT_S) as connection:
            applied = await apply_change(connection, job_id, OutputsReopened(indexes=[o.index for o in outputs]))
        if applied.accepted and applied.job is not None:
            again = {o.index for o in applied.job.outputs if o.status == "pending"}
            reopened.extend(o for o in outputs if o.index in again)
    metrics.output_redriven(by, len(reopened))
    return reopened


async def orphans(pool: asyncpg.Pool, store: MediaStore, *, older_than_s: float) -> AsyncIterator[StoredObject]:
    """Objects under `outputs/` that no output row names, last written more than `older_than_s`
    ago (a younger one may be a copy whose outcome is being written)."""
    before = datetime.now(UTC) - timedelta(seconds=older_than_s)
    async for batch in store.objects(OUTPUTS_PREFIX):
        old = [obj for obj in batch if obj.last_modified < before]
        if not old:
            continue
        # By the request id in the key: the primary key's index, not a scan per batch.
        request_ids = sorted({obj.key.split("/")[1] for obj in old if obj.key.count("/") >= 2})
        named = {row["store_key"] for row in await pool.fetch(
            "SELECT store_key FROM fal_job_outputs WHERE request_id = ANY($1::text[]) AND store_key IS NOT NULL",
            request_ids, timeout=DB_TIMEOUT_S,
        )}
        for obj in old:
            if obj.key not in named:
                yield obj


class OutputUpkeep:
    """What the sweep does for the outputs on each run."""

    def __init__(self, pool: asyncpg.Pool, store: MediaStore, *, fal_copy_lifetime_s: float,
                 redrive_after_s: float, staging_age_s: float = ORPHAN_AGE_S,
                 staging_every_s: float = STAGING_EVERY_S) -> None:
        self._pool = pool
        self._store = store
        self._fal_copy_lifetime_s = fal_copy_lifetime_s
        self._redrive_after_s = redrive_after_s
        self._staging_age_s = staging_age_s
        self._staging_every_s = staging_every_s
        self._staging_walked: float | None = None

    async def sweep(self) -> dict[str, int]:
        """Re-drive failed outputs that may pass; now and then remove staging leftovers. Answers
        what it did, by name (nothing: empty)."""
        done: dict[str, int] = {}
        reopened = await redrive_failed(self._pool, fal_copy_lifetime_s=self._fal_copy_lifetime_s,
                                        retryable_after_s=self._redrive_after_s, by="sweep")
        if reopened:
            done["outputs_redriven"] = len(reopened)
            log.info("failed outputs set pending again", extra={
                "action": "outputs.redrive", "outputs": [f"{o.request_id}/{o.index}" for o in reopened][:50]})
        now = time.monotonic()
        if self._staging_walked is None or now - self._staging_walked >= self._staging_every_s:
            self._staging_walked = now
            removed = await self._store.remove_staging_leftovers(OUTPUTS_PREFIX, self._staging_age_s)
            metrics.output_orphan_removed("staging", len(removed))
            if removed:
                done["staging_files_removed"] = len(removed)
        return done
