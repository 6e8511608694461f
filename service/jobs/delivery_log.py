"""The delivery log: what fal sent us and what we decided, one row per webhook or sweep decision.

The webhook path is hot, so a delivery is never written on its own: `record` only queues the entry
and returns; one writer task per process inserts what has gathered in one statement (an
`unnest` of arrays) while the next batch fills, as `FinishBatches` does for job ends. A lone
webhook is written at once; a burst of them goes in a few statements. The log is a record, not a
decision: a failed insert is logged and dropped, never a refused webhook. `flush` waits for what
is queued (a timeline read in this process sees its own deliveries; the shutdown keeps them).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_QUEUED = 20_000
"""Entries waiting at most; past it (the database away for long) new ones are dropped and counted."""

Source = Literal["webhook", "sweep"]

_INSERT = (
    "INSERT INTO fal_deliveries (received_at, request_id, source, outcome, reason, status, duration_us) "
    "SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::integer[])"
)


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    received_at: float
    """Unix time the delivery arrived (the row's time, not the insert's)."""
    request_id: str | None
    source: Source
    outcome: str
    reason: str | None = None
    status: str | None = None
    duration_us: int = 0


class DeliveryLog:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, max_queued: int = MAX_QUEUED) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queued: list[Delivery] = []
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0
        self.batches = 0
        """Statements written (what a test or a bench reads to see the batching)."""

    def record(self, delivery: Delivery) -> None:
        if len(self._queued) >= self._max_queued:
            self.dropped += 1
            return
        self._queued.append(delivery)
        if self._writer is None:
            # A context of its own: the task outlives the request that started it.
            self._writer = asyncio.create_task(self._write(), name="delivery-log", context=contextvars.Context())

    async def flush(self) -> None:
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        from datetime import UTC, datetime

        try:
            while self._queued:
                batch, self._queued = self._queued[: self._max_batch], self._queued[self._max_batch:]
                columns: tuple[list[object], ...] = ([], [], [], [], [], [], [])
                for entry in batch:
                    for column, value in zip(columns, (
                            datetime.fromtimestamp(entry.received_at, UTC), entry.request_id, entry.source,
                            entry.outcome, entry.reason, entry.status, entry.duration_us), strict=True):
                        column.append(value)
                try:
                    await self._pool.execute(_INSERT, *columns)
                    self.batches += 1
                except Exception as error:  # a record only: the deliveries themselves were answered
                    self.dropped += len(batch)
                    log.warning("could not write the delivery log; entries dropped",
                                extra={"action": "delivery_log.failed", "entries": len(batch),
                                       "error": type(error).__name__})
        finally:
            self._writer = None


_FOR_JOB = (
    "SELECT received_at, source, outcome, reason, status, duration_us FROM fal_deliveries "
    "WHERE request_id = $1 ORDER BY id LIMIT $2"
)


class LoggedDelivery(msgspec.Struct, kw_only=True):
    received_at: str
    source: str
    outcome: str
    reason: str | None
    status: str | None
    duration_us: int


async def deliveries_of(connection: asyncpg.Connection | asyncpg.Pool, request_id: str,
                        limit: int = 1000) -> list[LoggedDelivery]:
    rows = await connection.fetch(_FOR_JOB, request_id, limit)
    return [LoggedDelivery(received_at=row["received_at"].isoformat(), source=row["source"], outcome=row["outcome"],
                           reason=row["reason"], status=row["status"], duration_us=row["duration_us"])
            for row in rows]
