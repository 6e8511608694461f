"""The one place that changes a job.

`create_job` writes a new job and its first event; `apply_change` reads the row, asks `decide`
whether the change moves the job forward, and if so, in one statement (one transaction), updates
the row under its lock only if its version is unchanged, bumps `version` and appends exactly one
event; when another writer got there first it decides again on the fresh row. The event row
carries the job as it is after the change, so readers of the event log never need a second
query; its INSERT fires the NOTIFY trigger.

The rules (`decide`): pending -> in_progress -> completed | failed | cancelled, and pending may
go straight to a terminal state. Terminal states are final. A duplicate is a no-op that returns
the current job. A late `in_progress` after a terminal state is ignored. Queue positions only
move forward (down), and log tails only move forward in time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from service.jobs.models import LOG_LINES_KEPT, TERMINAL_STATUSES, Job, JobChange, LogLine, NewJob
from service.jobs.rows import JOB_COLUMNS, job_from_row


class Applied(msgspec.Struct, frozen=True):
    job: Job | None
    """The job after the call; None when no such job exists (yet)."""
    accepted: bool


def _tail(logs: list[LogLine] | None) -> list[LogLine] | None:
    return None if logs is None else logs[-LOG_LINES_KEPT:]


def _newer_logs(current: list[LogLine] | None, offered: list[LogLine] | None) -> bool:
    if not offered:
        return False
    if not current:
        return True
    # fal sends the whole log so far; a shorter or older copy is a late duplicate.
    last_current, last_offered = current[-1].timestamp, offered[-1].timestamp
    if last_current is not None and last_offered is not None and last_offered != last_current:
        return last_offered > last_current
    return _tail(offered) != current and len(offered) >= len(current)


def decide(job: Job, change: JobChange, now: datetime) -> dict[str, Any] | None:
    """The columns to update, or None when the change does not move the job forward."""
    if job.status in TERMINAL_STATUSES:
        return None
    if change.status in TERMINAL_STATUSES:
        return {
            "status": change.status,
            "queue_position": None,
            "logs": _tail(change.logs) if _newer_logs(job.logs, change.logs) else job.logs,
            "result": change.result,
            "error": change.error,
            "error_type": change.error_type,
            "completed_at": now,
        }
    if change.status == "in_progress":
        if job.status == "pending":
            return {
                "status": "in_progress",
                "queue_position": None,
                "logs": _tail(change.logs) if _newer_logs(job.logs, change.logs) else job.logs,
            }
        if _newer_logs(job.logs, change.logs):
            return {"logs": _tail(change.logs)}
        return None
    # change.status == "pending": only a smaller queue position is news.
    if job.status != "pending" or change.queue_position is None:
        return None
    if job.queue_position is not None and change.queue_position >= job.queue_position:
        return None
    return {"queue_position": change.queue_position}


_INSERT_EVENT = (
    "INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)


async def lock_request(connection: asyncpg.Connection, request_id: str) -> None:
    """Serialize, until the transaction ends, everyone who may create or look up this request's
    row: a webhook that finds no row parks itself, and the job's creation must then see it."""
    await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", request_id)


async def create_job(connection: asyncpg.Connection, new: NewJob) -> Job:
    """Insert a `pending` job (version 1) and its first event."""
    now = datetime.now(UTC)
    job = Job(
        request_id=new.request_id,
        user_id=new.user_id,
        model_id=new.model_id,
        type=new.type,
        input=new.input,
        status="pending",
        queue_position=None,
        logs=None,
        result=None,
        error=None,
        error_type=None,
        mode=new.mode,
        version=1,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )
    async with connection.transaction():
        await lock_request(connection, job.request_id)
        await connection.execute(
            "INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, mode, version, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, 1, $7, $7)",
            job.request_id, job.user_id, job.model_id, job.type, job.input, job.mode, now,
        )
        await connection.execute(_INSERT_EVENT, job.request_id, job.user_id, 1, "pending", job, now)
    return job


async def apply_change(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied:
    """Apply `change` if the status machine allows it; see the module docstring.

    Two round trips and no explicit transaction: read the row, decide, then one statement that
    updates the row only if its version is still the one decided on (a compare-and-swap under the
    row lock that the UPDATE takes) and appends the event only if the update happened; the
    statement commits both or neither. Should another writer get there first, the row is read
    again and the change decided anew, so a change is never applied on a stale view. Works in the
    caller's transaction too.
    """
    for _ in range(_MAX_ATTEMPTS):
        row = await connection.fetchrow(f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1", request_id)
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        now = datetime.now(UTC)
        updates = decide(job, change, now)
        if updates is None:
            return Applied(job=job, accepted=False)
        updated = msgspec.structs.replace(job, **updates, version=job.version + 1, updated_at=now)
        n = len(updates)
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(updates, start=4))
        event_id = await connection.fetchval(
            f"WITH changed AS (UPDATE fal_jobs SET {assignments}, version = $2, updated_at = ${n + 4} "
            f"WHERE request_id = $1 AND version = $3 RETURNING 1) "
            f"INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at) "
            f"SELECT $1, ${n + 5}, $2, ${n + 6}, ${n + 7}, ${n + 4} FROM changed RETURNING id",
            request_id,
            updated.version,
            job.version,
            *updates.values(),
            now,
            updated.user_id,
            updated.status,
            updated,
        )
        if event_id is not None:
            return Applied(job=updated, accepted=True)
    raise RuntimeError(f"job {request_id!r}: gave up after {_MAX_ATTEMPTS} concurrent changes")


_MAX_ATTEMPTS = 100
