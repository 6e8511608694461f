"""Reading one output, for serving it: what the HTTP layer calls (deleting a job's media is the
`delete_job` use case)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import msgspec

from service.errors import Conflict, NotFound
from service.jobs import queries

if TYPE_CHECKING:
    import asyncpg

    from service.outputs.store import MediaStore

log = logging.getLogger(__name__)

DB_TIMEOUT_S = 10.0

MAX_OUTPUT_INDEX = 2**31 - 1
"""Output indexes are int4 in the database."""


class OutputRecord(msgspec.Struct, frozen=True):
    request_id: str
    index: int
    kind: str
    status: str
    source_url: str
    content_type: str | None
    size: int | None
    sha256: str | None
    store_key: str | None
    last_error: str | None


def output_scope(request_id: str, index: int) -> str:
    """The scope of a signed token that opens this one output and nothing else."""
    return f"output:{request_id}:{index}"


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_DIGITS = 18
"""More digits than this name a position past any object (Python also refuses to turn more than
4,300 digits into an int), so such a number counts as this one."""
BEYOND_ANY_SIZE = 10**MAX_DIGITS


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_DIGITS else BEYOND_ANY_SIZE


class ByteRange(msgspec.Struct, frozen=True):
    start: int
    end: int
    """Exclusive."""


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=` range of RFC 9110 against an object of `size` bytes; None means the whole
    object (no header, or one we may ignore: several ranges, another unit, a malformed one)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        length = _position(last)
        if length == 0:
            raise RangeNotSatisfiable
        return ByteRange(start=max(size - length, 0), end=size)
    start = _position(first)
    if start >= size:
        raise RangeNotSatisfiable
    end = size if last == "" else min(_position(last) + 1, size)
    if end <= start:
        return None  # last < first: syntactically invalid, so ignored
    return ByteRange(start=start, end=end)


class MediaAccess:
    def __init__(self, pool: asyncpg.Pool, store: MediaStore) -> None:
        self._pool = pool
        self.store = store

    async def output(self, user_id: str, request_id: str, index: int) -> OutputRecord:
        """The user's output; another user's is NotFound, like their jobs."""
        queries.check_request_id(request_id)
        if not 0 <= index <= MAX_OUTPUT_INDEX:  # the column is an int4: a larger index would be a 500
            raise NotFound(f"output {index} of job {request_id!r} not found")
        row = await self._pool.fetchrow(
            "SELECT o.request_id, o.index, o.kind, o.status, o.source_url, o.content_type, o.size, o.sha256, "
            "o.store_key, o.last_error FROM fal_job_outputs o WHERE o.request_id = $1 AND o.index = $2 "
            "AND o.user_id = $3",
            request_id, index, user_id, timeout=DB_TIMEOUT_S,
        )
        if row is None:
            await self._no_output_yet(user_id, request_id)
            raise NotFound(f"output {index} of job {request_id!r} not found")
        return msgspec.convert(dict(row), OutputRecord)

    async def _no_output_yet(self, user_id: str, request_id: str) -> None:
        """Why a job has no such output: not the user's (404), or not completed (409 naming its
        state), so that a client polling for output 0 learns to wait rather than give up."""
        job = await queries.get_job(self._pool, user_id, request_id)
        if job.status in ("pending", "in_progress"):
            raise Conflict(f"job {request_id!r} is {job.status}; its outputs exist once it is completed "
                           f"(GET /api/jobs/{request_id}?wait=60 answers then)")
        if job.status in ("failed", "cancelled"):
            detail = f" ({job.error})" if job.error else ""
            raise Conflict(f"job {request_id!r} is {job.status}{detail}; only a completed job has outputs")
