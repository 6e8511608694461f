"""Handing out event ids strictly in order, although bigserial ids can commit out of order.

A transaction that took id 104 may commit after the one that took 105. Were 105 delivered first,
a client resuming "after 105" would never see 104. So an id is released only once every smaller
id is released or proven never to commit. An id missing below a visible one (a gap) belongs to a
transaction that was running when we read, or that rolled back. The read that first shows the gap
records its snapshot's xmax (the "horizon"); once a later read's xmin reaches the horizon, every
transaction running at detection has ended, and an id still missing then never will appear.

This relies on one property of our writers: the transaction that inserts an event holds a
transaction id before it draws the event's id (the status machine updates or inserts the job row
first). Pure logic, no I/O: the listener feeds it reads.

One bound on waiting: xmin is cluster-wide, so a long transaction anywhere (an idle-in-transaction
session, say) would hold a rolled-back gap open, and every later event with it. A gap older than
`gap_timeout_s` is skipped and counted in `skipped_by_timeout` (the listener logs it): live
delivery resumes, at the price that an event committing after that long would reach only the
streams opened afterwards. Our own writers commit within milliseconds of drawing an id.
"""

from __future__ import annotations

from service.realtime.events import JobEvent


class EventCursor:
    def __init__(self, floor: int, *, gap_timeout_s: float = 30.0) -> None:
        self.floor = floor
        self.gap_timeout_s = gap_timeout_s
        self.skipped_by_timeout = 0
        """Every id <= floor has been released or skipped as never-committed."""
        self._held: dict[int, JobEvent] = {}
        self._gaps: dict[int, tuple[int, float]] = {}  # missing id -> (horizon, when first missed)

    @property
    def held_ids(self) -> list[int]:
        return sorted(self._held)

    @property
    def waiting_on_gap(self) -> bool:
        return bool(self._gaps)

    def advance(self, rows: list[JobEvent], xmin: int, xmax: int, now: float = 0.0) -> list[JobEvent]:
        """Take one read (every visible event above the floor, minus held ones) and return the
        events that can now be released, in id order."""
        for event in rows:
            if event.id > self.floor:
                self._held[event.id] = event
                self._gaps.pop(event.id, None)
        top = max(self._held, default=self.floor)
        for missing in range(self.floor + 1, top):
            if missing not in self._held:
                self._gaps.setdefault(missing, (xmax, now))
        released: list[JobEvent] = []
        while True:
            following = self.floor + 1
            if following in self._held:
                released.append(self._held.pop(following))
            elif following in self._gaps and xmin >= self._gaps[following][0]:
                del self._gaps[following]  # its transaction ended without committing it
            elif following in self._gaps and now - self._gaps[following][1] > self.gap_timeout_s:
                del self._gaps[following]
                self.skipped_by_timeout += 1
            else:
                break
            self.floor = following
        return released
