"""fal's failure paths, through the real HTTP surface: the emulator misbehaves (status and result
calls failing, status streams breaking, requests held in a state until the test releases them) and
the database refuses a write, and the service must still end every paid job right."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser, create_user
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.emulator.signing import signed_headers
from service.fal.gateway import FalGateway
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import apply_change, create_job
from service.usecases.follow_jobs import FollowTarget, JobFollower
from tests.conftest import (
    FAL_KEY,
    RunningServer,
    bearer,
    fal_settings,
    scratch_database,
    scratch_role,
    serve,
)
from tests.sse import SseReader
from tests.test_fal_round_trip import submit
from tests.test_live_streams import caught_up

MODEL = "fal-ai/flux/dev"


@contextlib.asynccontextmanager
async def running_service(dsn: str, fal: FalEmulator, *, webhooks: bool, **overrides: str) -> AsyncIterator[RunningServer]:
    """A service of the test's own (its own settings, follower and sweep), talking to the emulator."""
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(dsn, fal, url if webhooks else None, **overrides)))
    try:
        yield running
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def database_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def record_job(pool: asyncpg.Pool, user: NewUser, request_id: str, mode: str = "polling", prompt: str = "p") -> str:
    """A job row as the service writes it, for a request the service itself did not submit."""
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, model_id=MODEL, type="image",
                                            input={"prompt": prompt}, mode=mode))  # type: ignore[arg-type]
    return request_id


async def submit_to_fal(http: httpx.AsyncClient, fal: FalEmulator, **faults: Any) -> str:
    """A request fal knows, submitted behind the service's back (no follower watches it)."""
    response = await http.post(f"{fal.base_url}/{MODEL}", headers={"Authorization": f"Key {FAL_KEY}"},
                               json={"prompt": "p", "fal_emulator": faults})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


async def create(http: httpx.AsyncClient, service: RunningServer, user: NewUser, prompt: str = "p", **faults: Any) -> httpx.Response:
    return await http.post(f"{service.url}/api/jobs", headers=bearer(user),
                           json={"type": "image", "model_id": MODEL, "input": {"prompt": prompt, "fal_emulator": faults}})


async def created(http: httpx.AsyncClient, service: RunningServer, user: NewUser, **faults: Any) -> str:
    response = await create(http, service, user, **faults)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


async def job(http: httpx.AsyncClient, service: RunningServer, user: NewUser, request_id: str, wait: float | None = None) -> dict[str, Any]:
    query = f"?wait={wait}" if wait is not None else ""
    response = await http.get(f"{service.url}/api/jobs/{request_id}{query}", headers=bearer(user))
    assert response.status_code == 200, response.text
    return response.json()


async def status_calls_reach(fal: FalEmulator, request_id: str, count: int, describe: Any) -> None:
    try:
        await fal.wait_until(lambda: fal.requests[request_id].status_calls >= count, timeout=30)
    except TimeoutError:
        pytest.fail(f"fal was asked {fal.requests[request_id].status_calls} times, not {count}: {await describe()}")


# 1 and 6: the sweep and its loop ---------------------------------------------------------------


async def test_the_sweep_leaves_jobs_open_while_fal_fails_and_fails_only_what_fal_does_not_know(
    server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient,
) -> None:
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool:
        user = await create_user(pool, "sweeper")
        flaky = await record_job(pool, user, await submit_to_fal(http, fal, hold=True, status_failures=3))
        lost = await record_job(pool, user, str(uuid.uuid4()))
        orphan, fresh = str(uuid.uuid4()), str(uuid.uuid4())
        await pool.execute(
            "INSERT INTO fal_early_webhooks (request_id, body, received_at) VALUES "
            "($1, '{}', now() - interval '25 hours'), ($2, '{}', now())", orphan, fresh)
        # A short interval: the loop itself runs the sweeps, several of them.
        async with running_service(dsn, fal, webhooks=False, RECONCILE_INTERVAL_S="0.05", RECONCILE_AFTER_S="0.01") as service:
            gone = await job(http, service, user, lost, wait=30)
            assert (gone["status"], gone["error_type"]) == ("failed", "unknown_to_fal"), gone
            # Three sweeps met a 500 and went on; the fourth found the request queued.
            await status_calls_reach(fal, flaky, 4, lambda: job(http, service, user, flaky))
            still = await job(http, service, user, flaky)
            assert still["status"] == "pending", f"a 5xx from fal must leave a job open: {still}"
            # The sweep handed it to a follower, which sees it through.
            fal.release(flaky)
            fal.release(flaky)
            done = await job(http, service, user, flaky, wait=30)
            assert done["status"] == "completed" and done["result"]["seed"] > 2**53
        parked = {row["request_id"] for row in await pool.fetch("SELECT request_id FROM fal_early_webhooks")}
        assert parked == {fresh}, "a parked webhook no job claimed for a day is dropped; a fresh one stays"


async def test_the_sweep_leaves_a_job_open_when_fal_times_out(server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool:
        user = await create_user(pool, "patient")
        slow = await record_job(pool, user, await submit_to_fal(http, fal, hold=True, status_stalls=2))
        async with running_service(dsn, fal, webhooks=False, RECONCILE_INTERVAL_S="0.05", RECONCILE_AFTER_S="0.01",
                                   FAL_CALL_TIMEOUT_S="0.5") as service:
            # Two sweeps waited for fal in vain and went on; the third got an answer.
            await status_calls_reach(fal, slow, 3, lambda: job(http, service, user, slow))
            still = await job(http, service, user, slow)
            assert still["status"] == "pending", f"a time-out at fal must leave a job open: {still}"
            fal.release(slow)
            fal.release(slow)
            assert (await job(http, service, user, slow, wait=30))["status"] == "completed"


async def test_a_restarted_service_follows_the_open_jobs_again(server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool:
        user = await create_user(pool, "restarter")
        async with running_service(dsn, fal, webhooks=False) as first:
            request_id = await created(http, first, user, hold=True)
            await status_calls_reach(fal, request_id, 1, lambda: job(http, first, user, request_id))
        calls = fal.requests[request_id].status_calls
        async with running_service(dsn, fal, webhooks=False, RECONCILE_AFTER_S="0.01") as second:
            # Its start-up sweep asks fal, then follows the job (the first follower died with its process).
            await status_calls_reach(fal, request_id, calls + 2, lambda: job(http, second, user, request_id))
            fal.release(request_id)
            fal.release(request_id)
            assert (await job(http, second, user, request_id, wait=30))["status"] == "completed"


# 2: the follower --------------------------------------------------------------------------------


async def test_a_broken_status_stream_falls_back_to_polls_then_streams_again(polling_service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    request_id = await created(http, polling_service, user, hold=True, stream_breaks=2, logs=1)
    await status_calls_reach(fal, request_id, 1, lambda: job(http, polling_service, user, request_id))
    fal.release(request_id)  # the first stream breaks at this change; a poll sees it, then a new stream
    await status_calls_reach(fal, request_id, 3, lambda: job(http, polling_service, user, request_id))
    fal.release(request_id)  # the second stream breaks too; the poll after it finds the job done
    done = await job(http, polling_service, user, request_id, wait=30)
    assert done["status"] == "completed" and done["mode"] == "polling"
    assert fal.requests[request_id].stream_breaks == 0, "both streams were opened and broken"


async def test_a_follower_stops_when_fal_no_longer_knows_the_job_and_the_sweep_fails_it(server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool:
        user = await create_user(pool, "forgotten")
        async with running_service(dsn, fal, webhooks=False, RECONCILE_INTERVAL_S="0.05", RECONCILE_AFTER_S="0.01") as service:
            request_id = await created(http, service, user, hold=True)
            await status_calls_reach(fal, request_id, 1, lambda: job(http, service, user, request_id))
            fal.forget(request_id)  # its stream ends without COMPLETED; the next call is a 404
            # The sweep skips a job that is being followed: only a follower that stopped lets it fail.
            failed = await job(http, service, user, request_id, wait=30)
            assert (failed["status"], failed["error_type"]) == ("failed", "unknown_to_fal"), failed
            assert not service.app.state.follower.is_following(request_id)


@contextlib.asynccontextmanager
async def follower_of_its_own(pool: asyncpg.Pool, fal: FalEmulator, **options: float) -> AsyncIterator[JobFollower]:
    """A follower outside any service, for the limits no setting reaches (the stream's read time-out,
    the give-up deadline): the real gateway, emulator and database, with short bounds."""
    gateway = FalGateway(key=FAL_KEY, queue_url=fal.base_url, stream_read_timeout_s=options.pop("stream_read_timeout_s", 60.0))
    follower = JobFollower(pool, gateway, **options)  # type: ignore[arg-type]
    try:
        yield follower
    finally:
        await follower.aclose()
        await gateway.aclose()


async def follower_done(follower: JobFollower) -> None:
    async with asyncio.timeout(30):
        while follower.active:
            await asyncio.sleep(0.01)


async def test_a_stalled_status_stream_times_out_and_polls_see_the_job_through(fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await record_job(pool, user, await submit_to_fal(http, fal, hold=True, stream_stall=True))
    async with follower_of_its_own(pool, fal, stream_read_timeout_s=0.5) as follower:
        follower.follow(FollowTarget(request_id=request_id, model_id=MODEL, mode="polling"))
        await status_calls_reach(fal, request_id, 1, lambda: pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id))
        fal.release(request_id)
        fal.release(request_id)  # done at fal; the stalled stream never says so
        await follower_done(follower)
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "completed"


async def test_a_follower_gives_up_at_its_deadline_even_on_an_open_stream(fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await record_job(pool, user, await submit_to_fal(http, fal, hold=True))
    async with follower_of_its_own(pool, fal, give_up_after_s=0.5) as follower:
        follower.follow(FollowTarget(request_id=request_id, model_id=MODEL, mode="polling"))
        await follower_done(follower)  # a healthy, quiet stream to a job fal keeps queued
        assert not follower.is_following(request_id), "the slot is free again; the sweep settles the job"
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "pending"


async def test_followers_past_the_limit_wait_their_turn(database_url: str, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    async with running_service(database_url, fal, webhooks=False, MAX_FOLLOWERS="1") as service:
        first = await created(http, service, user, hold=True)
        second = await created(http, service, user, hold=True)
        follower = service.app.state.follower
        assert (follower.active, follower.waiting) == (1, 1)
        await status_calls_reach(fal, first, 1, lambda: job(http, service, user, first))
        assert fal.requests[second].status_calls == 0, "the second job waits for a slot, it is not streamed"
        fal.release(first)
        fal.release(first)
        assert (await job(http, service, user, first, wait=30))["status"] == "completed"
        await status_calls_reach(fal, second, 1, lambda: job(http, service, user, second))
        fal.release(second)
        fal.release(second)
        assert (await job(http, service, user, second, wait=30))["status"] == "completed"


# 3: webhooks whose output must be fetched, and fal's keys out of reach --------------------------


async def test_a_payload_error_whose_result_fetch_fails_with_5xx_is_refused_so_fal_retries(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    request_id = await created(http, service, user, outcome="payload_error", result_failures=1)
    done = await job(http, service, user, request_id, wait=30)
    assert done["status"] == "completed" and done["result"]["seed"] > 2**53
    await fal.wait_until(lambda: len(fal.deliveries_for(request_id)) >= 2)  # recorded once answered
    assert [d.status_code for d in fal.deliveries_for(request_id)] == [503, 200]


async def test_a_payload_error_whose_result_fetch_answers_4xx_fails_the_job(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    request_id = await created(http, service, user, outcome="payload_error", result_failures=1000, failure_status=404)
    failed = await job(http, service, user, request_id, wait=30)
    assert failed["status"] == "failed" and "404" in failed["error"], failed
    await fal.wait_until(lambda: len(fal.deliveries_for(request_id)) >= 1)  # recorded once answered
    assert [d.status_code for d in fal.deliveries_for(request_id)] == [200]


async def test_a_webhook_while_fals_keys_are_unreachable_is_refused_with_503(database_url: str, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await record_job(pool, user, str(uuid.uuid4()), mode="webhook")
    body = msgspec.json.encode({"request_id": request_id, "status": "OK", "payload": {"seed": 7}})
    # A service of its own: its key cache starts empty, so it must reach fal's JWKS.
    async with running_service(database_url, fal, webhooks=True) as service:
        fal.jwks_available = False
        try:
            headers = signed_headers(fal.keyset.current, request_id=request_id, user_id=fal.user_id, timestamp=int(time.time()), body=body)
            refused = await http.post(f"{service.url}/api/webhooks/fal", content=body, headers=headers)
            assert refused.status_code == 503 and refused.json()["error"] == "unavailable", refused.text
            assert (await job(http, service, user, request_id))["status"] == "pending"
        finally:
            fal.jwks_available = True
        taken = await http.post(f"{service.url}/api/webhooks/fal", content=body, headers=headers)
        assert taken.status_code == 200, taken.text
        assert (await job(http, service, user, request_id))["status"] == "completed"


# 4: fal took the request, the database did not ------------------------------------------------


async def test_a_fal_request_whose_job_row_cannot_be_written_is_cancelled(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    marker = f"unwritable-{uuid.uuid4().hex[:8]}"
    # The database side of the fault: this one row cannot be written, as on a full disk.
    await pool.execute(f"""
        CREATE FUNCTION refuse_{marker.replace('-', '_')}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.input->>'prompt' = '{marker}' THEN
                RAISE EXCEPTION 'emulated: no space left for this job row' USING ERRCODE = 'disk_full';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_{marker.replace('-', '_')} BEFORE INSERT ON fal_jobs
            FOR EACH ROW EXECUTE FUNCTION refuse_{marker.replace('-', '_')}();
    """)
    try:
        response = await create(http, service, user, prompt=marker, hold=True)
    finally:
        await pool.execute(f"DROP TRIGGER refuse_{marker.replace('-', '_')} ON fal_jobs; "
                           f"DROP FUNCTION refuse_{marker.replace('-', '_')}()")
    assert response.status_code == 503 and response.headers["retry-after"], response.text
    [request] = [r for r in fal.requests.values() if r.input.get("prompt") == marker]
    assert request.cancelled and request.state == "COMPLETED", "a paid request nobody owns must not run on"
    assert await pool.fetchval("SELECT count(*) FROM fal_jobs WHERE request_id = $1", request.request_id) == 0


# 5: the listener, apart and late ---------------------------------------------------------------


async def test_streams_and_wait_answer_503_until_the_separate_listen_connection_is_up(server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool, \
            scratch_role(dsn, create=False) as (role, listen_dsn):
        user = await create_user(pool, "listener")
        request_id = await record_job(pool, user, str(uuid.uuid4()), mode="webhook")
        # LISTEN_DATABASE_URL names a role that does not exist yet: the listener cannot connect.
        async with running_service(dsn, fal, webhooks=True, LISTEN_DATABASE_URL=listen_dsn) as service:
            ready = await http.get(f"{service.url}/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["listener"] != "ok", ready.text
            for path in ("/api/events", f"/api/jobs/{request_id}/events", f"/api/jobs/{request_id}?wait=5"):
                refused = await http.get(f"{service.url}{path}", headers=bearer(user))
                assert refused.status_code == 503 and refused.json()["error"] == "unavailable", (path, refused.text)
            await pool.execute(f'CREATE ROLE "{role}" LOGIN')
            await service.app.state.listener.wait_connected(timeout=30)
            # The LISTEN connection went where LISTEN_DATABASE_URL says, the pool where DATABASE_URL does.
            listening = await pool.fetch("SELECT usename FROM pg_stat_activity WHERE application_name = 'fal-jobs-listener' "
                                         "AND datname = current_database()")
            assert [row["usename"] for row in listening] == [role]
            assert (await http.get(f"{service.url}/readyz")).status_code == 200
            async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) as stream:
                assert (await stream.next_job())[1]["status"] == "pending"
                async with pool.acquire() as connection:
                    await apply_change(connection, request_id, JobChange(status="completed", result={"seed": 1}))
                assert (await stream.next_job())[1]["status"] == "completed"


# 8: cancel while fal and the database disagree -------------------------------------------------


async def test_cancel_when_fal_no_longer_knows_the_job(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await record_job(pool, user, str(uuid.uuid4()), mode="webhook")
    response = await http.post(f"{service.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    assert response.status_code == 502 and "does not know" in response.json()["message"], response.text
    assert (await job(http, service, user, request_id))["status"] == "pending", "the sweep settles it, not a guess"


async def test_cancel_when_fal_already_completed_the_job(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await submit_to_fal(http, fal, queue_ms=0, run_ms=0)
    await fal.wait_until(lambda: fal.requests[request_id].state == "COMPLETED")
    await record_job(pool, user, request_id, mode="webhook")
    response = await http.post(f"{service.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    assert response.status_code == 409 and "already completed at fal" in response.json()["message"], response.text
    assert (await job(http, service, user, request_id))["status"] == "pending"
    assert not fal.requests[request_id].cancelled


# 7: a resume too long to replay ----------------------------------------------------------------


async def test_a_resume_past_the_replay_limit_gets_each_jobs_latest_state(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    from service.realtime.streams import REPLAY_LIMIT

    busy, quiet = [await record_job(pool, user, str(uuid.uuid4()), mode="webhook") for _ in range(2)]
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as stream:
        ready = await stream.next()
    async with pool.acquire() as connection:
        # More changes after the client's last event than a resume replays: fal counting a long queue down.
        for position in range(REPLAY_LIMIT + 1, 0, -1):
            assert (await apply_change(connection, busy, JobChange(status="pending", queue_position=position))).accepted
        await apply_change(connection, quiet, JobChange(status="completed", result={"seed": 1}))
    async with SseReader(http, f"{service.url}/api/events", {**bearer(user), "Last-Event-ID": str(ready.id)}) as resumed:
        first_id, first = await resumed.next_job()
        second_id, second = await resumed.next_job()
        assert (first["request_id"], first["queue_position"]) == (busy, 1), "the busy job's latest state, not its first change"
        assert (second["request_id"], second["status"]) == (quiet, "completed") and second_id > first_id
        # Then it is live again, exactly after what the snapshot covered.
        async with pool.acquire() as connection:
            await apply_change(connection, busy, JobChange(status="completed", result={"seed": 2}))
        live_id, live = await resumed.next_job()
        assert (live["request_id"], live["status"]) == (busy, "completed") and live_id > second_id


async def test_a_subscriber_that_stops_reading_overflows_its_queue_and_gets_a_fresh_snapshot(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    """Through HTTP at the real queue size (256): a client that stops reading fills its socket, the
    server's writes block, the subscriber's queue overflows, and when the client reads again it
    gets the jobs' latest states instead of the dropped backlog."""
    busy = await record_job(pool, user, str(uuid.uuid4()), mode="webhook", prompt="x" * 8000)
    await caught_up(service, pool)  # else the job's creation event can arrive live, after `ready`
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    host, port = service.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        # HTTP/1.0: the body comes unchunked, so SSE messages can be split on blank lines as they are.
        writer.write(f"GET /api/events HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {user.api_key}\r\n\r\n".encode())
        await writer.drain()
        assert b"event: ready" in await asyncio.wait_for(reader.readuntil(b"event: ready"), 10)
        changes = 1000
        async with pool.acquire() as connection:
            for position in range(changes, 0, -1):
                await apply_change(connection, busy, JobChange(status="pending", queue_position=position))
        # Read again until the busy job's last state arrives.
        seen: list[int] = []
        buffer = b""
        async with asyncio.timeout(60):
            while not seen or seen[-1] != 1:
                buffer += await reader.read(65536)
                *messages, buffer = buffer.split(b"\n\n")
                for message in messages:
                    lines = message.split(b"\n")
                    if b"event: job" in lines:
                        [data] = [line for line in lines if line.startswith(b"data: ")]
                        seen.append(msgspec.json.decode(data[6:])["queue_position"])
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen), "in order, no duplicate"
        assert len(seen) < changes, f"all {changes} changes were buffered for a client that did not read"
    finally:
        writer.close()


async def test_a_submit_is_not_starved_by_the_status_streams_of_the_open_jobs(
    server_dsn: str, fal: FalEmulator, http: httpx.AsyncClient,
) -> None:
    """Every open job has its status stream followed; more of them than fal-client's pool holds
    connections (100) must not leave the next submit waiting for one (it waited out its pool
    time-out: no job and a 502, or no answer at all). A service of its own, so that no other test's
    jobs take follower slots."""
    async with scratch_database(server_dsn) as dsn, database_pool(dsn) as pool:
        user = await create_user(pool, "many-open")
        async with running_service(dsn, fal, webhooks=True, MAX_OPEN_JOBS_PER_USER="1000",
                                   MAX_JOBS_PER_MINUTE="1000", MAX_FOLLOWERS="300") as service:
            follower = service.app.state.follower
            queued = [(await submit(http, service.url, user, hold=True))["request_id"] for _ in range(105)]
            try:
                async with asyncio.timeout(60):
                    while sum(follower.is_streaming(request_id) for request_id in queued) < len(queued):
                        await asyncio.sleep(0.05)
                answer = await http.post(f"{service.url}/api/jobs", headers=bearer(user), timeout=20, json={
                    "type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "past the pool"}})
                assert answer.status_code == 202, answer.text
                queued.append(answer.json()["request_id"])
            finally:
                for request_id in queued:
                    fal.forget(request_id)
