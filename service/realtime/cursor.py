"""Handing out event ids strictly in order, although bigserial ids can commit out of order.

A transaction that took id 104 may commit after the one that took 105. Were 105 delivered first,
a client resuming "after 105" would never see 104. So an id is released only once every smaller
id is released or proven never to commit. An id missing below a visible one (a gap) belongs to a
transaction that was running when we read, or that rolled back. The read that first shows the gap
records its snapshot's xmax (the "horizon"); once a later read's xmin reaches the horizon, every
transaction running at detection has ended, and an id still missing then never will appear.

This relies on one property of our writers: the transaction that inserts an event holds a
transaction id before it draws the event's id (the event is written by a trigger after the job
row's insert or update). Pure logic, no I/O: the listener feeds it reads, asking for what `read_after`,
`read_limit` and `wanted_ids` say.

One bound on waiting: xmin is cluster-wide, so a long transaction anywhere (an idle-in-transaction
session, say) would hold a rolled-back gap open, and every later event with it. A gap older than
`gap_timeout_s` is skipped, so live delivery resumes, but it is not forgotten: its id stays in
`wanted_ids`, every read asks for it again, and should its transaction commit after all the event
comes out of `advance` as *late* (in `late`, for the listener to publish). A skipped id is dropped
only once xmin passes its horizon, which proves its transaction ended (had it committed, the same
read would have shown its row). Nothing is lost however long the transaction takes.

The read-ahead is capped too: while a gap is open, at most `max_held` events wait above it; past
that the reads ask only for the missing ids until the gap closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

    from service.realtime.events import JobEvent

MAX_SKIPPED = 100_000
"""Skipped ids remembered at most (a bound on memory should transactions roll back by the thousand
while something holds xmin back); the oldest are forgotten first, with a count."""


class EventCursor:
    def __init__(self, floor: int, *, gap_timeout_s: float = 30.0, max_held: int = 10_000, batch: int = 1000) -> None:
        self.floor = floor
        """Every id <= floor has been released, skipped as never-committed, or skipped by timeout."""
        self.gap_timeout_s = gap_timeout_s
        self.max_held = max_held
        self.batch = batch
        self.read_after = floor
        """The highest id any read has shown: the next read asks for ids above it."""
        self.skipped_by_timeout = 0
        self.late_released = 0
        self.forgotten = 0
        self.late: list[JobEvent] = []
        """Events that committed after their id was skipped; the listener takes them (`take_late`)."""
        self._held: dict[int, JobEvent] = {}
        self._gaps: dict[int, tuple[int, float]] = {}  # missing id -> (horizon, when first missed)
        self._skipped: dict[int, int] = {}  # id skipped by timeout -> horizon

    @property
    def held_ids(self) -> list[int]:
        return sorted(self._held)

    @property
    def skipped_ids(self) -> list[int]:
        return sorted(self._skipped)

    @property
    def pending(self) -> Collection[int]:
        """The ids skipped by timeout that may still come late (a live view, for the hub)."""
        return self._skipped.keys()

    @property
    def waiting_on_gap(self) -> bool:
        return bool(self._gaps)

    @property
    def read_limit(self) -> int:
        """How many new ids the next read may take: none while `max_held` wait above a gap."""
        return 0 if len(self._held) >= self.max_held else self.batch

    @property
    def wanted_ids(self) -> list[int]:
        """Ids at or below `read_after` that the next read must ask for again: the open gaps and
        the ids skipped by timeout."""
        return sorted(self._gaps) + sorted(self._skipped)

    def take_late(self) -> list[JobEvent]:
        late, self.late = self.late, []
        return late

    def advance(self, rows: list[JobEvent], xmin: int, xmax: int, now: float = 0.0) -> list[JobEvent]:
        """Take one read (new events above `read_after`, and whichever `wanted_ids` are now
        visible) and return the events that can now be released, in id order. Events of ids
        skipped earlier go to `late`."""
        self._take(rows, xmax, now)
        released = self._release(xmin, now)
        self._forget_ended(xmin)
        return released

    def _take(self, rows: list[JobEvent], xmax: int, now: float) -> None:
        """Hold the read's new events, send those of skipped ids to `late`, and record each id
        still missing below the highest one seen as a gap with this read's horizon (`xmax`)."""
        top = self.read_after
        for event in rows:
            if event.id in self._skipped:
                del self._skipped[event.id]
                self.late.append(event)
                self.late_released += 1
            elif event.id > self.floor and event.id not in self._held:
                self._held[event.id] = event
                self._gaps.pop(event.id, None)
            top = max(top, event.id)
        for missing in range(self.read_after + 1, top):
            if missing not in self._held:
                self._gaps.setdefault(missing, (xmax, now))
        self.read_after = top

    def _release(self, xmin: int, now: float) -> list[JobEvent]:
        """Move the floor up while the id above it is held (released), proven never to commit
        (dropped), or a gap older than `gap_timeout_s` (skipped); stop at the first that is none."""
        released: list[JobEvent] = []
        while True:
            following = self.floor + 1
            if following in self._held:
                released.append(self._held.pop(following))
            elif following in self._gaps and xmin >= self._gaps[following][0]:
                del self._gaps[following]  # its transaction ended without committing it
            elif following in self._gaps and now - self._gaps[following][1] > self.gap_timeout_s:
                horizon, _ = self._gaps.pop(following)
                self._skipped[following] = horizon
                self.skipped_by_timeout += 1
            else:
                break
            self.floor = following
        return released

    def _forget_ended(self, xmin: int) -> None:
        """Drop the skipped ids whose transactions have ended, then the oldest past MAX_SKIPPED."""
        for skipped, horizon in list(self._skipped.items()):
            if xmin >= horizon:
                del self._skipped[skipped]  # ended; had it committed, this read would have shown it
        while len(self._skipped) > MAX_SKIPPED:
            del self._skipped[next(iter(self._skipped))]
            self.forgotten += 1
