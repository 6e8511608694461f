"""In-process dispatch of job events to subscribers.

Each event costs two dict lookups (its request id, its user id) and then one bounded append per
subscriber that asked for it: the work does not grow with the number of subscribers watching
other jobs. A subscriber that falls behind does not block the others or grow without bound: its
queue is capped, and on overflow the backlog is dropped and the subscriber is told to resync
(its stream then sends a fresh snapshot from the database).

Late events (committed after the listener skipped their id, see `cursor`) are offered to every
subscription that wants them even though their id is below its position: a job's subscription
takes an event when its version is newer than the one it sent (within a job, versions and ids
grow together), a user's subscription takes it unless its resume replay already held it. Each
late event gets a place in the stream after every event up to the position at which it came: the
resume token `<position>.<seq>` (seq counts this hub's late events). The hub remembers the recent
late events with their place, so a resume from a position, or from such a token, gets exactly
the late events that came after it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Collection, Iterable

import msgspec

from service.realtime.events import JobEvent


class Signal(enum.Enum):
    TIMEOUT = "timeout"
    RESYNC = "resync"
    CLOSED = "closed"


class Late(msgspec.Struct, frozen=True):
    """An event delivered after the position passed its id (see the module docstring)."""

    event: JobEvent
    position: int
    """The hub's position when it came: every event up to here was published before it."""
    seq: int
    """Its number among this hub's late events (`Hub.late_base` + a count)."""

    @property
    def token(self) -> str:
        """Its resume token (a stream's `id:`): after `position`, and after this late event."""
        return f"{self.position}.{self.seq}"


class ResumePoint(msgspec.Struct, frozen=True):
    """A Last-Event-ID: an event id, or a late event's token `<position>.<seq>`."""

    position: int
    seq: int | None = None


LATE_REMEMBERED = 1000
HEARTBEAT_SLICES = 256
"""Heartbeats go out slice by slice, spread over the interval: one tick writing to every open
stream at once held up a webhook's delivery behind 10,000 writes (130 ms measured)."""
HEARTBEAT_TICK_MIN_S = 0.05
"""The ticker wakes at most this often (a short interval, as in tests, takes fewer, larger slices)."""
_NOTHING: frozenset[int] = frozenset()


class Subscription:
    # An idle subscription is most of what an open stream costs the hub, and there may be tens of
    # thousands: slots, a list for the queue (an empty deque takes ~740 bytes, an empty list 56),
    # one future while waiting instead of an asyncio.Event (which holds a deque of its own), and
    # the shared empty set for what a resume replayed.
    __slots__ = (
        "_capacity",
        "_closed",
        "_heartbeat_due",
        "_overflowed",
        "_queue",
        "_waiter",
        "heartbeat_slice",
        "last_id",
        "replayed",
        "replayed_late",
        "request_id",
        "statuses",
        "types",
        "user_id",
        "version",
    )

    def __init__(self, *, user_id: str, request_id: str | None, statuses: Collection[str] | None,
                 types: Collection[str] | None, after: int, capacity: int) -> None:
        self.user_id = user_id
        self.request_id = request_id
        self.statuses = frozenset(statuses) if statuses else None
        self.types = frozenset(types) if types else None
        self.last_id = after
        """Events with an id at or below this one were delivered (or are covered by a snapshot)."""
        self.version = 0
        """A job's subscription: the newest version its stream sent."""
        self.replayed: frozenset[int] = _NOTHING
        """A user's subscription: ids its resume replay sent (a late event among them is not sent twice)."""
        self.replayed_late: frozenset[int] = _NOTHING
        """A user's subscription: the seqs of the late events its resume replay sent."""
        self._queue: list[JobEvent | Late] = []
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False
        self._closed = False
        self._heartbeat_due = False
        self.heartbeat_slice = 0
        """Which of the hub's heartbeat slices this subscription is in (see `Hub.start_heartbeats`)."""

    def wants(self, event: JobEvent) -> bool:
        if event.user_id != self.user_id:
            return False
        if self.request_id is not None:
            return event.request_id == self.request_id
        return (self.statuses is None or event.status in self.statuses) and (self.types is None or event.type in self.types)

    def sent(self, event: JobEvent) -> None:
        """The stream sent `event` (a snapshot, a replay, a live change)."""
        if event.version > self.version and self.request_id is not None:
            self.version = event.version

    def _fresh(self, event: JobEvent) -> bool:
        if self.request_id is not None:
            return event.version > self.version and event.id > self.last_id
        return event.id > self.last_id

    def _fresh_late(self, late: Late) -> bool:
        if self.request_id is not None:
            return late.event.version > self.version
        return late.event.id not in self.replayed and late.seq not in self.replayed_late

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

    def resynced(self, position: int) -> None:
        """The stream sent a snapshot as of `position`: forget the overflow and what it covers."""
        self._overflowed = False
        self.last_id = max(self.last_id, position)

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
        self._by_request: dict[str, set[Subscription]] = {}
        self._by_user: dict[str, set[Subscription]] = {}
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
        self.late_base = int(time.time()) * 1_000_000
        """Seqs of this hub's late events start here: a token from another process (or an earlier
        run of this one) is told apart by it."""
        self._late_count = 0
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

    def subscribe(self, *, user_id: str, request_id: str | None = None, statuses: Collection[str] | None = None,
                  types: Collection[str] | None = None, after: int = 0) -> Subscription:
        """Subscribe to one job, or to all of a user's jobs. Synchronous on purpose: the caller reads
        `position` right after, and every event above it will reach the subscription."""
        subscription = Subscription(user_id=user_id, request_id=request_id, statuses=statuses, types=types,
                                    after=after, capacity=self._capacity)
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
        for event in events:
            for subscription in self._by_request.get(event.request_id, ()):
                if subscription.wants(event):
                    subscription.offer(event)
            for subscription in self._by_user.get(event.user_id, ()):
                if subscription.wants(event):
                    subscription.offer(event)
            self.published += 1
            for observer in self._observers:
                observer(event)
        self.position = max(self.position, position)
        self.ready = True
        # After the events released with them: a late event's token says "everything up to the
        # position, and this", so whoever receives it has had every event up to the position.
        for event in late:
            self._late_count += 1
            wrapped = Late(event, self.position, self.late_base + self._late_count)
            self.recent_late.append(wrapped)
            for subscription in self._by_request.get(event.request_id, ()):
                if subscription.wants(event):
                    subscription.offer(wrapped)
            for subscription in self._by_user.get(event.user_id, ()):
                if subscription.wants(event):
                    subscription.offer(wrapped)
            self.published += 1
            for observer in self._observers:
                observer(event)

    def late_since(self, resume: ResumePoint) -> list[Late]:
        """The late events a client resuming from `resume` has not had: with ids at or below its
        position (a replay "after the position" does not read them) and placed after it. A plain
        position P: those that came at P or later (one received would have left its token, not
        P, as the Last-Event-ID). A token of this hub: those placed after it. A token of another
        process: those that came at its position or later (each process finds late events on its
        own, so their tokens cannot be compared; a late event may come twice then, never not at
        all)."""
        own = resume.seq is not None and resume.seq // 1_000_000 == self.late_base // 1_000_000
        found = []
        for late in self.recent_late:
            if late.event.id > resume.position:
                continue  # a replay after the position reads it
            if own and resume.seq is not None:
                if late.position > resume.position or (late.position == resume.position and late.seq > resume.seq):
                    found.append(late)
            elif late.position >= resume.position:
                found.append(late)
        return found

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
