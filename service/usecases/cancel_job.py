"""Cancelling a job: at fal first, then in the store (its counterpart: `submit_job`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.errors import Conflict, UpstreamError
from service.fal.gateway import FalGateway, was_cancelled
from service.jobs import queries, reservations
from service.jobs.models import Job, JobChange
from service.jobs.status_machine import apply_change
from service.usecases.follow_jobs import FollowTarget, JobFollower

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)


class CancelJob:
    def __init__(self, pool: asyncpg.Pool, gateway: FalGateway, follower: JobFollower, *,
                 cancel_hold_max_s: float) -> None:
        self._pool = pool
        self._gateway = gateway
        self._follower = follower
        self._cancel_hold_max_s = cancel_hold_max_s

    async def cancel(self, user_id: str, request_id: str) -> Job:
        """Cancel at fal, then record it. Safe to retry: when fal says "already completed" (say, a
        first try reached fal but not the database), fal's own status is read: a request fal
        cancelled is recorded `cancelled` and answered as such, not as "already completed".

        The user sees `cancelled` at once. A request fal was running when it took the cancel may
        run on (fal only signals the runner), so such a job keeps counting against the open-jobs
        limit until fal's end is seen (see `reservations.hold_after_cancel`); a queued one is
        removed by fal and stops counting at once."""
        job = await queries.get_job(self._pool, user_id, request_id)
        if job.is_terminal:
            raise Conflict(f"job {request_id!r} is already {job.status}")
        outcome = await self._gateway.cancel(job.model_id, request_id)
        if outcome == "not_found":
            raise UpstreamError(f"fal does not know request {request_id!r}")
        change = JobChange(status="cancelled", error="cancelled by the user")
        may_run_on = False
        if outcome == "already_completed":
            status = await self._gateway.status(job.model_id, request_id)
            if status.status != "COMPLETED" or not was_cancelled(status.error, None):
                job = await queries.get_job(self._pool, user_id, request_id)
                if job.status == "cancelled":
                    return job
                raise Conflict(f"job {request_id!r} already completed at fal; its result is on its way")
        else:
            may_run_on = await self._may_run_on(job)
        async with self._pool.acquire() as connection, connection.transaction():
            applied = await apply_change(connection, request_id, change)
            if applied.accepted and may_run_on:
                await reservations.hold_after_cancel(connection, request_id, self._cancel_hold_max_s)
        if applied.job is None:
            raise RuntimeError(f"job {request_id!r} vanished while it was being cancelled")
        if not applied.accepted and applied.job.status != "cancelled":
            raise Conflict(f"job {request_id!r} is already {applied.job.status}")
        if applied.accepted and may_run_on:
            self._follower.await_end(FollowTarget(request_id=request_id, model_id=job.model_id, mode=job.mode))
        return applied.job

    async def _may_run_on(self, job: Job) -> bool:
        """Whether fal may still run a request whose cancel it just took: it was running (or we
        cannot tell). Asked at fal, since our row may not know yet that the request started."""
        try:
            status = await self._gateway.status(job.model_id, job.request_id)
        except Exception as error:  # the hold ends by itself; a free slot fal still bills would not
            log.info("could not read fal's status after a cancel; the job counts as running",
                     extra={"action": "jobs.cancel_status_unknown", "request_id": job.request_id,
                            "error": type(error).__name__})
            return True
        # A queued request is removed and never processed; a completed one has ended.
        return status.status == "IN_PROGRESS"
