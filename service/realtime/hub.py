"""In-process dispatch of job events to subscribers.

Each event costs three dict lookups (its request id, its user id, and the operators' streams of
every user's jobs) and then one bounded append per subscriber that asked for it: the work does not grow with the number of subscribers watching
other jobs. A subscriber that falls behind does not block the others or grow without bound: its
queue is capped, and on overflow the backlog is dropped and the subscriber is told to resync
(its stream then sends a fresh snapshot from the database).

Late events (committed after the listener skipped their id, see `cursor`) are offered to every
subscription that wants them even though their id is below its position. One rule holds on every
stream: it never sends a job's version lower than one it sent. Within a job, ids grow with
versions, and a newer version is written only once the older one has committed (the job's row
lock), so the read that releases a newer version finds the older late one too: `publish` offers
the late events of a read before the events it releases, and a stream that sends a snapshot
(a resume, a resync) sends the late events it owes first. What is left, a late event that a
stream's snapshot already held because it committed while that snapshot was read, is caught by
version (`Subscription.expect_late`).

Each late event is placed after every event up to the position before the read that found it: its
resume token is `<position>.<seq>`, seq being this hub's run id (random) followed by a count. A
resume from a token of this hub gets the remembered late events with a higher seq and an id at or
below the token's position (the replay reads the ids above it). A plain event id or another
process's token cannot be compared with this hub's placements (each process finds late events on
its own), so such a resume gets every remembered late event at or below its position: at least
once, and the job's version tells the client whether it has that state.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
from typing import TYPE_CHECKING

import msgspec

from service.realtime.events import JobEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Container, Iterable


class Signal(enum.Enum):
    TIMEOUT = "timeout"
    RESYNC = "resync"
    CLOSED = "closed"


class Late(msgspec.Struct, frozen=True):
    """An event delivered after the position passed its id (see the module docstring)."""

    event: JobEvent
    position: int
    """Its place: every event up to here was published before it."""
    seq: int
    """Its number among this hub's late events (`Hub.run` * `SEQ_SPAN` + a count)."""

    @property
    def token(self) -> str:
        """Its resume token (a stream's `id:`): after `position`, and after this late event."""
        return f"{self.position}.{self.seq}"


class ResumePoint(msgspec.Struct, frozen=True):
    """A Last-Event-ID: an event id, or a late event's token `<position>.<seq>`."""

    position: int
    seq: int | None = None


LATE_REMEMBERED = 1000
SEQ_SPAN = 10**12
"""A late event's seq is its hub's run id times this, plus its count: a token tells its hub apart."""
HEARTBEAT_SLICES = 256
"""Heartbeats go out slice by slice, spread over the interval: one tick writing to every open
stream at once held up a webhook's delivery behind every one of those writes."""
HEARTBEAT_TICK_MIN_S = 0.05
"""The ticker wakes at most this often (a short interval, as in tests, takes fewer, larger slices)."""
_NOTHING: frozenset[int] = frozenset()


class Subscription:
    # An idle subscription is most of what an open stream costs the hub, and there may be tens of
    # thousands: slots, a list for the queue (an empty deque takes ~740 bytes, an empty list 56),
    # one future while waiting instead of an asyncio.Event (which holds a deque of its own), and
    # no dict of versions until a late event may repeat what the stream sent.
    __slots__ = (
        "_capacity",
        "_closed",
        "_heartbeat_due",
        "_overflowed",
        "_queue",
        "_versions",
        "_waiter",
        "heartbeat_slice",
        "last_id",
        "late_seq",
        "request_id",
        "statuses",
        "tag",
        "types",
        "user_id",
        "version",
    )

    def __init__(self, *, user_id: str | None, request_id: str | None, statuses: Collection[str] | None,
                 types: Collection[str] | None, after: int, capacity: int, late_seq: int = 0,
                 tag: str | None = None) -> None:
        self.user_id = user_id
        self.request_id = request_id
        self.statuses = frozenset(statuses) if statuses else None
        self.types = frozenset(types) if types else None
        self.tag = tag
        self.last_id = after
        """Events with an id at or below this one were delivered (or are covered by a snapshot)."""
        self.version = 0
        """A job's subscription: the newest version its stream sent."""
        self.late_seq = late_seq
        """The seq of the last late event offered to it (or the hub's, when it subscribed): the
        late events it was offered come in seq order, so a resync owes it only those above."""
        self._versions: dict[str, int] | None = None
        """A user's subscription: versions of jobs it sent in a snapshot that a late event may
        repeat (see `expect_late`); None, the usual case, when there are none."""
        self._queue: list[JobEvent | Late] = []
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False
        self._closed = False
        self._heartbeat_due = False
        self.heartbeat_slice = 0
        """Which of the hub's heartbeat slices this subscription is in (see `Hub.start_heartbeats`)."""

    def wants(self, event: JobEvent) -> bool:
        if self.user_id is not None and event.user_id != self.user_id:  # None: an operator's, every user's jobs
            return False
        if self.request_id is not None:
            return event.request_id == self.request_id
        return ((self.statuses is None or event.status in self.statuses) and (self.types is None or event.type in self.types)
                and (self.tag is None or self.tag in event.tags))

    def sent(self, event: JobEvent) -> None:
        """The stream sent `event` (a snapshot, a replay, a live change)."""
        if self.request_id is not None:
            if event.version > self.version:
                self.version = event.version
        elif self._versions is not None and self._versions.get(event.request_id, event.version) < event.version:
            self._versions[event.request_id] = event.version

    def expect_late(self, event: JobEvent) -> None:
        """The stream's snapshot (a resume replay, a resync) holds `event`, whose id the hub may
        still find late (skipped, or found since the snapshot's position was read): that late
        copy is not sent. Only such events are remembered, so the dict stays empty unless a
        snapshot meets a pending late event."""
        if self.request_id is not None:
            return  # a job's subscription compares every late event by version already
        if self._versions is None:
            self._versions = {}
        if event.version > self._versions.get(event.request_id, 0):
            self._versions[event.request_id] = event.version

    def _fresh(self, event: JobEvent) -> bool:
        if self.request_id is not None:
            return event.version > self.version and event.id > self.last_id
        return event.id > self.last_id

    def _fresh_late(self, late: Late) -> bool:
        if self.request_id is not None:
            return late.event.version > self.version
        return self._versions is None or late.event.version > self._versions.get(late.event.request_id, 0)

    def offer(self, event: JobEvent | Late) -> None:
        if self._overflowed or self._closed:
            return
        if len(self._queue) >= self._capacity:
            self._queue.clear()
            self._overflowed = True
        else:
            self._queue.append(event)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def heartbeat(self) -> None:
        self._heartbeat_due = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def resynced(self, position: int, late_seq: int | None = None) -> None:
        """The stream sends a snapshot as of `position` (and the late events up to the hub's
        `late_seq`): forget the overflow and what it covers."""
        self._overflowed = False
        self.last_id = max(self.last_id, position)
        if late_seq is not None:
            self.late_seq = max(self.late_seq, late_seq)

    async def next(self, timeout: float | None = None) -> JobEvent | Late | Signal:
        """The next event, or a signal. Without `timeout` it waits for an event or the hub's shared
        heartbeat tick (no timer per subscriber: 10,000 idle streams cost no timer re-arms)."""
        while True:
            if self._closed:
                return Signal.CLOSED
            if self._overflowed:
                return Signal.RESYNC
            while self._queue:
                item = self._queue.pop(0)  # short: capped at `capacity`, usually one event
                if isinstance(item, Late):
                    self.late_seq = item.seq
                    if self._fresh_late(item):
                        self.sent(item.event)
                        return item
                elif self._fresh(item):  # a snapshot or a resumed replay may already cover it
                    self.last_id = item.id
                    self.sent(item)
                    return item
            if self._heartbeat_due:
                self._heartbeat_due = False
                return Signal.TIMEOUT
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await waiter
                    continue
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                return Signal.TIMEOUT
            finally:
                self._waiter = None


class Hub:
    def __init__(self, *, capacity: int = 256) -> None:
        self._capacity = capacity
        self._ticker: asyncio.Task[None] | None = None
        self._by_request: dict[str | None, set[Subscription]] = {}
        self._by_user: dict[str | None, set[Subscription]] = {}
        """By user id; under None, the operators' subscriptions to every user's jobs."""
        self.position = 0
        """Every event with an id at or below this one has been published (or never committed)."""
        self.ready = False
        """Set once the listener has placed `position`; streams opened before would miss events."""
        self.live = False
        """The listener is connected right now (events arrive as they commit)."""
        self.published = 0
        self.closing = False
        """Set by `shut_down`: every stream, open or opened from now on, ends."""
        self.recent_late: collections.deque[Late] = collections.deque(maxlen=LATE_REMEMBERED)
        """The latest late events, with their place in the streams."""
        self.run = int.from_bytes(os.urandom(6), "big")
        """This hub's run id, the high digits of its late events' seqs: random, so that a token
        from another process (or an earlier run of this one), however close in time it started,
        is told apart."""
        self.late_seq = self.run * SEQ_SPAN
        """The seq of the newest late event (the run's base while there is none)."""
        self.pending_late: Container[int] = _NOTHING
        """Ids at or below `position` that may still come as late events (the listener's skipped ids)."""
        self._observers: list[Callable[[JobEvent], None]] = []
        self._heartbeat_slices: list[set[Subscription]] = [set() for _ in range(HEARTBEAT_SLICES)]
        self._subscribed = 0

    def observe(self, observer: Callable[[JobEvent], None]) -> None:
        """Call `observer` with every published event (in-process work that follows events: the
        output copiers wake on a completion instead of polling)."""
        self._observers.append(observer)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._by_request.values()) + sum(len(subs) for subs in self._by_user.values())

    def subscribe(self, *, user_id: str | None, request_id: str | None = None, statuses: Collection[str] | None = None,
                  types: Collection[str] | None = None, tag: str | None = None, after: int = 0) -> Subscription:
        """Subscribe to one job, or to all of a user's jobs (those with `tag`, when given), or with
        `user_id` None to every user's jobs (an operator's console). Synchronous
        on purpose: the caller reads `position` right after, and every event above it will reach it."""
        subscription = Subscription(user_id=user_id, request_id=request_id, statuses=statuses, types=types,
                                    after=after, capacity=self._capacity, late_seq=self.late_seq, tag=tag)
        index = self._by_request if request_id is not None else self._by_user
        index.setdefault(request_id if request_id is not None else user_id, set()).add(subscription)
        subscription.heartbeat_slice = self._subscribed % HEARTBEAT_SLICES
        self._heartbeat_slices[subscription.heartbeat_slice].add(subscription)
        self._subscribed += 1
        if self.closing:
            subscription.close()  # opened during shutdown: it ends at once, the client reconnects elsewhere
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        key = subscription.request_id if subscription.request_id is not None else subscription.user_id
        index = self._by_request if subscription.request_id is not None else self._by_user
        self._heartbeat_slices[subscription.heartbeat_slice].discard(subscription)
        subs = index.get(key)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del index[key]

    def publish(self, events: Iterable[JobEvent], position: int, *, late: Iterable[JobEvent] = ()) -> None:
        """Offer one read: its late events first, placed at the position before the read (every
        event up to there was published before them), then the events it releases, in id order.
        A newer version of a late event's job comes no earlier than this read, so within a job
        every stream gets the versions in order."""
        placed = self.position
        for event in sorted(late, key=lambda event: event.id):
            self.late_seq += 1
            wrapped = Late(event, placed, self.late_seq)
            self.recent_late.append(wrapped)
            self._offer(event, wrapped)
        for event in events:
            self._offer(event, event)
        self.position = max(self.position, position)
        self.ready = True

    def _offer(self, event: JobEvent, item: JobEvent | Late) -> None:
        # Three lookups, whoever else is subscribed: the job's streams, its user's, the operators'.
        for subscribers in (self._by_request.get(event.request_id, ()), self._by_user.get(event.user_id, ()),
                            self._by_user.get(None, ())):
            for subscription in subscribers:
                if subscription.wants(event):
                    subscription.offer(item)
        self.published += 1
        for observer in self._observers:
            observer(event)

    def late_since(self, resume: ResumePoint) -> list[Late]:
        """The remembered late events a client resuming from `resume` may lack, in seq order: all
        have ids at or below its position (a replay "after the position" does not read them).
        A token of this hub: those with a higher seq (it had every earlier one at or below its
        position). A plain event id, or another process's token: all of them, since where this
        hub placed a late event says nothing about whether that client had it."""
        own = resume.seq is not None and resume.seq // SEQ_SPAN == self.run
        return [late for late in self.recent_late
                if late.event.id <= resume.position and (not own or late.seq > (resume.seq or 0))]

    def may_come_late(self, event_id: int, since_seq: int) -> bool:
        """Whether a snapshot read after `since_seq` that holds `event_id` may see it again as a
        late event: its id is still skipped, or it was found late since (such a late event is on
        its way to the subscription)."""
        if event_id in self.pending_late:
            return True
        for late in reversed(self.recent_late):
            if late.seq <= since_seq:
                return False
            if late.event.id == event_id:
                return True
        return False

    def start_heartbeats(self, interval_s: float) -> None:
        """One timer for the whole process: every `interval_s`, each stream sends a comment. The
        streams take turns by slice, so each tick wakes a fraction of them (10,000 streams with
        a 15 s interval: about 40 every 60 ms)."""
        ticks = max(1, min(HEARTBEAT_SLICES, int(interval_s / HEARTBEAT_TICK_MIN_S)))
        step = interval_s / ticks
        loop = asyncio.get_running_loop()

        async def tick() -> None:
            due = loop.time()
            while True:
                for turn in range(ticks):
                    # Against the clock, so that the ticks do not drift apart; after a stall
                    # (a suspended machine) the turns go on from now instead of catching up at once.
                    due = max(due + step, loop.time() - step)
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    for slice_ in self._heartbeat_slices[turn::ticks]:
                        for subscription in slice_:
                            subscription.heartbeat()

        self._ticker = asyncio.create_task(tick(), name="sse-heartbeats")

    def stop_heartbeats(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    def shut_down(self) -> None:
        """Shutdown: end every open stream, and every stream opened from now on (uvicorn keeps
        serving until the open responses end, and a browser may reconnect here meanwhile)."""
        self.closing = True
        self.close_all()

    def close_all(self) -> None:
        """End every open stream (clients reconnect with their Last-Event-ID)."""
        for index in (self._by_request, self._by_user):
            for subs in index.values():
                for subscription in subs:
                    subscription.close()
