"""Live status over real HTTP and the real Postgres: SSE streams, resume, isolation, the listener
losing its connection, out-of-order commits, heartbeats, overflow, waiting without polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from service.auth.api_keys import NewUser
from service.db.pool import init_connection
from service.emulator import FalEmulator
from service.jobs.models import JobChange, LogLine, NewJob
from service.jobs.status_machine import apply_change, create_job
from service.realtime.hub import Hub
from tests.conftest import RunningServer, bearer, fal_settings, scratch_database, scratch_role, serve
from tests.sse import SseReader


async def new_job(pool: asyncpg.Pool, user: NewUser, type: str = "image") -> str:
    request_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, model_id="fal-ai/flux/dev",
                                            type=type, input={"prompt": "p"}, mode="webhook"))  # type: ignore[arg-type]
    return request_id


async def change(pool: asyncpg.Pool, request_id: str, status: str, **fields: object) -> None:
    async with pool.acquire() as connection:
        applied = await apply_change(connection, request_id, JobChange(status=status, **fields))  # type: ignore[arg-type]
    assert applied.accepted


def hub_of(service: RunningServer) -> Hub:
    return service.app.state.hub


async def caught_up(service: RunningServer, pool: asyncpg.Pool) -> None:
    """Wait until the service's listener has published every event committed so far, so that a
    stream opened now starts after them (its `ready` position): else, on a busy machine, the
    creation events of the test's own jobs can still arrive live and look like a change."""
    newest = await pool.fetchval("SELECT coalesce(max(id), 0) FROM fal_job_events")
    hub = hub_of(service)
    async with asyncio.timeout(30):
        while hub.position < newest:
            await asyncio.sleep(0.01)


async def test_job_stream_sends_snapshot_then_changes_then_ends(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await new_job(pool, user)
    await change(pool, request_id, "pending", queue_position=3)
    async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) as stream:
        _, snapshot = await stream.next_job()
        assert (snapshot["status"], snapshot["version"], snapshot["queue_position"]) == ("pending", 2, 3)
        await change(pool, request_id, "in_progress", logs=[LogLine(message="warming up", timestamp="2026-01-01T00:00:01")])
        first_id, running = await stream.next_job()
        assert (running["status"], running["version"], running["logs"][-1]["message"]) == ("in_progress", 3, "warming up")
        await change(pool, request_id, "completed", result={"seed": 196619188014358660})
        last_id, done = await stream.next_job()
        assert done["status"] == "completed" and done["version"] == 4 and last_id > first_id
        assert done["result"]["seed"] == 196619188014358660
        await stream.expect_end()


async def test_resume_after_a_dropped_client_loses_nothing_and_repeats_nothing(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await new_job(pool, user)
    url = f"{service.url}/api/jobs/{request_id}/events"
    async with SseReader(http, url, bearer(user)) as stream:
        seen_id, snapshot = await stream.next_job()
        assert snapshot["version"] == 1
    # While the client is away:
    await change(pool, request_id, "pending", queue_position=1)
    await change(pool, request_id, "in_progress")
    await caught_up(service, pool)  # this process has published both changes
    async with SseReader(http, url, {**bearer(user), "Last-Event-ID": str(seen_id)}) as stream:
        # The job's latest state, not every change since (each event carries the whole job).
        resumed_id, resumed = await stream.next_job()
        assert resumed["version"] == 3 and resumed_id > seen_id
        await change(pool, request_id, "completed")
        terminal_id, done = await stream.next_job()
        assert done["version"] == 4
        await stream.expect_end()
    # The query parameter works as the header does, and a resume after the end answers 204.
    async with SseReader(http, f"{url}?last_event_id={seen_id}", bearer(user)) as stream:
        assert (await stream.next_job())[1]["version"] == 4
        await stream.expect_end()
    finished = await http.get(url, headers={**bearer(user), "Last-Event-ID": str(terminal_id)})
    assert finished.status_code == 204
    for bad in ("%C2%B2", "-1", "9" * 30, "abc"):  # "²" (a digit to str.isdigit) goes in the query
        malformed = await http.get(f"{url}?last_event_id={bad}", headers=bearer(user))
        assert malformed.status_code == 400 and "last_event_id" in malformed.json()["message"]


async def test_user_stream_resumes_exactly_and_isolates_users(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as mine:
        ready = await mine.next()
        assert ready.event == "ready" and ready.id is not None
        theirs = await new_job(pool, other_user)
        await change(pool, theirs, "completed")
        job_a = await new_job(pool, user)
        event_id, created = await mine.next_job()
        assert created["request_id"] == job_a, "the other user's two events never reached this stream"
        await change(pool, job_a, "in_progress")
        resume_from, _ = await mine.next_job()
    await change(pool, job_a, "completed")
    job_b = await new_job(pool, user, type="video")
    async with SseReader(http, f"{service.url}/api/events", {**bearer(user), "Last-Event-ID": str(resume_from)}) as mine:
        got = [(await mine.next_job())[1] for _ in range(2)]
        assert [(j["request_id"], j["status"]) for j in got] == [(job_a, "completed"), (job_b, "pending")]
    async with SseReader(http, f"{service.url}/api/events?type=video&status=pending", {**bearer(user), "Last-Event-ID": str(event_id)}) as filtered:
        assert (await filtered.next_job())[1]["request_id"] == job_b
    other = await http.get(f"{service.url}/api/jobs/{job_a}/events", headers=bearer(other_user))
    assert other.status_code == 404


async def test_heartbeats_and_retry_hint(service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as stream:
        first = await asyncio.wait_for(stream.messages.get(), 5)
        assert first is not None and first.retry == 2000
        await stream.next()  # ready
        heartbeat = await stream.next(timeout=5, skip_comments=False)
        assert heartbeat.comment == "heartbeat"


async def test_heartbeats_take_turns_instead_of_waking_every_stream_at_once() -> None:
    """Each tick wakes one slice of the streams: a webhook arriving then waits behind a few writes,
    not behind one per open stream. Checked by the order of the heartbeats, not by timing."""
    from service.realtime.hub import HEARTBEAT_SLICES, HEARTBEAT_TICK_MIN_S, Signal

    hub = Hub()
    subscriptions = [hub.subscribe(user_id="u", request_id=f"job-{i}") for i in range(2 * HEARTBEAT_SLICES)]
    order: list[int] = []

    async def watch(index: int) -> None:
        assert await subscriptions[index].next() is Signal.TIMEOUT
        order.append(index)

    watchers = [asyncio.create_task(watch(i)) for i in range(len(subscriptions))]
    interval_s = 8 * HEARTBEAT_TICK_MIN_S  # eight ticks per interval
    hub.start_heartbeats(interval_s)
    try:
        await asyncio.wait_for(asyncio.gather(*watchers), 10)
    finally:
        hub.stop_heartbeats()
    assert sorted(order) == list(range(len(subscriptions))), "every stream has its heartbeat within one interval"
    per_tick = len(subscriptions) // 8
    turns = [{index % HEARTBEAT_SLICES % 8 for index in order[k * per_tick:(k + 1) * per_tick]} for k in range(8)]
    assert turns == [{k} for k in range(8)], "tick k wakes only the slices of turn k"
    for subscription in subscriptions:
        hub.unsubscribe(subscription)
    assert hub.subscriber_count == 0 and not any(hub._heartbeat_slices)


async def test_disconnects_free_every_subscription(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    hub = hub_of(service)
    before = hub.subscriber_count
    request_id = await new_job(pool, user)
    readers = [SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) for _ in range(20)]
    readers += [SseReader(http, f"{service.url}/api/events", bearer(user)) for _ in range(20)]
    for reader in readers:
        await reader.__aenter__()
        await reader.next()
    assert hub.subscriber_count == before + 40
    for reader in readers:
        await reader.close()
    deadline = time.monotonic() + 30  # generous: a loaded machine may take a while to see the closes
    while hub.subscriber_count != before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert hub.subscriber_count == before == 0


async def test_a_late_commit_of_a_lower_id_reaches_every_stream_and_every_resume(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, database_url: str, user: NewUser) -> None:
    """Transaction 1 takes event id N and commits after transaction 2 took and committed N+1."""
    job_1, job_2 = await new_job(pool, user), await new_job(pool, user)
    await caught_up(service, pool)
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as stream, \
            SseReader(http, f"{service.url}/api/jobs/{job_1}/events", bearer(user)) as job_1_stream:
        ready = await stream.next()
        await job_1_stream.next_job()  # its snapshot
        slow = await asyncpg.connect(database_url)
        await init_connection(slow)
        try:
            transaction = slow.transaction()
            await transaction.start()
            await apply_change(slow, job_1, JobChange(status="in_progress"))  # takes id N, not committed
            await change(pool, job_2, "in_progress")  # takes N+1, committed first
            with pytest.raises(asyncio.TimeoutError):
                await stream.next(timeout=0.5)  # N+1 is held back while N may still commit
            await transaction.commit()
        finally:
            await slow.close()
        id_n, first = await stream.next_job()
        id_n1, second = await stream.next_job()
        assert (first["request_id"], second["request_id"]) == (job_1, job_2) and id_n1 == id_n + 1
        assert (await job_1_stream.next_job())[0] == id_n
    for after, expected in ((ready.id, [job_1, job_2]), (str(id_n), [job_2])):
        async with SseReader(http, f"{service.url}/api/events", {**bearer(user), "Last-Event-ID": after}) as resumed:
            assert [(await resumed.next_job())[1]["request_id"] for _ in expected] == expected


async def test_a_rolled_back_id_does_not_hold_the_stream_forever(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, database_url: str, user: NewUser) -> None:
    job_1, job_2 = await new_job(pool, user), await new_job(pool, user)
    await caught_up(service, pool)
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as stream:
        await stream.next()
        slow = await asyncpg.connect(database_url)
        await init_connection(slow)
        try:
            transaction = slow.transaction()
            await transaction.start()
            await apply_change(slow, job_1, JobChange(status="in_progress"))
            await change(pool, job_2, "in_progress")
            await transaction.rollback()
        finally:
            await slow.close()
        _, got = await stream.next_job(timeout=5)
        assert got["request_id"] == job_2


async def test_listener_killed_mid_stream_loses_no_event(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    listener = service.app.state.listener
    reconnects = listener.reconnects
    request_id = await new_job(pool, user)
    async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) as stream:
        await stream.next_job()
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'fal-jobs-listener' AND datname = current_database()"
        )
        assert killed >= 1
        # Changes committed while the listener is down or reconnecting:
        await change(pool, request_id, "in_progress")
        await change(pool, request_id, "completed")
        versions = [(await stream.next_job())[1]["version"] for _ in range(2)]
        assert versions == [2, 3]
        await stream.expect_end()
    assert listener.reconnects > reconnects
    ready = (await http.get(f"{service.url}/readyz")).json()
    assert ready["checks"]["listener"] == "ok"


# Every statement a backend runs moves its pg_stat_activity row to `active` and back to `idle`, and
# each move stamps `state_change`. The backend writes that row into shared memory itself as the
# statement starts and ends (not through the cumulative statistics that pg_stat_database's counters
# are, which a backend flushes lazily, up to seconds later). So if the service's backends show the
# same (pid, backend_start, state_change) before and after a window, and no new backend appeared,
# not one statement ran in that window: an exact count, where xact_commit could include commits made
# before the window. The service connects as a role of its own, so the test's own queries (through
# the `postgres` role) are not in the count.
BACKENDS = """
SELECT pid, backend_start, state_change, state, query FROM pg_stat_activity
WHERE usename = $1 AND datname = $2 AND application_name <> 'fal-jobs-listener' ORDER BY pid
"""


async def test_wait_answers_on_completion_and_at_the_deadline(server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    """The service runs on a database and a role of its own, so that its statements can be counted
    exactly. The LISTEN connection is left out: it reads once per wake-up and once per 30 s per
    process, however many clients wait, and waking the waiter is its job."""
    from service.app import create_app
    from service.auth.api_keys import create_user
    from service.db.pool import create_pool

    async with scratch_database(server_dsn) as dsn, scratch_role(dsn) as (role, service_dsn), \
            contextlib.AsyncExitStack() as stack:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        stack.push_async_callback(pool.close)
        service = await serve(lambda url: create_app(fal_settings(service_dsn, fal, url, SSE_HEARTBEAT_S="60")))
        stack.push_async_callback(service.stop)
        name = urlsplit(dsn).path.lstrip("/")
        user = await create_user(pool, "waiter")
        request_id = await new_job(pool, user)
        url = f"{service.url}/api/jobs/{request_id}"

        async def backends() -> list[tuple[object, ...]]:
            return [tuple(row) for row in await pool.fetch(BACKENDS, role, name)]

        async def settled(condition: Callable[[list[tuple[object, ...]]], bool]) -> list[tuple[object, ...]]:
            async with asyncio.timeout(30):
                while not condition(rows := await backends()):
                    await asyncio.sleep(0.02)
            return rows

        # The start-up sweep ends with the removal of expired uploads (after the outputs' upkeep),
        # then closes the connection that held its advisory lock: wait for both, so that it is not counted.
        await settled(lambda rows: any(r[3] == "idle" and "DELETE FROM fal_uploads" in str(r[4]) for r in rows)
                      and not any("pg_try_advisory_lock" in str(r[4]) for r in rows))
        hub = service.app.state.hub
        subscribers = hub.subscriber_count
        waiting = asyncio.create_task(http.get(f"{url}?wait=30", headers=bearer(user)))
        # The waiter subscribes, then reads the job once: wait until that read has ended.
        async with asyncio.timeout(30):
            while hub.subscriber_count == subscribers:
                await asyncio.sleep(0.01)
        before = await settled(lambda rows: all(r[3] == "idle" for r in rows)
                               and any("FROM fal_jobs WHERE request_id" in str(r[4]) for r in rows))
        await asyncio.sleep(1.0)  # the window in which nothing may run (an absence needs a window)
        after = await backends()
        assert not waiting.done()
        assert [r[:3] for r in after] == [r[:3] for r in before], f"statements ran while one client waited: {after}"
        await change(pool, request_id, "completed", result={"ok": True})
        response = await waiting
        # A wait that ran out would answer with the state it last knew, `pending`: `completed` means
        # the change woke it.
        assert response.status_code == 200 and response.json()["status"] == "completed"

        pending = await new_job(pool, user)
        started = time.monotonic()
        response = await http.get(f"{service.url}/api/jobs/{pending}?wait=0.5", headers=bearer(user))
        assert response.json()["status"] == "pending" and time.monotonic() - started >= 0.45
        too_long = await http.get(f"{service.url}/api/jobs/{pending}?wait=301", headers=bearer(user))
        assert too_long.status_code == 400 and "wait" in too_long.json()["message"]


async def test_a_slow_subscriber_is_resynced_with_a_snapshot_not_buffered_forever(pool: asyncpg.Pool, user: NewUser) -> None:
    """A subscriber that does not read overflows its bounded queue (capacity 4 here) while another
    keeps up; the slow one then gets each job's latest state from the database, not its backlog."""
    from service.realtime.events import EVENT_COLUMNS, event_from_row
    from service.realtime.streams import open_user_stream

    hub = Hub(capacity=4)
    hub.publish((), 0)  # what the listener does when it connects
    slow = await open_user_stream(hub, pool, user_id=user.user_id, statuses=None, types=None, last_event_id=0)
    fast = hub.subscribe(user_id=user.user_id)
    jobs = [await new_job(pool, user) for _ in range(3)]
    for job in jobs:
        await change(pool, job, "completed")
    rows = await pool.fetch(f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = ANY($1) ORDER BY id", jobs)
    events = [event_from_row(row) for row in rows]
    assert len(events) == 6
    backlog_seen = 0
    for event in events:  # the listener's role, one event at a time
        hub.publish([event], event.id)
        backlog_seen = max(backlog_seen, slow._subscription.backlog)
        assert await fast.next(1) == event, "the subscriber that keeps up gets every event, in order"
    assert backlog_seen <= 4, "the slow subscriber's queue stays bounded"
    iterator = slow.__aiter__()
    latest = [await asyncio.wait_for(iterator.__anext__(), 5) for _ in range(3)]
    assert [m.id for m in latest] == [e.id for e in events if e.status == "completed"]
    assert all('"completed"' in (m.data or "") for m in latest), "one message per job: its latest state"
    slow.close()
    with pytest.raises(StopAsyncIteration):
        await iterator.__anext__()
    hub.unsubscribe(fast)
    assert hub.subscriber_count == 0
