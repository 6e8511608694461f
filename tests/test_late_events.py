"""Late events, one rule on every stream: no stream sends a job's version below one it sent, and a
resume gets every late event it may lack.

The sequences are those of the reliability review (L1, L2, L3, the shared run id), run with the
real `EventCursor`, `Hub`, `Subscription` and streams; the hubs fed by hand stand for a process's
listener, and the snapshots and replays read the real Postgres. The last test goes through the live
service over SSE.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser
from service.realtime import streams
from service.realtime.cursor import EventCursor
from service.realtime.events import EVENT_COLUMNS, JobEvent, event_from_row
from service.realtime.hub import Hub, Late, ResumePoint, Signal
from service.realtime.streams import Outgoing, open_user_stream
from tests.conftest import RunningServer, bearer
from tests.sse import SseReader
from tests.test_live_streams import caught_up, change, hub_of, new_job


def event(id: int, request_id: str, version: int, user_id: str = "u") -> JobEvent:
    data = msgspec.json.encode({"request_id": request_id, "version": version}).decode()
    return JobEvent(id, request_id, user_id, version, "in_progress", "image", data)


def seen(item: JobEvent | Late | Signal) -> tuple[int, str, int]:
    got = item.event if isinstance(item, Late) else item
    assert isinstance(got, JobEvent), item
    return got.id, got.request_id, got.version


def job_of(message: Outgoing) -> tuple[str, int]:
    assert message.event == "job" and message.data is not None, message
    job = msgspec.json.decode(message.data)
    return job["request_id"], job["version"]


async def events_of(pool: asyncpg.Pool, request_id: str) -> list[JobEvent]:
    rows = await pool.fetch(f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = $1 ORDER BY id", request_id)
    return [event_from_row(row) for row in rows]


async def messages_until(stream: AsyncIterator[Outgoing], last_id: int) -> list[Outgoing]:
    """Every message up to the one of event `last_id` (a sentinel published after the scenario);
    after a late event a user stream's ids are tokens, `<event id>.<seq>`."""
    got: list[Outgoing] = []
    while not got or str(got[-1].id).partition(".")[0] != str(last_id):
        got.append(await asyncio.wait_for(anext(stream), 10))
    return got


# L2 -------------------------------------------------------------------------------------------

async def test_l2_a_late_event_goes_out_before_the_newer_version_read_with_it() -> None:
    """Review L2: a late event (job x, version 3) and x's next change (version 4), which waited on
    x's row until the late one committed, come in one read. The user stream got 4, then 3."""
    cursor = EventCursor(floor=0, gap_timeout_s=30.0)
    hub = Hub()
    hub.publish((), cursor.floor)
    user_stream = hub.subscribe(user_id="u")
    job_stream = hub.subscribe(user_id="u", request_id="x")
    x3, other, x4 = event(1, "x", 3), event(2, "other", 1), event(3, "x", 4)

    def read(rows: list[JobEvent], now: float) -> None:
        released = cursor.advance(rows, xmin=10, xmax=11, now=now)  # what the listener does with a read
        hub.publish(released, cursor.floor, late=cursor.take_late())

    read([other], now=0.0)  # id 1 is missing: its transaction has not committed
    read([], now=31.0)  # past the gap time-out: 1 is skipped, 2 goes out
    assert cursor.skipped_ids == [1]
    read([x3, x4], now=32.0)  # the stalled commit ends, and the change that waited on x's row with it
    received = [seen(await user_stream.next(1)) for _ in range(3)]
    assert received == [(2, "other", 1), (1, "x", 3), (3, "x", 4)]
    assert [seen(await job_stream.next(1)) for _ in range(2)] == [(1, "x", 3), (3, "x", 4)]
    assert hub.recent_late[-1].position == 2, "placed at the position before the read"


async def test_l2_a_resume_sends_the_late_events_before_its_replay(pool: asyncpg.Pool, user: NewUser,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Review L2, resumes: a late version 2 of job x, remembered, and x's version 3 in the replay.
    The replay (and, past `REPLAY_LIMIT`, each job's latest state) went first, then the late 2."""
    x, y = await new_job(pool, user), await new_job(pool, user)
    await change(pool, x, "in_progress")
    await change(pool, x, "completed")
    a, b, c = await events_of(pool, x)  # x's versions 1, 2, 3
    (d,) = await events_of(pool, y)
    assert a.id < b.id < c.id and d.id < b.id
    hub = Hub()
    hub.publish((), a.id - 1)
    hub.publish([a], b.id)  # b skipped (its transaction was still open)
    hub.publish([c], c.id, late=[b])
    for limit in (streams.REPLAY_LIMIT, 0):  # a replay, then each job's latest state instead
        monkeypatch.setattr(streams, "REPLAY_LIMIT", limit)
        # A client that had every event up to b's id on another process, which released b in order.
        resumed = await open_user_stream(hub, pool, user_id=user.user_id, statuses=None, types=None,
                                         last_event_id=b.id)
        messages = aiter(resumed)
        first, second = [await asyncio.wait_for(anext(messages), 10) for _ in range(2)]
        resumed.close()
        assert [job_of(m) for m in (first, second)] == [(x, 2), (x, 3)], limit
        assert first.id == f"{b.id}.{hub.recent_late[-1].seq}", "placed at the resume point"


async def test_l2_a_resync_sends_neither_a_late_event_twice_nor_below_the_snapshot(pool: asyncpg.Pool, user: NewUser) -> None:
    """Review L2, resync: job x's version 2 is skipped while job y's creation goes out; then x's 2
    comes late and is delivered, and the subscriber falls behind with x's version 3 in its backlog.
    The resync sent the snapshot (x at 3), then the late 2 again (its id is below where the stream
    stood)."""
    x = await new_job(pool, user)
    await change(pool, x, "in_progress")
    y = await new_job(pool, user)
    await change(pool, x, "completed")
    a, b, c = await events_of(pool, x)
    await change(pool, y, "in_progress")
    await change(pool, y, "completed")
    d, y2, y3 = await events_of(pool, y)
    assert a.id < b.id < d.id < c.id < y2.id < y3.id
    hub = Hub(capacity=1)
    hub.publish((), a.id - 1)
    stream = await open_user_stream(hub, pool, user_id=user.user_id, statuses=None, types=None, last_event_id=None)
    messages = aiter(stream)
    assert (await anext(messages)).event == "ready"
    hub.publish([a], a.id)
    assert job_of(await anext(messages)) == (x, 1)
    hub.publish([d], d.id)  # b skipped (its transaction was still open)
    assert job_of(await anext(messages)) == (y, 1)
    hub.publish((), d.id, late=[b])
    assert job_of(await anext(messages)) == (x, 2)
    hub.publish([c, y2], y2.id)  # the subscriber does not read: its queue (capacity 1) overflows
    hub.publish([y3], y3.id)
    assert stream._subscription.backlog == 0, "overflowed"
    got = await messages_until(messages, y3.id)  # the resync's snapshot
    sentinel = event(y3.id + 1, "sentinel", 1, user.user_id)
    hub.publish([sentinel], sentinel.id)
    got += await messages_until(messages, sentinel.id)
    assert [job_of(m) for m in got] == [(x, 3), (y, 3), ("sentinel", 1)]
    stream.close()


async def test_a_late_event_a_resume_replay_already_held_is_not_sent_again(pool: asyncpg.Pool, user: NewUser) -> None:
    """The replay reads the database after the hub skipped b, and b commits in between: the replay
    holds b, and the late b the hub finds next is not sent again. Only such a snapshot fills the
    subscription's dict of versions; a resume that meets no pending late event keeps none."""
    x, y = await new_job(pool, user), await new_job(pool, user)
    await change(pool, x, "in_progress")
    a, b = await events_of(pool, x)
    await change(pool, y, "in_progress")
    _, y2 = await events_of(pool, y)
    hub = Hub()
    hub.publish((), a.id - 1)
    plain = await open_user_stream(hub, pool, user_id=user.user_id, statuses=None, types=None, last_event_id=a.id - 1)
    assert plain._subscription._versions is None, "no pending late event: no dict"
    plain.close()
    hub.pending_late = {b.id}  # the listener's skipped ids
    hub.publish([a], b.id)
    stream = await open_user_stream(hub, pool, user_id=user.user_id, statuses=None, types=None, last_event_id=a.id)
    messages = aiter(stream)
    replay = [job_of(await anext(messages)) for _ in range(2)]  # read from the database: y's creation, then b
    assert replay == [(y, 1), (x, 2)]
    hub.pending_late = set()
    hub.publish([y2], y2.id, late=[b])  # the listener finds b late
    got = await messages_until(messages, y2.id)
    assert [job_of(m) for m in got] == [(y, 2)]
    stream.close()


# L1 -------------------------------------------------------------------------------------------

async def test_l1_a_plain_resume_gets_a_late_event_this_process_placed_below_it(pool: asyncpg.Pool) -> None:
    """Review L1: process A's listener is away while process B goes on to 3,000 and its client
    receives 3,000. A's first read after reconnecting finds the late event 1 (and 3..1002), so A
    placed it at 1,002, below 3,000; the client resumes on A from 3,000 and never got it."""
    user_id = f"l1-{uuid.uuid4().hex[:8]}"
    events = {id: event(id, f"job-{id}", 1, user_id) for id in range(1, 3001)}
    a_cursor = EventCursor(floor=0, gap_timeout_s=30.0, batch=1000)
    a = Hub()
    a.publish((), a_cursor.floor)

    def read(ids: range | list[int], now: float) -> None:
        released = a_cursor.advance([events[id] for id in ids], xmin=10, xmax=11, now=now)
        a.publish(released, a_cursor.floor, late=a_cursor.take_late())

    read([2], now=0.0)  # 1 missing
    read([], now=31.0)  # skipped; A's LISTEN connection then drops
    # (B skips 1 too and goes on to 3,000; its client has 3,000.) The stalled transaction commits 1.
    read([1, *range(3, 1003)], now=40.0)  # A reconnects: its first read, 1,000 new rows and the late 1
    read(range(1003, 2003), now=41.0)
    read(range(2003, 3001), now=42.0)
    assert a.position == 3000 and a_cursor.late_released == 1
    assert [late.event.id for late in a.late_since(ResumePoint(3000))] == [1]
    resumed = await open_user_stream(a, pool, user_id=user_id, statuses=None, types=None, last_event_id=3000)
    first = await asyncio.wait_for(anext(aiter(resumed)), 10)
    assert job_of(first) == ("job-1", 1) and first.id == f"3000.{a.recent_late[-1].seq}"
    resumed.close()


async def test_a_token_of_a_process_started_in_the_same_second_counts_as_foreign() -> None:
    """Review L1, second way in: each process's seqs started at int(time.time()) * 1,000,000, so two
    workers started together read each other's tokens as their own and compared counts that mean
    nothing across them: a late event that A placed at the client's position, with a lower count
    than B's token, was left out."""
    while True:  # two processes' hubs, made within one second
        second = int(time.time())
        a, b = Hub(), Hub()
        if int(time.time()) == second:
            break
    a.publish((), 100)
    a.publish((), 100, late=[event(50, "x", 2)])  # A: one late event, at position 100
    b.publish((), 100)
    b.publish((), 100, late=[event(60, "y", 2)])
    b.publish((), 100, late=[event(70, "z", 2)])
    token = ResumePoint(100, b.recent_late[-1].seq)  # a client on B had both of B's, then moved to A
    assert [late.event.id for late in a.late_since(token)] == [50]
    assert [late.event.id for late in b.late_since(token)] == [], "on B itself the token has them all"
    assert a.run != b.run


# L3 -------------------------------------------------------------------------------------------

async def test_l3_a_drop_between_two_late_events_of_a_resume_loses_neither(pool: asyncpg.Pool) -> None:
    """Review L3: a client away since 100; late 50 found at 100, late 60 between 105 and 110; the hub
    at 120. Its resume sent both stamped `120.<seq>`; the client dropped after the first, and its
    resume from `120.<seq of 50>` got nothing: 60 was below 120 and placed before it."""
    user_id = f"l3-{uuid.uuid4().hex[:8]}"
    hub = Hub()
    hub.publish((), 100)
    hub.publish((), 100, late=[event(50, "j50", 2, user_id)])
    hub.publish((), 105)
    hub.publish((), 110, late=[event(60, "j60", 2, user_id)])
    hub.publish((), 120)
    resumed = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None, last_event_id=100)
    messages = aiter(resumed)
    first = await asyncio.wait_for(anext(messages), 10)
    assert job_of(first) == ("j50", 2)
    resumed.close()  # the connection drops here
    position, _, seq = str(first.id).partition(".")
    again = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None,
                                   last_event_id=ResumePoint(int(position), int(seq)))
    second = await asyncio.wait_for(anext(aiter(again)), 10)
    assert job_of(second) == ("j60", 2)
    again.close()
    # The token of the last one owes nothing more (own tokens compare by seq).
    position, _, seq = str(second.id).partition(".")
    assert hub.late_since(ResumePoint(int(position), int(seq))) == []


# Over SSE ---------------------------------------------------------------------------------------

async def test_resumes_over_sse_get_every_late_event_first_and_across_a_drop(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    """The live service's hub finds two late events (as its listener would: placed where it stood)
    while another process's client has gone past both places. That client resumes here with its
    plain id: both late events come first (L1, L2), each with a token; it drops after the first
    and resumes from that token: the second still comes, then the change after (L3)."""
    hub = hub_of(service)
    x, y, z = await new_job(pool, user), await new_job(pool, user), await new_job(pool, user)
    await caught_up(service, pool)
    (late_x,), (late_y,) = await events_of(pool, x), await events_of(pool, y)
    hub.publish((), hub.position, late=[late_x])
    await change(pool, z, "in_progress")
    await caught_up(service, pool)
    hub.publish((), hub.position, late=[late_y])
    elsewhere = hub.position  # the other process's client has every event up to here
    await change(pool, z, "completed")
    await caught_up(service, pool)
    url = f"{service.url}/api/events"
    async with SseReader(http, url, {**bearer(user), "Last-Event-ID": str(elsewhere)}) as stream:
        first, second = [await stream.next() for _ in range(2)]
        assert [(m.json()["request_id"], m.json()["version"]) for m in (first, second)] == [(x, 1), (y, 1)]
        third = await stream.next()
        assert (third.json()["request_id"], third.json()["version"]) == (z, 3)
    assert first.id is not None and first.id.startswith(f"{elsewhere}.")
    async with SseReader(http, url, {**bearer(user), "Last-Event-ID": first.id}) as stream:
        got = [(await stream.next()).json() for _ in range(2)]
    assert [(job["request_id"], job["version"]) for job in got] == [(y, 1), (z, 3)]


async def test_after_a_late_event_a_user_streams_ids_keep_resumes_from_sending_it_again(pool: asyncpg.Pool) -> None:
    """A plain id gets every remembered late event at or below it. So once a stream has sent a
    late event, its later events carry tokens too, and a client that keeps resuming (from the
    newest id it has) does not get that late event on every resume."""
    user_id = f"again-{uuid.uuid4().hex[:8]}"
    hub = Hub()
    hub.publish((), 100)
    stream = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None, last_event_id=None)
    messages = aiter(stream)
    assert (await anext(messages)).id == 100  # `ready`: plain while nothing late came
    hub.publish([event(101, "j101", 1, user_id)], 101)
    assert (await anext(messages)).id == 101
    hub.publish([event(103, "j103", 1, user_id)], 103, late=[event(90, "j90", 2, user_id)])
    late, after = await anext(messages), await anext(messages)
    assert job_of(late) == ("j90", 2) and late.id == f"101.{hub.late_seq}"
    assert job_of(after) == ("j103", 1) and after.id == f"103.{hub.late_seq}"
    stream.close()
    position, _, seq = str(after.id).partition(".")
    resumed = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None,
                                     last_event_id=ResumePoint(int(position), int(seq)))
    hub.publish([event(104, "j104", 1, user_id)], 104)
    assert job_of(await asyncio.wait_for(anext(aiter(resumed)), 10)) == ("j104", 1), "not the late j90 again"
    resumed.close()
    plain = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None, last_event_id=103)
    assert job_of(await asyncio.wait_for(anext(aiter(plain)), 10)) == ("j90", 2), "a plain id: at least once"
    plain.close()
