"""Reading jobs: one job of a user, and a user's jobs (all, or those with a tag) newest first with
keyset pagination."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from service.errors import InvalidRequest, NotFound
from service.jobs.models import JOB_STATUSES, JOB_TYPES, Job
from service.jobs.rows import JOB_COLUMNS, job_from_row
from service.jobs.tags import check_tag

if TYPE_CHECKING:
    import asyncpg

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class JobPage(msgspec.Struct, kw_only=True):
    jobs: list[Job]
    next_cursor: str | None


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    created_at: datetime
    request_id: str


def encode_cursor(job: Job) -> str:
    raw = msgspec.json.encode(_Cursor(job.created_at, job.request_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidRequest("cursor: not a cursor this API issued; pass next_cursor from the previous page") from None


def check_request_id(request_id: str) -> str:
    if not REQUEST_ID_PATTERN.match(request_id):
        raise InvalidRequest(
            "request_id: malformed; expected 1-128 letters, digits, '-' or '_' (fal's request ids are UUIDs)"
        )
    return request_id


async def get_job(connection: asyncpg.Connection | asyncpg.Pool, user_id: str, request_id: str) -> Job:
    """The user's job; another user's job is NotFound too, so that ids leak nothing."""
    check_request_id(request_id)
    row = await connection.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1 AND user_id = $2", request_id, user_id
    )
    if row is None:
        raise NotFound(f"job {request_id!r} not found")
    return job_from_row(row)


_LIST = (
    f"SELECT {JOB_COLUMNS} FROM fal_jobs "
    "WHERE user_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR type = $3) "
    "AND ($4::timestamptz IS NULL OR (created_at, request_id) < ($4, $5)) "
    "ORDER BY created_at DESC, request_id DESC LIMIT $6"
)
"""A page of the user's jobs, walking `fal_jobs_user_created`."""

_LIST_BY_TAG = (
    "SELECT " + ", ".join(f"j.{column.strip()}" for column in JOB_COLUMNS.split(",")) + " "
    "FROM fal_job_tags t JOIN fal_jobs j ON j.request_id = t.request_id "
    "WHERE t.user_id = $1 AND t.tag = $7 AND ($2::text IS NULL OR j.status = $2) AND ($3::text IS NULL OR j.type = $3) "
    "AND ($4::timestamptz IS NULL OR (t.created_at, t.request_id) < ($4, $5)) "
    "ORDER BY t.created_at DESC, t.request_id DESC LIMIT $6"
)
"""A page of the user's jobs carrying tag $7, walking `fal_job_tags`' key: the user's other jobs
are never read. The same keyset as `_LIST` (a tag row's created_at is its job's)."""


async def list_jobs(
    connection: asyncpg.Connection | asyncpg.Pool,
    user_id: str,
    *,
    status: str | None = None,
    type: str | None = None,
    tag: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> JobPage:
    if status is not None and status not in JOB_STATUSES:
        raise InvalidRequest(f"status: unknown status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
    if type is not None and type not in JOB_TYPES:
        raise InvalidRequest(f"type: unknown type {type!r}; expected one of {', '.join(JOB_TYPES)}")
    if tag is not None:
        check_tag(tag)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit: must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    args = [user_id, status, type, after.created_at if after else None, after.request_id if after else None, limit + 1]
    rows = await (connection.fetch(_LIST, *args) if tag is None else connection.fetch(_LIST_BY_TAG, *args, tag))
    jobs = [job_from_row(row) for row in rows[:limit]]
    next_cursor = encode_cursor(jobs[-1]) if len(rows) > limit else None
    return JobPage(jobs=jobs, next_cursor=next_cursor)


async def carries_tag(connection: asyncpg.Connection | asyncpg.Pool, user_id: str, request_id: str, tag: str) -> bool:
    """Whether the user's job `request_id` exists and carries `tag` (one primary-key read)."""
    return bool(await connection.fetchval(
        "SELECT $3 = ANY(tags) FROM fal_jobs WHERE request_id = $1 AND user_id = $2", request_id, user_id, tag
    ))
