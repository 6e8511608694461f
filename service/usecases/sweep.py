"""The reconciliation sweep: asks fal about jobs that stay open past a deadline, and applies what it
says. Only a 404 from fal fails an open job (fal does not know it); any other failure leaves it
for the next sweep. Jobs cancelled while fal ran them are asked about the same way until fal's end
(a 404 included) frees the open-jobs slot they keep (`reservations.fal_ended`). It also applies
parked early webhooks whose job has appeared (should the adoption right after creation have failed),
then applies retention (`service.db.retention`: old events, expired sessions, unclaimed parked
webhooks, day-old reservations), rolls the operator's figures up (`service.jobs.stats_rollup`:
settled hours and days, and those whose jobs changed), and keeps the outputs
(`service.outputs.upkeep`: failed copies re-driven while fal keeps the file, staging leftovers).

Background work that never wedges:
- Each job is isolated: whatever fails for one (fal, the database, a change Postgres rejects) is
  logged with its request id and the sweep moves on to the next.
- A sweep pages through every overdue job (keyset on `(updated_at, request_id)`, up to a cut-off
  taken at its start), not the same oldest page again and again; jobs a follower streams right
  now are left out in the query itself.
- No pooled connection is held across a call to fal: each read and each change takes one for its
  own statement. One process sweeps at a time through a session advisory lock, held on a
  connection of its own (not the pool's); should that connection drop, the sweep stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from service import metrics
from service.db.retention import apply_retention
from service.errors import DatabaseUnavailable
from service.fal.gateway import FalGateway, FalRequestFailed
from service.jobs import reservations, stats_rollup
from service.jobs.delivery_log import Delivery, DeliveryLog
from service.jobs.models import TERMINAL_STATUSES, JobChange
from service.jobs.status_machine import apply_change
from service.usecases.fal_news import change_from_status, completion_change
from service.usecases.follow_jobs import FollowTarget, JobFollower

if TYPE_CHECKING:
    from service.outputs.upkeep import OutputUpkeep
    from service.uploads.library import Uploads
    from service.usecases.receive_webhook import WebhookIntake

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = 0x66616C6A6F6273  # "faljobs"
PAGE = 100

_OVERDUE_PAGE = """
SELECT request_id, model_id, mode, updated_at AS page_key FROM fal_jobs
WHERE status IN ('pending', 'in_progress') AND updated_at < $1
  AND (updated_at, request_id) > ($2, $3)
  AND NOT (request_id = ANY($4::text[]))
ORDER BY updated_at, request_id
LIMIT $5
"""

_CANCELLED_RUNNING_PAGE = """
SELECT request_id, model_id, mode, counts_open_until AS page_key FROM fal_jobs
WHERE counts_open_until > now() AND updated_at < $1
  AND (counts_open_until, request_id) > ($2, $3)
  AND NOT (request_id = ANY($4::text[]))
ORDER BY counts_open_until, request_id
LIMIT $5
"""
"""Jobs cancelled while fal ran them, whose end at fal nobody has seen yet (cancelled before the cut-off)."""

LockConnector = Callable[[], Awaitable[asyncpg.Connection]]


class SweepReport(msgspec.Struct):
    ran: bool
    checked: int = 0
    changed: int = 0
    unknown_to_fal: int = 0
    failed: int = 0
    """Jobs whose check failed this time (logged one by one); the next sweep tries them again."""
    adopted_webhooks: int = 0
    fal_ended: int = 0
    """Jobs cancelled while running whose end at fal was seen: their open-jobs slots are free."""
    deleted: dict[str, int] = msgspec.field(default_factory=dict)
    """Rows removed by retention, per table."""
    rolled_up: int = 0
    """Hours and days of the operator's figures rolled up (`stats_rollup`)."""
    outputs: dict[str, int] = msgspec.field(default_factory=dict)
    """What the outputs' upkeep did (outputs re-driven, staging files removed)."""


class Reconciler:
    def __init__(
        self, pool: asyncpg.Pool, gateway: FalGateway, follower: JobFollower, intake: WebhookIntake,
        *, connect_lock: LockConnector, overdue_after_s: float, interval_s: float, event_retention_days: int = 30,
        outputs: OutputUpkeep | None = None, uploads: Uploads | None = None,
        deliveries: DeliveryLog | None = None, delivery_log_retention_days: int = 30,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._follower = follower
        self._intake = intake
        self._connect_lock = connect_lock
        self._overdue_after_s = overdue_after_s
        self._interval_s = interval_s
        self._event_retention_days = event_retention_days
        self._outputs = outputs
        self._uploads = uploads
        self._deliveries = deliveries
        self._delivery_log_retention_days = delivery_log_retention_days

    async def run_forever(self) -> None:
        while True:
            try:
                report = await self.sweep_once()
                if (report.changed or report.unknown_to_fal or report.adopted_webhooks or report.failed
                        or report.deleted or report.fal_ended or report.outputs):
                    log.info("reconciliation sweep", extra={"action": "sweep", **msgspec.structs.asdict(report)})
            except asyncio.CancelledError:
                raise
            except (DatabaseUnavailable, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("reconciliation sweep skipped: the database is unavailable",
                            extra={"action": "sweep", "error": type(error).__name__})
            except Exception:
                metrics.sweep_ran("failed")
                log.exception("reconciliation sweep failed; next one in %ss", self._interval_s, extra={"action": "sweep"})
            await asyncio.sleep(self._interval_s)

    async def sweep_once(self) -> SweepReport:
        lock = await self._connect_lock()
        try:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_KEY):
                metrics.sweep_ran("skipped")
                return SweepReport(ran=False)
            report = await self._sweep(lock)
            metrics.sweep_ran("swept", report.changed)
            return report
        finally:
            # Closing the session releases its advisory lock.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lock.close(), timeout=2)
            if not lock.is_closed():
                lock.terminate()

    async def _sweep(self, lock: asyncpg.Connection) -> SweepReport:
        report = SweepReport(ran=True)
        cutoff: datetime = await self._pool.fetchval("SELECT now() - make_interval(secs => $1)", self._overdue_after_s)
        for page in (_OVERDUE_PAGE, _CANCELLED_RUNNING_PAGE):
            after: tuple[datetime, str] = (datetime.min.replace(tzinfo=cutoff.tzinfo), "")
            while not lock.is_closed():
                followed = self._follower.streaming_ids()
                rows = await self._pool.fetch(page, cutoff, after[0], after[1], followed, PAGE)
                for row in rows:
                    await self._reconcile_one(FollowTarget(request_id=row["request_id"], model_id=row["model_id"],
                                                           mode=row["mode"]), report)
                if len(rows) < PAGE:
                    break
                after = (rows[-1]["page_key"], rows[-1]["request_id"])
        if lock.is_closed():
            log.warning("the sweep lost its lock connection; stopping here", extra={"action": "sweep"})
            return report
        await self._adopt_parked(report)
        try:  # one pooled connection, short statements (each within the pool's statement time-out)
            async with self._pool.acquire() as connection:
                report.deleted = await apply_retention(
                    connection, event_retention_days=self._event_retention_days,
                    delivery_log_retention_days=self._delivery_log_retention_days)
        except Exception as error:  # the next sweep tries again
            log.warning("retention failed", extra={"action": "retention", "error": type(error).__name__})
        await self._roll_up(report)
        if self._outputs is not None:
            try:
                report.outputs = await self._outputs.sweep()
            except Exception as error:  # the next sweep tries again
                log.warning("the outputs' upkeep failed", extra={"action": "outputs.upkeep",
                                                                 "error": type(error).__name__})
        if self._uploads is not None:
            try:
                if removed := await self._uploads.remove_expired():
                    report.outputs["uploads_expired"] = removed
            except Exception as error:  # the next sweep tries again
                log.warning("removing expired uploads failed", extra={"action": "upload.expire",
                                                                      "error": type(error).__name__})
        return report

    async def _roll_up(self, report: SweepReport) -> None:
        try:  # short transactions, one hour or day each
            async with self._pool.acquire() as connection:
                rolled = await stats_rollup.roll_up(connection)
        except Exception as error:  # the stats read what is not rolled up live; the next sweep tries again
            log.warning("rolling the figures up failed", extra={"action": "stats.rollup", "error": type(error).__name__})
            return
        report.rolled_up = rolled.hours + rolled.days + rolled.spans
        if rolled.hours:
            log.info("figures rolled up", extra={"action": "stats.rollup", "hours": rolled.hours, "days": rolled.days,
                                                 "spans": rolled.spans, "seconds": round(rolled.seconds, 3)})

    async def _reconcile_one(self, target: FollowTarget, report: SweepReport) -> None:
        if self._follower.is_streaming(target.request_id):
            return  # started following since the page was read
        report.checked += 1
        arrived, started = time.time(), time.perf_counter()
        try:
            change = await self._ask_fal(target)  # no connection held meanwhile
            if change.status == "failed" and change.error_type == "unknown_to_fal":
                report.unknown_to_fal += 1
            async with self._pool.acquire() as connection:
                applied = await apply_change(connection, target.request_id, change)
                cancelled_before = (applied.job is not None and not applied.accepted
                                    and applied.job.status in ("cancelled", "deleted"))
                if cancelled_before and change.status in TERMINAL_STATUSES:  # fal ended it, or lost it
                    report.fal_ended += await reservations.fal_ended(connection, target.request_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one job's failure never stops the others
            report.failed += 1
            self._note(target.request_id, arrived, started, "failed", type(error).__name__, None)
            log.warning("sweep could not reconcile a job; moving on",
                        extra={"action": "sweep_job", "request_id": target.request_id, "error": type(error).__name__,
                               "detail": str(error)[:300]})
            return
        report.changed += applied.accepted
        self._note(target.request_id, arrived, started, "changed" if applied.accepted else "unchanged",
                   change.error, change.status)
        if applied.job is not None and (not applied.job.is_terminal or
                                        (cancelled_before and change.status not in TERMINAL_STATUSES)):
            self._follower.follow(target)  # a cancelled job: followed on only while it awaits fal's end

    def _note(self, request_id: str, arrived: float, started: float, outcome: str, reason: str | None,
              status: str | None) -> None:
        """The sweep's decision on one job, in the delivery log beside fal's webhooks."""
        if self._deliveries is not None:
            self._deliveries.record(Delivery(
                received_at=arrived, request_id=request_id, source="sweep", outcome=outcome, reason=reason,
                status=status, duration_us=int((time.perf_counter() - started) * 1_000_000)))

    async def _adopt_parked(self, report: SweepReport) -> None:
        try:
            parked = await self._pool.fetch(
                "SELECT DISTINCT e.request_id, j.model_id FROM fal_early_webhooks e JOIN fal_jobs j USING (request_id)"
            )
        except Exception as error:
            log.warning("could not list parked webhooks", extra={"action": "sweep", "error": type(error).__name__})
            return
        for row in parked:
            try:
                report.adopted_webhooks += await self._intake.adopt_early(row["request_id"], row["model_id"])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # stays parked; the next sweep tries again
                log.warning("could not adopt a parked webhook",
                            extra={"action": "sweep_adopt", "request_id": row["request_id"], "error": type(error).__name__})

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
        return await completion_change(self._gateway, target.model_id, target.request_id, status)
