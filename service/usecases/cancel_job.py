"""Cancelling a job: at fal first, then in the store (its counterpart: `submit_job`)."""

from __future__ import annotations

import asyncpg

from service.errors import Conflict, UpstreamError
from service.fal.gateway import FalGateway, was_cancelled
from service.jobs import queries
from service.jobs.models import Job, JobChange
from service.jobs.status_machine import apply_change


class CancelJob:
    def __init__(self, pool: asyncpg.Pool, gateway: FalGateway) -> None:
        self._pool = pool
        self._gateway = gateway

    async def cancel(self, user_id: str, request_id: str) -> Job:
        """Cancel at fal, then record it. Safe to retry: when fal says "already completed" (say, a
        first try reached fal but not the database), fal's own status is read: a request fal
        cancelled is recorded `cancelled` and answered as such, not as "already completed"."""
        job = await queries.get_job(self._pool, user_id, request_id)
        if job.is_terminal:
            raise Conflict(f"job {request_id!r} is already {job.status}")
        outcome = await self._gateway.cancel(job.model_id, request_id)
        if outcome == "not_found":
            raise UpstreamError(f"fal does not know request {request_id!r}")
        change = JobChange(status="cancelled", error="cancelled by the user")
        if outcome == "already_completed":
            status = await self._gateway.status(job.model_id, request_id)
            if status.status != "COMPLETED" or not was_cancelled(status.error, None):
                job = await queries.get_job(self._pool, user_id, request_id)
                if job.status == "cancelled":
                    return job
                raise Conflict(f"job {request_id!r} already completed at fal; its result is on its way")
        async with self._pool.acquire() as connection:
            applied = await apply_change(connection, request_id, change)
        assert applied.job is not None
        if not applied.accepted and applied.job.status != "cancelled":
            raise Conflict(f"job {request_id!r} is already {applied.job.status}")
        return applied.job
