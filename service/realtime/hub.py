"""In-process dispatch of job events to subscribers.

Each event costs two dict lookups (its request id, its user id) and then one bounded append per
subscriber that asked for it: the work does not grow with the number of subscribers watching
other jobs. A subscriber that falls behind does not block the others or grow without bound: its
queue is capped, and on overflow the backlog is dropped and the subscriber is told to resync
(its stream then sends a fresh snapshot from the database).

Late events (committed after the listener skipped their id, see `cursor`) are offered to every
subscription that wants them even though their id is below its position: a job's subscription
takes an event when its version is newer than the one it sent (within a job, versions and ids
grow together), a user's subscription takes it unless its resume replay already held it. The hub
also remembers the recent late events with the position at which they came, so a user stream
resumed from that position or below gets them in its replay.
"""

from __future__ import annotations

import asyncio
import collections
import enum
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


LATE_REMEMBERED = 1000


class Subscription:
    __slots__ = (
        "_capacity",
        "_closed",
        "_heartbeat_due",
        "_overflowed",
        "_queue",
        "_wakeup",
        "last_id",
        "replayed",
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
        self.replayed: frozenset[int] = frozenset()
        """A user's subscription: ids its resume replay sent (a late event among them is not sent twice)."""
        self._queue: collections.deque[JobEvent | Late] = collections.deque()
        self._capacity = capacity
        self._wakeup = asyncio.Event()
        self._overflowed = False
        self._closed = False
        self._heartbeat_due = False

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

    def _fresh_late(self, event: JobEvent) -> bool:
        if self.request_id is not None:
            return event.version > self.version
        return event.id not in self.replayed

    def offer(self, event: JobEvent | Late) -> None:
        if self._overflowed or self._closed:
            return
        if len(self._queue) >= self._capacity:
            self._queue.clear()
            self._overflowed = True
        else:
            self._queue.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def heartbeat(self) -> None:
        self._heartbeat_due = True
        self._wakeup.set()

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
                item = self._queue.popleft()
                if isinstance(item, Late):
                    if self._fresh_late(item.event):
                        self.sent(item.event)
                        return item
                elif self._fresh(item):  # a snapshot or a resumed replay may already cover it
                    self.last_id = item.id
                    self.sent(item)
                    return item
            if self._heartbeat_due:
                self._heartbeat_due = False
                return Signal.TIMEOUT
            self._wakeup.clear()
            if timeout is None:
                await self._wakeup.wait()
                continue
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                return Signal.TIMEOUT


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
        self.recent_late: collections.deque[tuple[int, JobEvent]] = collections.deque(maxlen=LATE_REMEMBERED)
        """(position when it came, event) of the latest late events."""
        self._observers: list[Callable[[JobEvent], None]] = []

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
        if self.closing:
            subscription.close()  # opened during shutdown: it ends at once, the client reconnects elsewhere
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        key = subscription.request_id if subscription.request_id is not None else subscription.user_id
        index = self._by_request if subscription.request_id is not None else self._by_user
        subs = index.get(key)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del index[key]

    def publish(self, events: Iterable[JobEvent], position: int, *, late: Iterable[JobEvent] = ()) -> None:
        for event in late:
            self.recent_late.append((max(self.position, position), event))
            wrapped = Late(event)
            for subscription in self._by_request.get(event.request_id, ()):
                if subscription.wants(event):
                    subscription.offer(wrapped)
            for subscription in self._by_user.get(event.user_id, ()):
                if subscription.wants(event):
                    subscription.offer(wrapped)
            self.published += 1
            for observer in self._observers:
                observer(event)
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

    def late_since(self, after: int) -> list[JobEvent]:
        """Late events that came once the position had reached `after`, with ids at or below it: a
        replay "after `after`" does not read them, and a client at `after` may not have had them
        (a late event carries no id, so its Last-Event-ID cannot tell). Such a client may get one
        twice; it never misses one."""
        return [event for position, event in self.recent_late if position >= after and event.id <= after]

    def start_heartbeats(self, interval_s: float) -> None:
        """One timer for the whole process: every `interval_s`, each stream sends a comment."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(interval_s)
                for index in (self._by_request, self._by_user):
                    for subs in list(index.values()):
                        for subscription in list(subs):
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
