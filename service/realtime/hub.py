"""In-process dispatch of job events to subscribers.

Each event costs two dict lookups (its request id, its user id) and then one bounded append per
subscriber that asked for it: the work does not grow with the number of subscribers watching
other jobs. A subscriber that falls behind does not block the others or grow without bound: its
queue is capped, and on overflow the backlog is dropped and the subscriber is told to resync
(its stream then sends a fresh snapshot from the database).
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable, Collection, Iterable

from service.realtime.events import JobEvent


class Signal(enum.Enum):
    TIMEOUT = "timeout"
    RESYNC = "resync"
    CLOSED = "closed"


class Subscription:
    __slots__ = ("user_id", "request_id", "statuses", "types", "last_id", "_queue", "_capacity", "_wakeup", "_overflowed",
                 "_closed", "_heartbeat_due")

    def __init__(self, *, user_id: str, request_id: str | None, statuses: Collection[str] | None,
                 types: Collection[str] | None, after: int, capacity: int) -> None:
        self.user_id = user_id
        self.request_id = request_id
        self.statuses = frozenset(statuses) if statuses else None
        self.types = frozenset(types) if types else None
        self.last_id = after
        """Events with an id at or below this one were delivered (or are covered by a snapshot)."""
        self._queue: collections.deque[JobEvent] = collections.deque()
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

    def offer(self, event: JobEvent) -> None:
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

    async def next(self, timeout: float | None = None) -> JobEvent | Signal:
        """The next event, or a signal. Without `timeout` it waits for an event or the hub's shared
        heartbeat tick (no timer per subscriber: 10,000 idle streams cost no timer re-arms)."""
        while True:
            if self._closed:
                return Signal.CLOSED
            if self._overflowed:
                return Signal.RESYNC
            while self._queue:
                event = self._queue.popleft()
                if event.id > self.last_id:  # a snapshot or a resumed replay may already cover it
                    self.last_id = event.id
                    return event
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
        self.published = 0
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
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        key = subscription.request_id if subscription.request_id is not None else subscription.user_id
        index = self._by_request if subscription.request_id is not None else self._by_user
        subs = index.get(key)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del index[key]

    def publish(self, events: Iterable[JobEvent], position: int) -> None:
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

    def close_all(self) -> None:
        """End every open stream (shutdown; clients reconnect with their Last-Event-ID)."""
        for index in (self._by_request, self._by_user):
            for subs in index.values():
                for subscription in subs:
                    subscription.close()
