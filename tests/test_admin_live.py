"""The operator's live stream and console page over real HTTP: /api/admin/events carries every
user's job changes (with the resume contract of /api/events) to admins only; /admin is served to
an admin's browser session and is a 404 to anyone else."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from service.app import CREDENTIAL_CHECK_S
from service.auth.api_keys import NewUser, hash_key
from service.auth.browser_sessions import SESSION_COOKIE, issue_sign_in_token, redeem_sign_in_token
from service.auth.callers import KEY
from service.auth.users import set_admin
from service.realtime import streams
from service.realtime.events import EVENT_COLUMNS, event_from_row
from service.realtime.hub import Hub
from service.realtime.streams import open_user_stream
from tests.conftest import RunningServer, bearer
from tests.sse import SseReader
from tests.test_admin import new_admin
from tests.test_live_streams import caught_up, change, new_job


async def next_job_of(stream: SseReader, *request_ids: str) -> tuple[int, dict[str, Any]]:
    """The next event of one of these jobs, and its event id: the admin stream carries the whole
    service, and an earlier test's job may still change (a late output copy, a webhook retry) or
    come as a remembered late event (its id a token `<position>.<seq>`, as are the ids after it)."""
    while True:
        message = await stream.next()
        assert message.event == "job" and message.id is not None, message
        job = message.json()
        if job["request_id"] in request_ids:
            return int(message.id.partition(".")[0]), job


async def session_cookie(pool: asyncpg.Pool, user: NewUser) -> dict[str, str]:
    session_id = await redeem_sign_in_token(pool, await issue_sign_in_token(pool, user.user_id))
    assert session_id is not None
    return {"cookie": f"{SESSION_COOKIE}={session_id}"}


async def test_the_admin_stream_is_a_404_to_anyone_but_an_admin(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    url = f"{service.url}/api/admin/events"
    answer = await http.get(url, headers=bearer(user))
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert (await http.get(url, headers=await session_cookie(pool, user))).status_code == 404
    assert (await http.get(url)).status_code == 401
    await set_admin(pool, user.name, True)
    async with SseReader(http, url, bearer(user)) as stream:
        assert stream.status_code == 200
        assert (await stream.next()).event == "ready"


async def test_an_admin_receives_every_users_changes_and_resumes_exactly(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    admin = await new_admin(pool)
    url = f"{service.url}/api/admin/events"
    await caught_up(service, pool)  # the stream carries everyone's jobs: earlier tests' too
    # On the browser session too (EventSource sends the cookie): that is how the console opens it.
    async with SseReader(http, url, await session_cookie(pool, admin)) as stream:
        ready = await stream.next()
        assert ready.event == "ready" and ready.id is not None
        mine, theirs = await new_job(pool, user), await new_job(pool, other_user)
        seen = [await next_job_of(stream, mine, theirs) for _ in range(2)]
        assert [(job["request_id"], job["user_id"], job["status"]) for _, job in seen] == [
            (mine, user.user_id, "pending"), (theirs, other_user.user_id, "pending")]
        await change(pool, theirs, "in_progress")
        running_id, running = await next_job_of(stream, mine, theirs)
        assert (running["request_id"], running["status"]) == (theirs, "in_progress")
    # While the console is away: its resume gets exactly what it missed, in order, nothing twice.
    await change(pool, mine, "completed")
    await change(pool, theirs, "failed")
    await caught_up(service, pool)
    async with SseReader(http, url, {**bearer(admin), "Last-Event-ID": str(running_id)}) as stream:
        resumed = [await next_job_of(stream, mine, theirs) for _ in range(2)]
        assert [(job["request_id"], job["status"]) for _, job in resumed] == [(mine, "completed"), (theirs, "failed")]
        assert resumed[0][0] > running_id
        later = await new_job(pool, other_user)
        assert (await next_job_of(stream, mine, theirs, later))[1]["request_id"] == later


async def test_an_admin_stream_costs_other_streams_nothing(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    """A user's stream still gets only its own jobs while an operator watches everyone's."""
    admin = await new_admin(pool)
    await caught_up(service, pool)
    async with SseReader(http, f"{service.url}/api/admin/events", bearer(admin)) as everyone, \
            SseReader(http, f"{service.url}/api/events", bearer(user)) as own:
        assert (await everyone.next()).event == "ready" and (await own.next()).event == "ready"
        theirs = await new_job(pool, other_user)
        mine = await new_job(pool, user)
        assert (await own.next_job())[1]["request_id"] == mine
        assert [(await next_job_of(everyone, theirs, mine))[1]["request_id"] for _ in range(2)] == [theirs, mine]


async def test_the_console_page_is_for_an_admins_browser_session_only(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    url = f"{service.url}/admin"
    assert (await http.get(url)).status_code == 404
    cookie = await session_cookie(pool, user)
    refused = await http.get(url, headers=cookie)
    assert refused.status_code == 404 and refused.json()["error"] == "not_found"
    assert (await http.get(url, headers={"cookie": f"{SESSION_COOKIE}=not-a-session"})).status_code == 404
    await set_admin(pool, user.name, True)
    assert (await http.get(url, headers=bearer(user))).status_code == 404  # a page for a browser, not a key
    page = await http.get(url, headers=cookie)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/admin.js">' in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]


async def test_an_admin_resuming_from_long_ago_starts_afresh_not_with_every_job(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `REPLAY_LIMIT` events (a console waking after a weekend, or `last_event_id=1`), the
    latest state of every job changed since has no bound: the operator's stream sends a fresh
    `ready` at the current position (the console reads its list again), then live changes only.
    A user's stream still sends each changed job's latest state."""
    monkeypatch.setattr(streams, "REPLAY_LIMIT", 2)
    admin = await new_admin(pool)
    jobs = [await new_job(pool, user) for _ in range(4)]
    await caught_up(service, pool)
    url = f"{service.url}/api/admin/events"
    async with SseReader(http, url, {**bearer(admin), "Last-Event-ID": "1"}) as stream:
        ready = await stream.next()
        assert ready.event == "ready" and ready.id is not None, ready
        position = int(ready.id)
        assert position >= await pool.fetchval("SELECT max(id) FROM fal_job_events WHERE request_id = ANY($1)", jobs)
        later = await new_job(pool, user)
        event_id, job = await next_job_of(stream, *jobs, later)
        assert job["request_id"] == later and event_id > position, "nothing replayed: live changes only"
    async with SseReader(http, f"{service.url}/api/events", {**bearer(user), "Last-Event-ID": "1"}) as own:
        replayed = {(await own.next_job())[1]["request_id"] for _ in range(5)}
        assert replayed == {*jobs, later}, "a user's stream: each changed job's latest state"


async def test_an_operator_stream_that_falls_behind_gets_a_fresh_ready(pool: asyncpg.Pool, user: NewUser) -> None:
    """An operator's subscription that overflows its queue is not sent every job changed since (no
    bound over all users): a `ready` at the hub's position, then the live changes."""
    hub = Hub(capacity=2)
    hub.publish((), 0)
    stream = await open_user_stream(hub, pool, user_id=None, statuses=None, types=None, last_event_id=None)
    messages = aiter(stream)
    assert (await anext(messages)).event == "ready"
    jobs = [await new_job(pool, user) for _ in range(4)]
    rows = await pool.fetch(f"SELECT {EVENT_COLUMNS} FROM fal_job_events WHERE request_id = ANY($1) ORDER BY id", jobs)
    events = [event_from_row(row) for row in rows]
    for event in events[:-1]:  # the stream does not read: its queue (capacity 2) overflows
        hub.publish([event], event.id)
    assert stream._subscription.backlog == 0, "overflowed"
    resync = await asyncio.wait_for(anext(messages), 5)
    assert (resync.event, resync.id) == ("ready", events[-2].id)
    hub.publish([events[-1]], events[-1].id)
    live = await asyncio.wait_for(anext(messages), 5)
    assert (live.event, live.id) == ("job", events[-1].id)
    stream.close()


async def test_a_demoted_admins_stream_ends_within_the_check_interval(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """Admin status is read when the stream opens, and again by each process's periodic check
    (`CREDENTIAL_CHECK_S`): made an ordinary user again, an operator stops seeing every user's jobs
    within the interval, while the streams of their own jobs stay open."""
    admin = await new_admin(pool)
    async with SseReader(http, f"{service.url}/api/admin/events", bearer(admin)) as everyone, \
            SseReader(http, f"{service.url}/api/events", bearer(admin)) as own:
        assert (await everyone.next()).event == "ready" and (await own.next()).event == "ready"
        await set_admin(pool, admin.name, False)
        async with asyncio.timeout(CREDENTIAL_CHECK_S + 3):  # its heartbeats would keep expect_end waiting
            await everyone.expect_end()
        assert service.app.state.admission.held(KEY + hash_key(admin.api_key), "stream") == 1, "its place is given back"
        mine = await new_job(pool, admin)
        assert (await own.next_job())[1]["request_id"] == mine, "the user's own stream goes on"
