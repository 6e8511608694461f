"""What a live stream sends, independent of how it is framed on the wire (see `service.http.sse`).

A job stream: the job's current snapshot first, then one message per change, ending after the
terminal state. A user stream: a `ready` message carrying the current position, then every change
of the user's jobs (optionally filtered). Both resume exactly after a given event id, with no loss
and no duplicate: the subscription is attached to the hub *before* the database is read up to the
hub's position, and everything above that position reaches the subscription.

A job stream resumed after event N sends the job's latest state when it is newer than N (one
message, not every change since). A user stream resumed after N replays the changes above N (or
each changed job's latest state past `REPLAY_LIMIT`). An operator's stream of every user's jobs
past `REPLAY_LIMIT`, or after falling behind, sends a fresh `ready` at the current position instead
(the client reads its list again): the latest state of every job changed since has no bound. Late events (committed after their id was
skipped, see `cursor`) reach open streams as they are read: on a job stream with their id (a job's
ids grow with its versions), on a user stream with a resume token `<position>.<seq>` as its id
(see `hub`). A stream that sends a snapshot (a resume, a resync) sends the late events it owes
first, placed at the snapshot's lower bound, so that no stream sends a job's version below one it
sent. Once a user stream has sent a late event, its other events carry tokens too
(`<event id>.<seq>`), so that a client resuming from its newest id does not get that late event
again on every resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from service import metrics
from service.errors import NotFound, Unavailable
from service.realtime.events import EVENT_COLUMNS, JobEvent, event_from_row
from service.realtime.hub import Hub, Late, ResumePoint, Signal, Subscription

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterator, Sequence

    import asyncpg

REPLAY_LIMIT = 1000
"""A resume that would replay more events than this sends each job's latest state instead."""


class Outgoing(msgspec.Struct, frozen=True):
    event: str | None = None
    id: int | str | None = None
    data: str | None = None
    comment: str | None = None


HEARTBEAT = Outgoing(comment="heartbeat")


def job_message(event: JobEvent, *, id: int | str | None = None) -> Outgoing:
    return Outgoing(event="job", id=event.id if id is None else id, data=event.data)


def ready_message(position: int, *, id: int | str | None = None) -> Outgoing:
    """A user stream's start: every change after `position` follows."""
    return Outgoing(event="ready", id=position if id is None else id,
                    data=msgspec.json.encode({"position": position}).decode())


class LiveStream:
    """An async iterator of `Outgoing` messages; `close()` ends it from outside (a disconnect)."""

    def __init__(self, hub: Hub, pool: asyncpg.Pool, subscription: Subscription, *, preamble: list[Outgoing],
                 initial: Sequence[JobEvent | Late], ends_on_terminal: bool) -> None:
        self._hub = hub
        self._pool = pool
        self._subscription = subscription
        self._preamble = preamble
        self._initial = initial
        """What the stream sends before its live events: late ones carry their place in it."""
        self._ends_on_terminal = ends_on_terminal
        self._ended = False
        """Set once a job stream has sent its job's terminal event: it ends when next resumed."""
        self._stamped = False
        """A user stream that sent a late event gives its later events tokens too: a resume from
        a plain id would send every remembered late event at or below it again."""

    def _message(self, event: JobEvent) -> Outgoing:
        if self._stamped:
            return job_message(event, id=f"{event.id}.{self._subscription.late_seq}")
        return job_message(event)

    def _late_message(self, late: Late) -> Outgoing:
        self._stamped = True
        return job_message(late.event, id=late.token)

    def close(self) -> None:
        """End the stream and release its subscription (also when it never started)."""
        self._subscription.close()
        self._hub.unsubscribe(self._subscription)

    async def __aiter__(self) -> AsyncIterator[Outgoing]:
        subscription = self._subscription
        try:
            for message in self._preamble:
                yield message
            for message in self._initial_messages():
                yield message
            while not self._ended:
                item = await subscription.next()
                if item is Signal.CLOSED:
                    return
                if item is Signal.RESYNC:
                    async for message in self._resync():
                        yield message
                else:
                    yield self._live_message(item)
        finally:
            self._hub.unsubscribe(subscription)

    def _initial_messages(self) -> Iterator[Outgoing]:
        """What the stream owes before its live events; a job stream ends after a terminal one."""
        for item in self._initial:
            if isinstance(item, Late):  # a user stream's resume: placed at its resume point
                self._subscription.sent(item.event)
                yield self._late_message(item)
                continue
            self._subscription.sent(item)
            yield self._message(item)
            if self._ends_on_terminal and item.is_terminal:
                self._ended = True
                return

    def _live_message(self, item: JobEvent | Late | Literal[Signal.TIMEOUT]) -> Outgoing:
        """The message for what the hub handed over (a heartbeat on its tick); a job stream ends
        after its job's terminal event."""
        if item is Signal.TIMEOUT:
            return HEARTBEAT
        if isinstance(item, Late):
            # On a job stream its own id (a job's ids grow with its versions); on a user
            # stream its token, which a resume from it understands.
            self._ended = self._ends_on_terminal and item.event.is_terminal
            return job_message(item.event) if self._ends_on_terminal else self._late_message(item)
        metrics.event_delivered(item.written_at)
        self._ended = self._ends_on_terminal and item.is_terminal
        return self._message(item)

    async def _resync(self) -> AsyncIterator[Outgoing]:
        """After the subscription fell behind (its backlog dropped): the late events it owes, then
        each changed job's latest state, read from the database; on an operator's stream, a fresh
        `ready` (the client reads its list again)."""
        subscription = self._subscription
        # Re-arm first (no await in between), so that every event above `position`,
        # and every late event after `late_seq`, is queued again while the snapshot
        # up to `position` is read.
        after, position = subscription.last_id, self._hub.position
        owed = subscription.late_seq
        late_seq = self._hub.late_seq
        subscription.resynced(position, late_seq)
        if _everyones(subscription):
            # Every user's jobs changed meanwhile, without bound: the client starts afresh,
            # and has every late event up to `late_seq` by reading its list again.
            yield ready_message(position, id=f"{position}.{late_seq}" if self._stamped else None)
            return
        # The late events dropped with the backlog, placed where the stream stood:
        # it had every event up to `after` and every late one up to `owed`.
        late = [] if self._ends_on_terminal else [
            Late(item.event, after, item.seq) for item in self._hub.late_since(ResumePoint(after, owed))
            if subscription.wants(item.event)
        ]
        events = await _latest_per_job(self._pool, subscription, after, position)
        for item in late:
            subscription.sent(item.event)
            yield self._late_message(item)
        for event in events:
            if self._hub.may_come_late(event.id, late_seq):
                subscription.expect_late(event)
            subscription.sent(event)
            yield self._message(event)
        if self._ends_on_terminal and events and events[-1].is_terminal:
            self._ended = True


class JobAlreadyFinished(Exception):
    """A resume after a job's terminal event: there is nothing more to send, ever."""


def _require_live(hub: Hub) -> None:
    if not hub.ready:
        raise Unavailable("live updates are starting (the listener has not connected yet); retry shortly")


async def open_job_stream(hub: Hub, pool: asyncpg.Pool, *, user_id: str, request_id: str,
                          last_event_id: int | ResumePoint | None) -> LiveStream:
    _require_live(hub)
    if isinstance(last_event_id, ResumePoint):
        last_event_id = last_event_id.position
    owner = await pool.fetchval("SELECT user_id FROM fal_jobs WHERE request_id = $1", request_id)
    if owner != user_id:
        raise NotFound(f"job {request_id!r} not found")
    subscription = hub.subscribe(user_id=user_id, request_id=request_id, after=last_event_id or 0)
    position = hub.position
    try:
        newest_row = await pool.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1", request_id
        )
        newest = event_from_row(newest_row) if newest_row is not None else None
        if newest is not None and newest.is_terminal and last_event_id is not None and newest.id <= last_event_id:
            # The client has the end already (this process may not have published it yet).
            raise JobAlreadyFinished(request_id)
        latest_row = newest_row if newest is not None and newest.id <= position else await pool.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = $1 AND id <= $2 ORDER BY id DESC LIMIT 1",
            request_id, position,
        )
        latest = event_from_row(latest_row) if latest_row is not None else None
        # Fresh or resumed, the job's latest state is all a client needs (each event carries the
        # whole job): one message, not every change since.
        events = [latest] if latest is not None and (last_event_id is None or latest.id > last_event_id) else []
        if latest is not None and not events:
            subscription.version = latest.version  # the client has this state already
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    subscription.last_id = max(subscription.last_id, position)
    return LiveStream(hub, pool, subscription, preamble=[], initial=events, ends_on_terminal=True)


def _owned_by(user_id: str | None) -> str:
    """The condition on events of one user's jobs (`$1`), or of everyone's (an operator's stream,
    `$1` NULL: the id range alone, on the primary key)."""
    return "user_id = $1" if user_id is not None else "$1::text IS NULL"


async def open_user_stream(hub: Hub, pool: asyncpg.Pool, *, user_id: str | None, statuses: Collection[str] | None,
                           types: Collection[str] | None, last_event_id: int | ResumePoint | None,
                           tag: str | None = None) -> LiveStream:
    """A user's stream; with `user_id` None, every user's (the operator's console: admins only,
    which is the caller's to check)."""
    _require_live(hub)
    resume = ResumePoint(last_event_id) if isinstance(last_event_id, int) else last_event_id
    last_event_id = resume.position if resume is not None else None
    subscription = hub.subscribe(user_id=user_id, statuses=statuses, types=types, tag=tag, after=last_event_id or 0)
    position, late_seq = hub.position, subscription.late_seq
    # Taken with the subscription, before any await: late events found from now on are queued.
    # They go first, placed at the resume point: the client has every event up to it (except
    # these), and the replay's newer versions of their jobs follow them.
    late = [] if resume is None else [
        Late(item.event, resume.position, item.seq) for item in hub.late_since(resume) if subscription.wants(item.event)
    ]
    try:
        preamble: list[Outgoing] = []
        replay: list[JobEvent] = []
        if last_event_id is None:
            preamble = [ready_message(position)]
        else:
            rows = await pool.fetch(
                f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE {_owned_by(user_id)} AND id > $2 AND id <= $3 "
                "ORDER BY id LIMIT $4",
                user_id, last_event_id, position, REPLAY_LIMIT + 1,
            )
            replay = [e for e in map(event_from_row, rows) if subscription.wants(e)]
            if len(rows) > REPLAY_LIMIT and _everyones(subscription):
                # Every user's jobs changed since, without bound: the client starts afresh.
                preamble, replay, late = [ready_message(position)], [], []
            elif len(rows) > REPLAY_LIMIT:
                replay = await _latest_per_job(pool, subscription, last_event_id, position)
            for event in replay:
                if hub.may_come_late(event.id, late_seq):
                    subscription.expect_late(event)
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    subscription.last_id = max(subscription.last_id, position)
    return LiveStream(hub, pool, subscription, preamble=preamble, initial=[*late, *replay], ends_on_terminal=False)


def _everyones(subscription: Subscription) -> bool:
    """An operator's stream of every user's jobs."""
    return subscription.user_id is None and subscription.request_id is None


async def _latest_per_job(pool: asyncpg.Pool, subscription: Subscription, after: int, position: int) -> list[JobEvent]:
    """A fresh snapshot: the latest state of every job that changed after what the subscriber has."""
    if subscription.request_id is not None:
        # By version, not id: a late event of this job may sit below `after`.
        rows = await pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = $1 AND id <= $2 ORDER BY id DESC LIMIT 1",
            subscription.request_id, position,
        )
        return [e for e in map(event_from_row, rows) if e.version > subscription.version]
    else:
        rows = await pool.fetch(
            f"SELECT * FROM (SELECT DISTINCT ON (request_id) {EVENT_COLUMNS} FROM fal_job_events "
            f"WHERE {_owned_by(subscription.user_id)} AND id > $2 AND id <= $3 ORDER BY request_id, id DESC) latest "
            "ORDER BY id",
            subscription.user_id, after, position,
        )
    return [e for e in map(event_from_row, rows) if subscription.wants(e)]
