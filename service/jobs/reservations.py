"""Limits that protect money, decided in Postgres before anything is sent to fal.

Every accepted create first writes a reservation, under a lock on the user's row, after counting
what the user already has: open jobs plus reservations still submitting, and creates in the last
minute. Two processes therefore cannot together exceed a limit, and a refused create costs
nothing. The job's INSERT then takes the reservation over (it records the request id), so an
`Idempotency-Key` finds the job its first request made, for 24 hours.

A budget in money (MAX_SPEND_PER_DAY, or the user's own) is checked under the same lock: the job's
estimate is reserved with the reservation, and its job's cost replaces it (`budget.py`).

A job cancelled while fal ran it still counts as open: fal's cancel only signals the runner, and
the work (and its bill) may go on until it ends by itself. The cancel sets `counts_open_until`
(`hold_after_cancel`); whoever then sees fal's end of the request (its webhook, a follower, the
sweep) sets it back to NULL (`fal_ended`), and a job whose end is never seen stops counting at that
time. The job itself stays `cancelled`: its status, version and events do not change.
"""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from service import metrics
from service.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    NotAuthenticated,
    TooManyRequests,
)
from service.jobs.budget import check as check_budget

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
SUBMIT_GRACE = timedelta(minutes=2)
"""A reservation still without its job after this was left by a crash mid-submit: it stops
counting, and its Idempotency-Key may be used again."""
OPEN_JOBS_RETRY_AFTER_S = 10
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_open_jobs: int
    max_jobs_per_minute: int
    max_spend_per_day: float | None = None
    """None: no budget, unless the user has one of their own."""


class Reservation(msgspec.Struct, frozen=True):
    id: int = 0
    """The reservation to fulfil or cancel; 0 for a replay, where nothing is to be submitted."""
    replay_of: str | None = None
    """The request id the first request with this Idempotency-Key created."""


def body_digest(body: object) -> str:
    """The same request, whatever its key order or spacing, gives the same digest."""
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


def check_idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidRequest(
            f"idempotency-key: 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters (a UUID is typical)"
        )
    return key


_COUNTS = """
SELECT
    (SELECT count(*) FROM fal_jobs WHERE user_id = $1 AND status IN ('pending', 'in_progress'))
  + (SELECT count(*) FROM fal_job_reservations
      WHERE user_id = $1 AND request_id IS NULL AND created_at > now() - $2::interval) AS open,
    (SELECT count(*) FROM fal_jobs WHERE user_id = $1 AND counts_open_until > now()) AS cancelled_running,
    count(*) AS last_minute,
    extract(epoch FROM min(created_at) + interval '1 minute' - now()) AS oldest_leaves_in
FROM fal_job_reservations WHERE user_id = $1 AND created_at > now() - interval '1 minute'
"""


async def reserve(
    pool: asyncpg.Pool, user_id: str, *, digest: str, idempotency_key: str | None, defaults: Limits,
    estimate: float | None = None,
) -> Reservation:
    """`estimate`: the job's estimated cost, reserved against the user's budget (None: unknown, counts 0)."""
    async with pool.acquire() as connection, connection.transaction():
        # One create per user at a time, across processes, for the count and the insert.
        user = await connection.fetchrow(
            "SELECT max_open_jobs, max_jobs_per_minute, max_spend_per_day, disabled_at FROM fal_users "
            "WHERE id = $1 FOR UPDATE", user_id
        )
        if user is None or user["disabled_at"] is not None:
            raise NotAuthenticated("user: disabled")
        if idempotency_key is not None:
            earlier = await connection.fetchrow(
                "SELECT id, body_sha256, request_id, created_at > now() - $3::interval AS recent, "
                "created_at > now() - $4::interval AS submitting "
                "FROM fal_job_reservations WHERE user_id = $1 AND idempotency_key = $2",
                user_id, idempotency_key, IDEMPOTENCY_WINDOW, SUBMIT_GRACE,
            )
            if earlier is not None and (earlier["recent"] and (earlier["request_id"] or earlier["submitting"])):
                if earlier["body_sha256"] != digest:
                    raise IdempotencyKeyReused(
                        "idempotency-key: already used with another request body; use a new key for a new job"
                    )
                if earlier["request_id"] is None:
                    raise IdempotencyInProgress(
                        "idempotency-key: the first request with this key is still being submitted; retry shortly",
                        retry_after_s=1,
                    )
                return Reservation(replay_of=earlier["request_id"])
            if earlier is not None:  # expired, or abandoned by a crash: the key is free again
                await connection.execute("DELETE FROM fal_job_reservations WHERE id = $1", earlier["id"])
        counts = await connection.fetchrow(_COUNTS, user_id, SUBMIT_GRACE)
        max_open = user["max_open_jobs"] or defaults.max_open_jobs
        cancelled_running = counts["cancelled_running"]
        if counts["open"] + cancelled_running >= max_open:
            metrics.limit_refused("open_jobs")
            held = f", {cancelled_running} of them cancelled but not yet ended at fal" if cancelled_running else ""
            raise TooManyRequests(
                f"open jobs: {counts['open'] + cancelled_running} of at most {max_open} are pending or running{held} "
                "(MAX_OPEN_JOBS_PER_USER); wait for one to finish",
                retry_after_s=OPEN_JOBS_RETRY_AFTER_S,
            )
        per_minute = user["max_jobs_per_minute"] or defaults.max_jobs_per_minute
        if counts["last_minute"] >= per_minute:
            metrics.limit_refused("jobs_per_minute")
            raise TooManyRequests(
                f"jobs per minute: {counts['last_minute']} created in the last minute, at most {per_minute} "
                "(MAX_JOBS_PER_MINUTE)",
                retry_after_s=math.ceil(float(counts["oldest_leaves_in"] or 1)),
            )
        amount = Decimal(0) if estimate is None else Decimal(str(estimate))
        budget = user["max_spend_per_day"] or (
            None if defaults.max_spend_per_day is None else Decimal(str(defaults.max_spend_per_day)))
        if budget is not None:
            await check_budget(connection, user_id, budget=budget, estimate=amount, submit_grace=SUBMIT_GRACE)
        reservation_id = await connection.fetchval(
            "INSERT INTO fal_job_reservations (user_id, idempotency_key, body_sha256, estimated_cost) "
            "VALUES ($1, $2, $3, $4) RETURNING id",
            user_id, idempotency_key, digest, amount,
        )
    return Reservation(id=reservation_id)


async def fulfil(connection: asyncpg.Connection, reservation_id: int, request_id: str) -> None:
    """The job row exists: it counts from now on, and the reservation remembers which job it made."""
    await connection.execute(
        "UPDATE fal_job_reservations SET request_id = $2 WHERE id = $1", reservation_id, request_id
    )


async def cancel(pool: asyncpg.Pool, reservation_id: int) -> None:
    """fal refused the submit: nothing was created, so nothing counts and the key may be retried."""
    await pool.execute("DELETE FROM fal_job_reservations WHERE id = $1", reservation_id)


async def hold_after_cancel(connection: asyncpg.Connection, request_id: str, hold_s: float) -> None:
    """The job was cancelled while fal may still run it: it counts as open until fal's end is
    seen, `hold_s` at most. Meant for the transaction that records the cancel, so that no create
    finds the job neither open nor held."""
    await connection.execute(
        "UPDATE fal_jobs SET counts_open_until = now() + make_interval(secs => $2) WHERE request_id = $1",
        request_id, hold_s,
    )


async def awaits_fal_end(connection: asyncpg.Connection, request_id: str) -> bool:
    """Whether the job still counts as open until fal's end is seen (see `hold_after_cancel`)."""
    return bool(await connection.fetchval(
        "SELECT counts_open_until > now() FROM fal_jobs WHERE request_id = $1", request_id
    ))


async def fal_ended(connection: asyncpg.Connection, request_id: str) -> bool:
    """fal's end of a cancelled job was seen: it stops counting as open. True when it counted.
    Nothing else of the job changes (terminal states are final)."""
    released = await connection.fetchval(
        "UPDATE fal_jobs SET counts_open_until = NULL WHERE request_id = $1 AND counts_open_until IS NOT NULL "
        "RETURNING 1",
        request_id,
    )
    if released is None:
        return False
    log.info("fal ended a job cancelled while running: its open-jobs slot is free",
             extra={"action": "jobs.cancel_hold_released", "request_id": request_id})
    return True
