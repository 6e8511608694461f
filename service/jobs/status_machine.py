"""The one place that changes a job, through three doors.

- `create_job` writes a new `pending` job (version 1).
- `apply_change` applies one change to one job: what fal told us (`JobChange`), one output's copy
  settled (`OutputSettled`), or the owner's deletion (`Deletion`). Each kind has one path.
- `finish_many` ends several open jobs in one statement (webhooks that arrive together, see
  `finish_batches`), each as `apply_change` would end it.

Each door makes what it is given storable once, on the way in (fal's text may hold NUL or lone
surrogates: escaped, never refused); nothing behind a door does it again. Every accepted change
bumps the row's `version`, and the `fal_jobs_write_event` trigger writes its one event from the
row (the job after the change; its INSERT fires the NOTIFY trigger): no path here writes an event.
The statements are in `sql.py`.

fal's news (`decide`): pending -> in_progress -> completed | failed | cancelled, and pending may
go straight to a terminal state. Terminal states are final. A duplicate is a no-op that returns
the current job. A late `in_progress` after a terminal state is ignored. Queue positions only
move forward (down), and log tails only move forward in time. A job's end without log lines (what
every webhook brings) skips the read: one statement ends the job only while it is open, which is
what `decide` would conclude, and falls back to the read when it is not. Anything else reads the
row, decides, and writes it only if its version is unchanged, deciding again on the fresh row when
another writer got there first. The job that completes gets one pending output row per media file
of its result, in the same statement.

After completion: an output settles only while it is pending and its worker's claim holds (the
output row and the job's `outputs` change together), and a finished job may be deleted (its
outputs too; the bytes are removed from the store after it commits).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from service import metrics
from service.db.storable import storable_struct
from service.jobs import sql
from service.jobs.costs import units_of_output
from service.jobs.media import MediaFile, media_files, pending_outputs
from service.jobs.models import (
    LOG_LINES_KEPT,
    TERMINAL_STATUSES,
    Deletion,
    Job,
    JobChange,
    JobCost,
    JobOutput,
    LogLine,
    NewJob,
    OutputSettled,
    OutputsReopened,
)
from service.jobs.rows import job_from_row

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Applied", "apply_change", "create_job", "decide", "finish_many"]

MAX_ATTEMPTS = 100
"""Compare-and-swap rounds a change gets against concurrent writers of the same job."""


class Applied(msgspec.Struct, frozen=True):
    job: Job | None
    """The job after the call; None when no such job exists (yet)."""
    accepted: bool


# --- The rules: pure --------------------------------------------------------------------------


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


# --- The doors --------------------------------------------------------------------------------


async def create_job(connection: asyncpg.Connection, new: NewJob) -> Job:
    """Insert a `pending` job (version 1); its first event comes with it."""
    new = storable_struct(new)
    now = datetime.now(UTC)
    job = Job(
        request_id=new.request_id, user_id=new.user_id, model_id=new.model_id, type=new.type, input=new.input,
        status="pending", queue_position=None, logs=None, result=None, error=None, error_type=None,
        mode=new.mode, version=1, created_at=now, updated_at=now, completed_at=None, tags=new.tags,
        metadata=new.metadata, cost=new.cost,
    )
    async with connection.transaction():
        await connection.execute(sql.LOCK_REQUEST, job.request_id)
        await connection.execute(
            sql.INSERT_JOB, job.request_id, job.user_id, job.model_id, job.type, job.input, job.mode, now, job.tags,
            job.metadata, job.cost,
        )
    return job


async def apply_change(
    connection: asyncpg.Connection, request_id: str,
    change: JobChange | OutputSettled | OutputsReopened | Deletion,
) -> Applied:
    """Apply `change` to the job if the rules allow it (see the module docstring): accepted, with
    the job after it, or not, with the job as it is. Works in the caller's transaction too."""
    if isinstance(change, JobChange):
        return await _apply_news(connection, request_id, storable_struct(change))
    if isinstance(change, OutputSettled):
        return await _settle_output(connection, request_id, storable_struct(change))
    if isinstance(change, OutputsReopened):
        return await _reopen_outputs(connection, request_id, change)
    return await _delete(connection, request_id, change)


async def finish_many(connection: asyncpg.Connection, changes: dict[str, JobChange]) -> dict[str, Job]:
    """End several open jobs in one statement (one commit): each as `apply_change` would end it,
    with its outputs queued and one event. Returns the jobs it ended; a job missing from the
    answer was not open (ended already, or no row yet): `apply_change` decides about it then.

    Every change must be `ends_without_logs`; the dict's keys make the request ids distinct."""
    return await _finish(connection, {request_id: storable_struct(change) for request_id, change in changes.items()})


# --- fal's news ---------------------------------------------------------------------------------


async def _apply_news(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied:
    """A job's end without log lines takes one round trip (`_finish`); anything else, and an end
    that `_finish` finds nothing to do for, takes two (`_read_decide_write`)."""
    if change.ends_without_logs:
        job = (await _finish(connection, {request_id: change})).get(request_id)
        if job is not None:
            return Applied(job=job, accepted=True)
    return await _read_decide_write(connection, request_id, change)


class _Ending(msgspec.Struct, frozen=True):
    """One row of the finish statements' `$1`."""

    request_id: str
    status: str
    result: Any
    error: str | None
    error_type: str | None
    outputs: list[JobOutput] | None
    units: dict[str, float] | None
    """What the output shows of the job's billing units, for its final cost (completed jobs only)."""


class _QueuedFile(msgspec.Struct, frozen=True):
    """One row of the output queue's `$3`."""

    request_id: str
    index: int
    kind: str
    url: str


def _queued(request_id: str, files: list[MediaFile]) -> list[_QueuedFile]:
    return [_QueuedFile(request_id, index, f.kind, f.url) for index, f in enumerate(files)]


async def _finish(connection: asyncpg.Connection, changes: dict[str, JobChange]) -> dict[str, Job]:
    """The change `decide` makes of a terminal change without logs on an open job, for each job,
    without reading the jobs first; the jobs it ended (one left out was not open)."""
    now = datetime.now(UTC)
    rows: list[_Ending] = []
    files: list[_QueuedFile] = []
    # In key order: two processes' batches sharing jobs lock their rows in the same order.
    for request_id, change in sorted(changes.items()):
        if not change.ends_without_logs:
            raise ValueError(f"job {request_id!r}: finish_many takes only terminal changes without logs")
        found = media_files(change.result) if change.status == "completed" else []
        files.extend(_queued(request_id, found))
        rows.append(_Ending(request_id, change.status, change.result, change.error, change.error_type,
                            pending_outputs(request_id, found) if found else None,
                            units_of_output(change.result) if change.status == "completed" else None))
    if len(rows) == 1:
        finished = await connection.fetch(sql.FINISH_ONE, rows, now, files, rows[0].request_id)
    else:
        finished = await connection.fetch(sql.FINISH_MANY, rows, now, files, [row.request_id for row in rows])
    jobs = {}
    for row in finished:
        job = job_from_row(row)
        metrics.job_finished(job.model_id, job.status, job.created_at, job.completed_at)
        jobs[job.request_id] = job
    return jobs


async def _read_decide_write(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied:
    """Two round trips and no explicit transaction: read the row, decide, then one statement that
    writes the job as decided only if its version is still the one decided on (a compare-and-swap
    under the row lock that the UPDATE takes). Should another writer get there first, the row is
    read again and the change decided anew, so a change is never applied on a stale view."""
    for _ in range(MAX_ATTEMPTS):
        row = await connection.fetchrow(sql.SELECT_JOB, request_id)
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        now = datetime.now(UTC)
        updates = decide(job, change, now)
        if updates is None:
            return Applied(job=job, accepted=False)
        files = media_files(change.result) if updates.get("status") == "completed" else []
        if files:
            updates["outputs"] = pending_outputs(request_id, files)
        new = msgspec.structs.replace(job, **updates, version=job.version + 1, updated_at=now)
        units = units_of_output(change.result) if new.status == "completed" else None
        written = await connection.fetchrow(
            sql.CHANGE_JOB, request_id, now, _queued(request_id, files), job.version, new.status,
            new.queue_position, new.logs, new.result, new.error, new.error_type, new.completed_at, new.outputs, units,
        )
        if written is not None:
            new = msgspec.structs.replace(new, cost=msgspec.convert(written["cost"], JobCost | None))
            if new.is_terminal:
                metrics.job_finished(new.model_id, new.status, new.created_at, new.completed_at)
            return Applied(job=new, accepted=True)
    raise RuntimeError(f"job {request_id!r}: gave up after {MAX_ATTEMPTS} concurrent changes")


# --- After completion ---------------------------------------------------------------------------


async def _settle_output(connection: asyncpg.Connection, request_id: str, settled: OutputSettled) -> Applied:
    """Record a copy's outcome, if the output is still pending and the worker's claim still holds it.

    Not accepted when the job was deleted meanwhile, or when another worker's claim replaced this
    one (this one's lease lapsed): the caller then owns the bytes it wrote and removes them."""
    index, outcome = settled.index, settled.outcome
    async with connection.transaction():
        row = await connection.fetchrow(sql.LOCK_JOB, request_id)
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        output_row = await connection.fetchrow(sql.LOCK_OUTPUT, request_id, index)
        if (
            job.status != "completed" or output_row is None or output_row["status"] != "pending"
            or output_row["claim"] != settled.claim or index >= len(job.outputs)
        ):
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        outputs = list(job.outputs)
        outputs[index] = msgspec.structs.replace(
            outputs[index], status=outcome.status, content_type=outcome.content_type, size=outcome.size,
            sha256=outcome.sha256, error=outcome.error,
        )
        await connection.execute(
            sql.SETTLE_OUTPUT, request_id, index, outcome.status, outcome.content_type, outcome.size,
            outcome.sha256, outcome.store_key, outcome.error, now, outcome.retryable,
        )
        await connection.execute(sql.SET_STATUS_AND_OUTPUTS, request_id, job.status, outputs, now)
    metrics.output_copied(outcome.status, outcome.size)
    return Applied(job=msgspec.structs.replace(job, outputs=outputs, version=job.version + 1, updated_at=now),
                   accepted=True)


async def _reopen_outputs(connection: asyncpg.Connection, request_id: str, reopened: OutputsReopened) -> Applied:
    """Set the job's `failed` outputs among `indexes` `pending` again: the copy workers take them as
    new. Not accepted when none of them is failed any more or the job is no longer `completed`
    (deleted meanwhile)."""
    async with connection.transaction():
        row = await connection.fetchrow(sql.LOCK_JOB, request_id)
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        if job.status != "completed":
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        again = {r["index"] for r in await connection.fetch(sql.REOPEN_OUTPUTS, request_id, reopened.indexes, now)}
        if not again:
            return Applied(job=job, accepted=False)
        outputs = [
            msgspec.structs.replace(output, status="pending", error=None) if output.index in again else output
            for output in job.outputs
        ]
        await connection.execute(sql.SET_STATUS_AND_OUTPUTS, request_id, job.status, outputs, now)
    return Applied(job=msgspec.structs.replace(job, outputs=outputs, version=job.version + 1, updated_at=now),
                   accepted=True)


async def _delete(connection: asyncpg.Connection, request_id: str, deletion: Deletion) -> Applied:
    """Mark a finished job `deleted`, and its outputs with it. Not accepted for a job that is
    still running (cancel it first) or already deleted; None for another user's job."""
    async with connection.transaction():
        row = await connection.fetchrow(sql.LOCK_JOB, request_id)
        if row is None or row["user_id"] != deletion.user_id:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        if job.status not in TERMINAL_STATUSES or job.status == "deleted":
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        outputs = [msgspec.structs.replace(output, status="deleted") for output in job.outputs]
        await connection.execute(sql.STOP_OUTPUTS, request_id, now)
        await connection.execute(sql.SET_STATUS_AND_OUTPUTS, request_id, "deleted", outputs, now)
    return Applied(job=msgspec.structs.replace(job, status="deleted", outputs=outputs, version=job.version + 1,
                                               updated_at=now), accepted=True)
