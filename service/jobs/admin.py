"""What an operator reads: every job across users (filtered, keyset-paged), one job's timeline.

Admins are users with `fal_users.is_admin`; whoever else asks is told nothing exists (the HTTP
layer answers 404), so the admin routes leak neither jobs nor their own existence.
The list walks `fal_jobs_created` (created_at, request_id) newest first, as a user's list walks
`fal_jobs_user_created`; the filters are conditions on the rows the walk meets, so a page reads
what it shows plus what the filters skip.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from service.errors import InvalidRequest, NotFound
from service.jobs.delivery_log import LoggedDelivery, deliveries_of
from service.jobs.models import JOB_STATUSES, Job
from service.jobs.queries import MAX_PAGE_SIZE, check_request_id, decode_cursor, encode_cursor
from service.jobs.rows import JOB_COLUMNS
from service.jobs.tags import check_tag

if TYPE_CHECKING:
    from collections.abc import Collection

    import asyncpg

MAX_TEXT = 200


async def is_admin(connection: asyncpg.Connection | asyncpg.Pool, user_id: str) -> bool:
    return bool(await connection.fetchval("SELECT is_admin FROM fal_users WHERE id = $1", user_id))


_NOT_ADMINS = """
SELECT asked.id FROM unnest($1::text[]) AS asked(id)
WHERE NOT EXISTS (SELECT 1 FROM fal_users u WHERE u.id = asked.id AND u.is_admin)
"""


async def not_admins_among(pool: asyncpg.Pool, user_ids: Collection[str]) -> set[str]:
    """Which of these users are not admins (any more): one query for all of them."""
    return {row[0] for row in await pool.fetch(_NOT_ADMINS, list(user_ids))}


def parse_moment(name: str, value: str | None, *, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (with its offset; none means UTC), or a span back from now: `90m`, `24h`, `7d`."""
    if value is None or value == "":
        return None
    now = now or datetime.now(UTC)
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[-1:] in units and value[:-1].isdigit() and len(value) <= 8:
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an ISO 8601 time (2026-12-05T13:00:00Z) or a span back "
                             f"from now (90m, 24h, 7d), got {value[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class JobFilter(msgspec.Struct, kw_only=True, frozen=True):
    status: str | None = None
    model: str | None = None
    user: str | None = None
    """A user's name (as `users create` gave it; case does not matter)."""
    tag: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    """Found in the prompt or the error, case ignored."""

    def checked(self) -> JobFilter:
        if self.status is not None and self.status not in JOB_STATUSES:
            raise InvalidRequest(f"status: unknown status {self.status!r}; expected one of {', '.join(JOB_STATUSES)}")
        if self.tag is not None:
            check_tag(self.tag)
        if self.text is not None and len(self.text) > MAX_TEXT:
            raise InvalidRequest(f"q: at most {MAX_TEXT} characters")
        for name, value in (("model", self.model), ("user", self.user), ("q", self.text)):
            if value is not None and "\x00" in value:
                raise InvalidRequest(f"{name}: must not contain U+0000")
        return self


class AdminJob(Job, kw_only=True):
    user_name: str | None


class AdminJobPage(msgspec.Struct, kw_only=True):
    jobs: list[AdminJob]
    next_cursor: str | None


_ADMIN_COLUMNS = ", ".join(f"j.{column.strip()}" for column in JOB_COLUMNS.split(","))
_LIST = (
    f"SELECT {_ADMIN_COLUMNS}, u.name AS user_name FROM fal_jobs j LEFT JOIN fal_users u ON u.id = j.user_id "
    "WHERE ($1::text IS NULL OR j.status = $1) AND ($2::text IS NULL OR j.model_id = $2) "
    "AND ($3::text IS NULL OR j.user_id = (SELECT id FROM fal_users WHERE lower(name) = lower($3))) "
    "AND ($4::text IS NULL OR $4 = ANY(j.tags)) "
    "AND ($5::timestamptz IS NULL OR j.created_at >= $5) AND ($6::timestamptz IS NULL OR j.created_at < $6) "
    "AND ($7::text IS NULL OR j.input ->> 'prompt' ILIKE $7 OR j.error ILIKE $7) "
    "AND ($8::timestamptz IS NULL OR (j.created_at, j.request_id) < ($8, $9)) "
    "ORDER BY j.created_at DESC, j.request_id DESC LIMIT $10"
)


def _like(text: str | None) -> str | None:
    if text is None or text == "":
        return None
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_all_jobs(connection: asyncpg.Connection | asyncpg.Pool, where: JobFilter, *, limit: int = 20,
                        cursor: str | None = None, max_limit: int = MAX_PAGE_SIZE) -> AdminJobPage:
    where = where.checked()
    if not 1 <= limit <= max_limit:
        raise InvalidRequest(f"limit: must be between 1 and {max_limit}, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    rows = await connection.fetch(_LIST, where.status, where.model, where.user, where.tag, where.since, where.until,
                                  _like(where.text), after.created_at if after else None,
                                  after.request_id if after else None, limit + 1)
    jobs = [msgspec.convert(dict(row), AdminJob) for row in rows[:limit]]
    return AdminJobPage(jobs=jobs, next_cursor=encode_cursor(jobs[-1]) if len(rows) > limit else None)


class TimelineEvent(msgspec.Struct, kw_only=True):
    id: int
    version: int
    status: str
    at: str
    queue_position: int | None
    error: str | None
    logs: int
    """Log lines the job had by then."""


class OutputCopy(msgspec.Struct, kw_only=True):
    index: int
    kind: str
    status: str
    attempts: int
    last_error: str | None
    size: int | None
    updated_at: str


class Timeline(msgspec.Struct, kw_only=True):
    job: AdminJob
    events: list[TimelineEvent]
    deliveries: list[LoggedDelivery]
    outputs: list[OutputCopy]
    cost: Any


async def timeline(connection: asyncpg.Connection | asyncpg.Pool, request_id: str) -> Timeline:
    check_request_id(request_id)
    row = await connection.fetchrow(
        f"SELECT {_ADMIN_COLUMNS}, u.name AS user_name FROM fal_jobs j LEFT JOIN fal_users u ON u.id = j.user_id "
        "WHERE j.request_id = $1", request_id)
    if row is None:
        raise NotFound(f"job {request_id!r} not found")
    job = msgspec.convert(dict(row), AdminJob)
    events = [TimelineEvent(id=e["id"], version=e["version"], status=e["status"], at=e["created_at"].isoformat(),
                            queue_position=e["queue_position"], error=e["error"], logs=e["logs"] or 0)
              for e in await connection.fetch(
                  "SELECT id, version, status, created_at, (data ->> 'queue_position')::int AS queue_position, "
                  "data ->> 'error' AS error, jsonb_array_length(coalesce(nullif(data -> 'logs', 'null'), '[]')) AS logs "
                  "FROM fal_job_events WHERE request_id = $1 ORDER BY id", request_id)]
    outputs = [OutputCopy(index=o["index"], kind=o["kind"], status=o["status"], attempts=o["attempts"],
                          last_error=o["last_error"], size=o["size"], updated_at=o["updated_at"].isoformat())
               for o in await connection.fetch(
                   "SELECT index, kind, status, attempts, last_error, size, updated_at FROM fal_job_outputs "
                   "WHERE request_id = $1 ORDER BY index", request_id)]
    return Timeline(job=job, events=events, deliveries=await deliveries_of(connection, request_id), outputs=outputs,
                    cost=msgspec.to_builtins(job.cost))


