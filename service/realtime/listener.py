"""The one LISTEN connection of a process, kept apart from the business code.

A dedicated asyncpg connection (not from the pool, so it can go past a transaction-mode pooler
via LISTEN_DATABASE_URL) LISTENs on `fal_job_events`. A notification only wakes the loop: each
wake-up reads every new event row in one query, runs it through the `EventCursor` (which keeps ids
in order across out-of-order commits), and publishes what it releases to the hub. Notifications
carry ids only, so nothing is ever known only from a notification.

When the connection drops (pg_terminate_backend, a Postgres restart), the loop reconnects with
capped backoff and reads from where the cursor stands: open streams stay open meanwhile and miss
nothing. The backoff resets only after a read succeeds, so a connection that opens and then fails
at once does not spin. While the cursor waits on a gap (a transaction that took an id but has not
committed) the loop re-reads on a short timer, because a rollback sends no notification. An event
that commits after its gap was skipped (see `cursor`) is published as late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import asyncpg

from service import metrics
from service.db.pool import is_unavailable
from service.realtime.cursor import EventCursor
from service.realtime.events import EVENT_COLUMNS, JobEvent, event_from_row

if TYPE_CHECKING:
    from service.realtime.hub import Hub

log = logging.getLogger(__name__)

CHANNEL = "fal_job_events"
APPLICATION_NAME = "fal-jobs-listener"
BATCH = 1000
STARTUP_LOOKBACK = 1000
"""At start the cursor sits this many ids below the newest event, so that transactions still in
flight at start-up (holding lower ids) are not skipped."""

READ_TIMEOUT_S = 10.0
"""A read that takes longer means a dead connection (a NAT dropped it silently): reconnect."""

_READ = f"""
SELECT s.xmin, s.xmax, e.*
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) s
LEFT JOIN LATERAL (
    (SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE id > $1 ORDER BY id LIMIT $2)
    UNION ALL
    (SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE id = ANY($3::bigint[]) AND id <= $1)
) e ON true
"""
"""New rows above what was read, and the ids still wanted below it (open gaps, ids skipped by the
gap timeout), with the snapshot's xmin and xmax, in one statement and so one snapshot."""


class EventListener:
    def __init__(self, dsn: str, hub: Hub, *, idle_check_s: float = 30.0, max_backoff_s: float = 1.0,
                 connect_timeout_s: float = 2.0, read_timeout_s: float = READ_TIMEOUT_S,
                 gap_timeout_s: float = 30.0, max_held: int = 10_000) -> None:
        self._dsn = dsn
        self._hub = hub
        self._idle_check_s = idle_check_s
        self._max_backoff_s = max_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._gap_timeout_s = gap_timeout_s
        self._max_held = max_held
        self._failures = 0
        self._wake = asyncio.Event()
        self._cursor: EventCursor | None = None
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.reconnects = 0
        self.reads = 0

    @property
    def position(self) -> int:
        return self._cursor.floor if self._cursor else 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-listener")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()
        self._set_connected(False)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() > deadline:
                raise TimeoutError("the listener did not connect")
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        while True:
            try:
                await self._connect()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not is_unavailable(error):
                    log.exception("listener failed; reconnecting", extra={"action": "listener_reconnect"})
                elif self.connected:
                    log.warning("listener connection lost; reconnecting", extra={"error": type(error).__name__})
            self._set_connected(False)
            await self._disconnect()
            await asyncio.sleep(min(self._max_backoff_s, 0.05 * 2 ** min(self._failures, 10)))
            self._failures += 1

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            metrics.listener_connected(connected)
        self.connected = connected
        self._hub.live = connected

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, server_settings={"application_name": APPLICATION_NAME},
                                           timeout=self._connect_timeout_s)
        self._connection = connection
        connection.add_termination_listener(lambda _: self._wake.set())
        await connection.add_listener(CHANNEL, self._on_notify)
        if self._cursor is None:
            newest = await connection.fetchval("SELECT coalesce(max(id), 0) FROM fal_job_events",
                                               timeout=self._read_timeout_s)
            self._cursor = EventCursor(floor=max(0, newest - STARTUP_LOOKBACK), gap_timeout_s=self._gap_timeout_s,
                                       max_held=self._max_held, batch=BATCH)
            self._hub.pending_late = self._cursor.pending
            # Streams opened from now on read their snapshot up to here; the catch-up read that
            # follows publishes everything above it, so nothing falls in between.
            self._hub.publish((), self._cursor.floor)
        else:
            self.reconnects += 1
            metrics.listener_reconnected()
        self._set_connected(True)
        self._wake.set()  # catch up on whatever was committed while we were away

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)
            if not connection.is_closed():
                connection.terminate()

    def _connected(self) -> tuple[asyncpg.Connection, EventCursor]:
        """The connection and its cursor, which `_connect` set before any read."""
        if self._connection is None or self._cursor is None:
            raise RuntimeError("the listener reads only once connected")
        return self._connection, self._cursor

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        connection, cursor = self._connected()
        gap_wait = 0.005
        while True:
            timeout = gap_wait if cursor.waiting_on_gap else self._idle_check_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if connection.is_closed():
                raise ConnectionError("listener connection closed")
            full = await self._read_once()
            if full:
                self._wake.set()
            gap_wait = min(0.2, gap_wait * 2) if cursor.waiting_on_gap else 0.005

    async def _read_once(self) -> bool:
        """One query: new rows above the cursor, and the ids it still waits for. True when the
        batch was full (read again)."""
        connection, cursor = self._connected()
        after, limit = cursor.read_after, cursor.read_limit
        rows = await connection.fetch(_READ, after, limit, cursor.wanted_ids, timeout=self._read_timeout_s)
        self.reads += 1
        self._failures = 0  # a read went through: the connection works
        xmin, xmax = rows[0]["xmin"], rows[0]["xmax"]
        events: list[JobEvent] = [event_from_row(row) for row in rows if row["id"] is not None]
        skipped = cursor.skipped_by_timeout
        released = cursor.advance(events, xmin, xmax, time.monotonic())
        if cursor.skipped_by_timeout > skipped:
            log.warning("an event id held open past the gap timeout is skipped for now and read again until its "
                        "transaction ends (a long transaction elsewhere?)",
                        extra={"action": "gap_skipped", "position": cursor.floor, "skipped": cursor.skipped_ids[-5:]})
        late = cursor.take_late()
        for event in late:
            log.warning("late event published: it committed after its id was skipped",
                        extra={"action": "late_event", "event_id": event.id, "request_id": event.request_id})
        self._hub.publish(released, cursor.floor, late=late)
        metrics.events_published(len(released) + len(late))
        return limit > 0 and sum(1 for event in events if event.id > after) >= limit
