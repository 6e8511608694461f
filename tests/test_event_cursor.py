"""The ordering rule of the event cursor, on hand-made reads (the listener tests cover real commits)."""

from service.realtime.cursor import EventCursor
from service.realtime.events import JobEvent


def ev(event_id: int) -> JobEvent:
    return JobEvent(id=event_id, request_id="r", user_id="u", version=1, status="pending", type="image", data="{}")


def ids(events: list[JobEvent]) -> list[int]:
    return [e.id for e in events]


def test_contiguous_ids_are_released_at_once() -> None:
    cursor = EventCursor(floor=100)
    assert ids(cursor.advance([ev(101), ev(102)], xmin=50, xmax=60)) == [101, 102]
    assert cursor.floor == 102


def test_an_id_above_a_gap_is_held_until_the_gap_commits() -> None:
    cursor = EventCursor(floor=103)
    assert cursor.advance([ev(105)], xmin=50, xmax=60) == []  # 104 is still running
    assert cursor.held_ids == [105] and cursor.waiting_on_gap
    assert ids(cursor.advance([ev(104)], xmin=55, xmax=61)) == [104, 105]
    assert not cursor.waiting_on_gap and cursor.floor == 105


def test_a_gap_is_skipped_once_every_transaction_running_at_detection_has_ended() -> None:
    cursor = EventCursor(floor=103)
    assert cursor.advance([ev(105)], xmin=50, xmax=60) == []
    assert cursor.advance([], xmin=59, xmax=62) == []  # xid 59 (maybe 104's) still running
    assert ids(cursor.advance([], xmin=60, xmax=62)) == [105]  # all of them ended: 104 rolled back
    assert cursor.floor == 105


def test_a_gap_seen_with_nothing_running_is_skipped_at_once() -> None:
    cursor = EventCursor(floor=10)
    assert ids(cursor.advance([ev(12), ev(13)], xmin=70, xmax=70)) == [12, 13]


def test_a_gap_keeps_its_first_horizon() -> None:
    cursor = EventCursor(floor=0)
    cursor.advance([ev(2)], xmin=5, xmax=10)
    cursor.advance([ev(3)], xmin=8, xmax=20)  # 1 still missing: its horizon stays 10
    assert ids(cursor.advance([], xmin=10, xmax=21)) == [2, 3]


def test_a_gap_held_open_by_a_long_transaction_elsewhere_is_skipped_after_the_timeout() -> None:
    cursor = EventCursor(floor=0, gap_timeout_s=30)
    assert cursor.advance([ev(2)], xmin=5, xmax=10, now=100.0) == []
    assert cursor.advance([], xmin=6, xmax=11, now=129.0) == []  # xmin held back by someone else
    assert ids(cursor.advance([], xmin=6, xmax=11, now=131.0)) == [2]
    assert cursor.skipped_by_timeout == 1


def test_a_skipped_id_is_read_again_and_comes_out_late_when_it_commits() -> None:
    cursor = EventCursor(floor=0, gap_timeout_s=30)
    cursor.advance([ev(2)], xmin=5, xmax=10, now=100.0)
    assert ids(cursor.advance([], xmin=6, xmax=11, now=131.0)) == [2]  # 1 skipped by timeout
    assert cursor.skipped_ids == [1] and 1 in cursor.wanted_ids
    assert cursor.advance([ev(1)], xmin=12, xmax=12, now=140.0) == []  # it committed after all
    assert ids(cursor.take_late()) == [1] and cursor.take_late() == []
    assert cursor.skipped_ids == [] and cursor.late_released == 1


def test_a_skipped_id_is_forgotten_once_its_transaction_has_ended() -> None:
    cursor = EventCursor(floor=0, gap_timeout_s=30)
    cursor.advance([ev(2)], xmin=5, xmax=10, now=100.0)
    cursor.advance([], xmin=6, xmax=11, now=131.0)
    assert cursor.skipped_ids == [1]
    cursor.advance([], xmin=9, xmax=12, now=132.0)
    assert cursor.skipped_ids == [1]  # xid 9 may still be its transaction
    cursor.advance([], xmin=10, xmax=12, now=133.0)
    assert cursor.skipped_ids == [] and cursor.take_late() == []  # ended without committing it


def test_the_read_ahead_stops_at_max_held_while_a_gap_is_open() -> None:
    cursor = EventCursor(floor=0, max_held=3, batch=1000)
    assert cursor.read_limit == 1000
    cursor.advance([ev(2), ev(3), ev(4)], xmin=5, xmax=10)
    assert cursor.held_ids == [2, 3, 4] and cursor.read_limit == 0  # only the missing id is asked for
    assert cursor.wanted_ids == [1] and cursor.read_after == 4
    assert ids(cursor.advance([ev(1)], xmin=5, xmax=10)) == [1, 2, 3, 4]
    assert cursor.read_limit == 1000 and cursor.wanted_ids == []
