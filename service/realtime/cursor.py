"""Handing out event ids strictly in order, although bigserial ids can commit out of order.

A transaction that took id 104 may commit after the one that took 105. Were 105 delivered first,
a client resuming "after 105" would never see 104. So an id is released only once every smaller
id is released or proven never to commit. An id missing below a visible one (a gap) belongs to a
transaction that was running when we read, or that rolled back. The read that first shows the gap
records its snapshot's xmax (the "horizon"); once a later read's xmin reaches the horizon, every
transaction running at detection has ended, and an id still missing then never will appear.

This relies on one property of our writers: the transaction that inserts an event holds a
transaction id before it draws the event's id (the status machine locks or inserts the job row
first). Pure logic, no I/O: the listener feeds it reads.
"""

from __future__ import annotations

from service.realtime.events import JobEvent


class EventCursor:
    def __init__(self, floor: int) -> None:
        self.floor = floor
        """Every id <= floor has been released or skipped as never-committed."""
        self._held: dict[int, JobEvent] = {}
        self._gaps: dict[int, int] = {}  # missing id -> horizon (xmax of the read that first missed it)

    @property
    def held_ids(self) -> list[int]:
        return sorted(self._held)

    @property
    def waiting_on_gap(self) -> bool:
        return bool(self._gaps)

    def advance(self, rows: list[JobEvent], xmin: int, xmax: int) -> list[JobEvent]:
        """Take one read (every visible event above the floor, minus held ones) and return the
        events that can now be released, in id order."""
        for event in rows:
            if event.id > self.floor:
                self._held[event.id] = event
                self._gaps.pop(event.id, None)
        top = max(self._held, default=self.floor)
        for missing in range(self.floor + 1, top):
            if missing not in self._held:
                self._gaps.setdefault(missing, xmax)
        released: list[JobEvent] = []
        while True:
            following = self.floor + 1
            if following in self._held:
                released.append(self._held.pop(following))
            elif following in self._gaps and xmin >= self._gaps[following]:
                del self._gaps[following]  # its transaction ended without committing it
            else:
                break
            self.floor = following
        return released
