"""The one place that changes a job.

`create_job` writes a new job and its first event; `apply_change` reads the row, asks `decide`
whether the change moves the job forward, and if so, in one statement (one transaction), updates
the row under its lock only if its version is unchanged, bumps `version` and appends exactly one
event; when another writer got there first it decides again on the fresh row. A job's end
without log lines (what every webhook brings) skips the read: one statement ends the job only
while it is open, which is what `decide` would conclude, and falls back to the read when it is
not; `finish_many` does the same for several jobs in one statement (webhooks that arrive together,
see `finish_batches`). The event row carries the job as it is after the change, so readers of the
event log never need a second query; its INSERT fires the NOTIFY trigger.

The rules (`decide`): pending -> in_progress -> completed | failed | cancelled, and pending may
go straight to a terminal state. Terminal states are final. A duplicate is a no-op that returns
the current job. A late `in_progress` after a terminal state is ignored. Queue positions only
move forward (down), and log tails only move forward in time.

Two more kinds of change follow completion. `apply_output_change` records that one media file of
a completed job was copied into our store (or could not be): the output row and the job's
`outputs` change together, with one more event. `delete_job` marks a finished job `deleted`:
its outputs too, with one event; the bytes are removed from the store after it commits. The job
that completes gets one pending output row per media file of its result, in the same statement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec

from service import metrics
from service.db.storable import storable_struct
from service.jobs.media import media_files, pending_outputs
from service.jobs.models import (
    LOG_LINES_KEPT,
    TERMINAL_STATUSES,
    Job,
    JobChange,
    JobOutput,
    LogLine,
    NewJob,
)
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
    new = storable_struct(new)
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
    """Apply `change` if the status machine allows it; see the module docstring. Works in the
    caller's transaction too.

    A job's end without log lines (every webhook, most of all) takes one round trip: `_finish`.
    Anything else, and an end that `_finish` finds nothing to do for, takes two: `_read_decide_write`.
    """
    change = storable_struct(change)  # fal's text may hold NUL or lone surrogates: escaped, never refused
    if can_finish_at_once(change):
        finished = await _finish(connection, request_id, change)
        if finished is not None:
            return finished
    return await _read_decide_write(connection, request_id, change)


def _msgspec_timestamp(column: str) -> str:
    """SQL that writes a timestamptz as msgspec writes a UTC datetime: `...T01:02:03.123456Z`,
    without the fraction when it is zero."""
    return (f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
            f"extract(microseconds FROM {column})::bigint % 1000000 = 0 THEN '' "
            f"ELSE to_char({column} AT TIME ZONE 'UTC', '.US') END || 'Z'")


_OPEN = "status NOT IN (" + ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES)) + ")"


async def _finish(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied | None:
    """The change `decide` makes of a terminal change without logs on an open job, without reading
    the job first; None when the job is not open (already ended, or not there): decide then."""
    job = (await _finish_many(connection, {request_id: change})).get(request_id)
    return None if job is None else Applied(job=job, accepted=True)


_J_COLUMNS = ", ".join(f"j.{column.strip()}" for column in JOB_COLUMNS.split(","))


def _finish_statement(rows_wanted: str) -> str:
    return f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS i(request_id text, status text, result jsonb, error text, error_type text, outputs jsonb)
), changed AS (
    UPDATE fal_jobs j SET status = i.status, queue_position = NULL, result = i.result, error = i.error,
        error_type = i.error_type, completed_at = $2, updated_at = $2, version = j.version + 1,
        outputs = coalesce(i.outputs, j.outputs)
    FROM input i
    -- The ids again as an array: joined to a function's rows alone, the planner scans the table.
    WHERE {rows_wanted} AND j.request_id = i.request_id AND j.{_OPEN}
    RETURNING {_J_COLUMNS}
), queued AS (
    INSERT INTO fal_job_outputs (request_id, index, user_id, kind, source_url, created_at, updated_at, next_attempt_at)
    SELECT t.request_id, t.index, changed.user_id, t.kind, t.url, $2, $2, $2
    FROM jsonb_to_recordset($3::jsonb) AS t(request_id text, index int, kind text, url text)
    JOIN changed ON changed.request_id = t.request_id
    ON CONFLICT DO NOTHING
), event AS (
    INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at)
    SELECT request_id, user_id, version, status,
        to_jsonb(changed) || jsonb_build_object('created_at', {_msgspec_timestamp("changed.created_at")}) || $4::jsonb,
        $2
    FROM changed
)
SELECT {JOB_COLUMNS} FROM changed
"""


_FINISH_MANY = _finish_statement("j.request_id = ANY($5::text[])")
"""Jobs' ends in one statement: each row is updated only while it is open (the row lock the UPDATE
takes re-checks that against a concurrent writer's commit), its outputs are queued, and its event
carries the job after the change. The event's JSON is the row's, with the timestamps written as
msgspec writes them (`updated_at` and `completed_at` come from here, `created_at` is formatted
above), so it equals what `_read_decide_write` would have stored (tests/test_status_machine.py
compares the two)."""
_FINISH_ONE = _finish_statement("j.request_id = $5::text")
"""The same for one job: its id as a scalar lets Postgres keep one generic plan for the statement.
With an array it planned each execution anew (a custom plan looks cheaper for a 1-element array
than the generic one for any array): 0.66-0.69 ms a round trip against 0.38-0.40 ms."""


class _Finishing(msgspec.Struct, frozen=True):
    request_id: str
    status: str
    result: Any
    error: str | None
    error_type: str | None
    outputs: list[JobOutput] | None


class _QueuedFile(msgspec.Struct, frozen=True):
    request_id: str
    index: int
    kind: str
    url: str


def can_finish_at_once(change: JobChange) -> bool:
    """A job's end without log lines: what `finish_many` (and `_finish`) apply without a read."""
    return change.status in TERMINAL_STATUSES and not change.logs


async def finish_many(connection: asyncpg.Connection, changes: dict[str, JobChange]) -> dict[str, Job]:
    """End several open jobs in one statement (one commit): each as `apply_change` would end it,
    with its outputs queued and one event. Returns the jobs it ended; a job missing from the
    answer was not open (ended already, or no row yet): `apply_change` decides about it then.

    Every change must pass `can_finish_at_once`; the dict's keys make the request ids distinct."""
    return await _finish_many(connection, {request_id: storable_struct(change) for request_id, change in changes.items()})


async def _finish_many(connection: asyncpg.Connection, changes: dict[str, JobChange]) -> dict[str, Job]:
    """`finish_many` for changes already made storable (`apply_change` does that first)."""
    now = datetime.now(UTC)
    rows: list[_Finishing] = []
    files: list[_QueuedFile] = []
    # In key order: two processes' batches sharing jobs lock their rows in the same order.
    for request_id, change in sorted(changes.items()):
        if not can_finish_at_once(change):
            raise ValueError(f"job {request_id!r}: finish_many takes only terminal changes without logs")
        found = media_files(change.result) if change.status == "completed" else []
        files.extend(_QueuedFile(request_id, index, f.kind, f.url) for index, f in enumerate(found))
        rows.append(_Finishing(request_id, change.status, change.result, change.error, change.error_type,
                               pending_outputs(request_id, found) if found else None))
    statement, ids = (_FINISH_ONE, rows[0].request_id) if len(rows) == 1 else (_FINISH_MANY, [r.request_id for r in rows])
    finished = await connection.fetch(statement, rows, now, files, {"updated_at": now, "completed_at": now}, ids)
    jobs = {}
    for row in finished:
        job = job_from_row(row)
        metrics.job_finished(job.model_id, job.status, job.created_at, job.completed_at)
        jobs[job.request_id] = job
    return jobs


async def read_decide_write(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied:
    """`apply_change` without its one-statement end: for a change `finish_many` left alone."""
    return await _read_decide_write(connection, request_id, storable_struct(change))


async def _read_decide_write(connection: asyncpg.Connection, request_id: str, change: JobChange) -> Applied:
    """Two round trips and no explicit transaction: read the row, decide, then one statement that
    updates the row only if its version is still the one decided on (a compare-and-swap under the
    row lock that the UPDATE takes) and appends the event only if the update happened; the
    statement commits both or neither. Should another writer get there first, the row is read
    again and the change decided anew, so a change is never applied on a stale view."""
    for _ in range(_MAX_ATTEMPTS):
        row = await connection.fetchrow(f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1", request_id)
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
        updated = msgspec.structs.replace(job, **updates, version=job.version + 1, updated_at=now)
        n = len(updates)
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(updates, start=4))
        # Each media file of a completing job becomes a pending row of the copy queue, in the
        # same statement: a completed job never lacks its copy work.
        outputs_cte = (
            f", queued AS (INSERT INTO fal_job_outputs (request_id, index, user_id, kind, source_url, "
            f"created_at, updated_at, next_attempt_at) SELECT $1, t.i, ${n + 5}, t.k, t.u, ${n + 4}, ${n + 4}, ${n + 4} "
            f"FROM changed, unnest(${n + 8}::int[], ${n + 9}::text[], ${n + 10}::text[]) AS t(i, k, u) "
            f"ON CONFLICT DO NOTHING)"
        ) if files else ""
        event_id = await connection.fetchval(
            f"WITH changed AS (UPDATE fal_jobs SET {assignments}, version = $2, updated_at = ${n + 4} "
            f"WHERE request_id = $1 AND version = $3 RETURNING 1){outputs_cte} "
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
            *((list(range(len(files))), [f.kind for f in files], [f.url for f in files]) if files else ()),
        )
        if event_id is not None:
            if updated.is_terminal:
                metrics.job_finished(updated.model_id, updated.status, updated.created_at, updated.completed_at)
            return Applied(job=updated, accepted=True)
    raise RuntimeError(f"job {request_id!r}: gave up after {_MAX_ATTEMPTS} concurrent changes")


_MAX_ATTEMPTS = 100


class OutputChange(msgspec.Struct, kw_only=True, frozen=True):
    """What a copy worker found out about one output: stored (with what), or failed (why)."""

    status: Literal["stored", "failed"]
    content_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    store_key: str | None = None
    error: str | None = None
    retryable: bool = False
    """A failure that may pass (a budget of transient failures spent): the sweep re-drives it."""


async def _append_event(connection: asyncpg.Connection, job: Job, now: datetime) -> None:
    await connection.execute(_INSERT_EVENT, job.request_id, job.user_id, job.version, job.status, job, now)


async def apply_output_change(
    connection: asyncpg.Connection, request_id: str, index: int, change: OutputChange, *, claim: str | None
) -> Applied:
    """Record a copy's outcome, if the output is still pending and `claim` still holds it.

    Not accepted when the job was deleted meanwhile, or when another worker's claim replaced this
    one (this one's lease lapsed): the caller then owns the bytes it wrote and removes them.
    """
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1 FOR UPDATE", request_id
        )
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        output_row = await connection.fetchrow(
            "SELECT status, claim FROM fal_job_outputs WHERE request_id = $1 AND index = $2 FOR UPDATE",
            request_id, index,
        )
        if (
            job.status != "completed" or output_row is None or output_row["status"] != "pending"
            or output_row["claim"] != claim or index >= len(job.outputs)
        ):
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        current = job.outputs[index]
        outputs = list(job.outputs)
        outputs[index] = JobOutput(
            index=index, kind=current.kind, status=change.status, url=current.url,
            content_type=change.content_type, size=change.size, sha256=change.sha256, error=change.error,
        )
        updated = msgspec.structs.replace(job, outputs=outputs, version=job.version + 1, updated_at=now)
        await connection.execute(
            "UPDATE fal_job_outputs SET status = $3, content_type = $4, size = $5, sha256 = $6, store_key = $7, "
            "last_error = coalesce($8, last_error), claim = NULL, lease_until = NULL, updated_at = $9, retryable = $10 "
            "WHERE request_id = $1 AND index = $2",
            request_id, index, change.status, change.content_type, change.size, change.sha256, change.store_key,
            change.error, now, change.retryable,
        )
        await connection.execute(
            "UPDATE fal_jobs SET outputs = $2, version = $3, updated_at = $4 WHERE request_id = $1",
            request_id, outputs, updated.version, now,
        )
        await _append_event(connection, updated, now)
    metrics.output_copied(change.status, change.size)
    return Applied(job=updated, accepted=True)


async def reopen_failed_outputs(connection: asyncpg.Connection, request_id: str, indexes: list[int]) -> Applied:
    """Set the job's `failed` outputs among `indexes` `pending` again, with fresh budgets: the
    copy workers take them as new (one event). Not accepted when none of them is failed any more
    or the job is no longer `completed` (deleted meanwhile)."""
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1 FOR UPDATE", request_id
        )
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        if job.status != "completed":
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        reopened = await connection.fetch(
            "UPDATE fal_job_outputs SET status = 'pending', attempts = 0, store_failures = 0, retryable = false, "
            "claim = NULL, lease_until = NULL, next_attempt_at = $3, updated_at = $3 "
            "WHERE request_id = $1 AND index = ANY($2::int[]) AND status = 'failed' RETURNING index",
            request_id, indexes, now,
        )
        again = {r["index"] for r in reopened}
        if not again:
            return Applied(job=job, accepted=False)
        outputs = [
            msgspec.structs.replace(output, status="pending", error=None) if output.index in again else output
            for output in job.outputs
        ]
        updated = msgspec.structs.replace(job, outputs=outputs, version=job.version + 1, updated_at=now)
        await connection.execute(
            "UPDATE fal_jobs SET outputs = $2, version = $3, updated_at = $4 WHERE request_id = $1",
            request_id, outputs, updated.version, now,
        )
        await _append_event(connection, updated, now)
    return Applied(job=updated, accepted=True)


async def delete_job(connection: asyncpg.Connection, request_id: str, user_id: str) -> Applied:
    """Mark a finished job `deleted`, and its outputs with it. Not accepted for a job that is
    still running (cancel it first) or already deleted; None for another user's job."""
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1 AND user_id = $2 FOR UPDATE",
            request_id, user_id,
        )
        if row is None:
            return Applied(job=None, accepted=False)
        job = job_from_row(row)
        if job.status not in TERMINAL_STATUSES or job.status == "deleted":
            return Applied(job=job, accepted=False)
        now = datetime.now(UTC)
        outputs = [msgspec.structs.replace(output, status="deleted") for output in job.outputs]
        updated = msgspec.structs.replace(
            job, status="deleted", outputs=outputs, version=job.version + 1, updated_at=now
        )
        # The copy queue stops here; rows whose bytes are in the store stay due, so that a
        # removal that fails below is retried by the workers.
        await connection.execute(
            "UPDATE fal_job_outputs SET status = 'deleted', claim = NULL, lease_until = NULL, next_attempt_at = $2, "
            "updated_at = $2 WHERE request_id = $1",
            request_id, now,
        )
        await connection.execute(
            "UPDATE fal_jobs SET status = 'deleted', outputs = $2, version = $3, updated_at = $4 WHERE request_id = $1",
            request_id, outputs, updated.version, now,
        )
        await _append_event(connection, updated, now)
    return Applied(job=updated, accepted=True)
