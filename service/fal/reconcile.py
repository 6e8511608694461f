"""The reconciliation sweep: asks fal about jobs that stay open past a deadline, and applies what it
says. A job fal does not know becomes `failed` with a clear error. It also applies parked early
webhooks whose job has appeared (should the adoption right after creation have failed) and drops
parked webhooks that no job claimed within a day.

One process sweeps at a time (a session advisory lock), so several service processes are safe.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec

from service.fal.follower import FollowTarget, JobFollower
from service.fal.gateway import FalGateway, FalRequestFailed, change_from_status
from service.fal.webhooks import WebhookIntake
from service.jobs.models import JobChange
from service.jobs.status_machine import apply_change

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = 0x66616C6A6F6273  # "faljobs"
BATCH = 100


class SweepReport(msgspec.Struct):
    ran: bool
    checked: int = 0
    changed: int = 0
    unknown_to_fal: int = 0
    adopted_webhooks: int = 0


class Reconciler:
    def __init__(
        self, pool: asyncpg.Pool, gateway: FalGateway, follower: JobFollower, intake: WebhookIntake,
        *, overdue_after_s: float, interval_s: float,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._follower = follower
        self._intake = intake
        self._overdue_after_s = overdue_after_s
        self._interval_s = interval_s

    async def run_forever(self) -> None:
        while True:
            try:
                report = await self.sweep_once()
                if report.changed or report.unknown_to_fal or report.adopted_webhooks:
                    log.info("reconciliation sweep", extra=msgspec.structs.asdict(report))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciliation sweep failed; next one in %ss", self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def sweep_once(self) -> SweepReport:
        async with self._pool.acquire() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_KEY):
                return SweepReport(ran=False)
            try:
                return await self._sweep(connection)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_KEY)

    async def _sweep(self, connection: asyncpg.Connection) -> SweepReport:
        report = SweepReport(ran=True)
        rows = await connection.fetch(
            "SELECT request_id, model_id, mode FROM fal_jobs "
            "WHERE status IN ('pending', 'in_progress') AND updated_at < now() - make_interval(secs => $1) "
            "ORDER BY updated_at LIMIT $2",
            self._overdue_after_s, BATCH,
        )
        for row in rows:
            target = FollowTarget(request_id=row["request_id"], model_id=row["model_id"], mode=row["mode"])
            if self._follower.is_streaming(target.request_id):
                continue
            report.checked += 1
            try:
                change = await self._ask_fal(target)
            except Exception as error:
                log.warning("sweep could not ask fal", extra={"request_id": target.request_id, "error": type(error).__name__})
                continue
            if change.status == "failed" and change.error_type == "unknown_to_fal":
                report.unknown_to_fal += 1
            applied = await apply_change(connection, target.request_id, change)
            report.changed += applied.accepted
            if applied.job is not None and not applied.job.is_terminal:
                self._follower.follow(target)
        parked = await connection.fetch(
            "SELECT DISTINCT e.request_id, j.model_id FROM fal_early_webhooks e JOIN fal_jobs j USING (request_id)"
        )
        for row in parked:
            try:
                report.adopted_webhooks += await self._intake.adopt_early(row["request_id"], row["model_id"])
            except Exception as error:  # stays parked; the next sweep tries again
                log.warning("could not adopt a parked webhook", extra={"request_id": row["request_id"], "error": type(error).__name__})
        await connection.execute(
            "DELETE FROM fal_early_webhooks e WHERE received_at < now() - interval '1 day' "
            "AND NOT EXISTS (SELECT 1 FROM fal_jobs j WHERE j.request_id = e.request_id)"
        )
        return report

    async def _ask_fal(self, target: FollowTarget) -> JobChange:
        try:
            status = await self._gateway.status(target.model_id, target.request_id)
        except FalRequestFailed as failure:
            if failure.status_code == 404:
                return JobChange(
                    status="failed",
                    error="fal does not know this request (404 on its status); it was lost or expired",
                    error_type="unknown_to_fal",
                )
            raise
        change = change_from_status(status)
        if change is not None:
            return change
        return await self._gateway.completion_change(target.model_id, target.request_id, status)
