"""Live status under operations: Postgres restarting, several service processes on one database,
shutdown, stream tokens, and the Python client against the real service."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser, create_user, hash_key
from service.auth.callers import KEY, Caller
from service.client import FalJobsClient, JobWaitTimeout
from service.db.migrations import apply_migrations
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.emulator.signing import signed_headers
from tests.conftest import RunningServer, bearer, fal_settings, serve
from tests.processes import service_processes
from tests.sse import SseReader
from tests.test_live_streams import change, new_job


async def test_postgres_restart_mid_stream_loses_no_event(fal: FalEmulator, http: httpx.AsyncClient) -> None:
    import pgserver
    from pgserver._commands import pg_ctl

    from service.app import create_app

    server = pgserver.get_server(tempfile.mkdtemp(prefix="fal-jobs-restart-"), cleanup_mode="delete")
    try:
        dsn = server.get_uri()
        apply_migrations(dsn)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        user = await create_user(pool, "restart")
        request_id = await new_job(pool, user)
        await pool.close()
        service = await serve(lambda url: create_app(fal_settings(dsn, fal, url)))
        try:
            async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) as stream:
                await stream.next_job()
                await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)
                pool = await create_pool(dsn, min_size=1, max_size=2)
                try:
                    await change(pool, request_id, "in_progress")
                    await change(pool, request_id, "completed")
                finally:
                    await pool.close()
                assert [(await stream.next_job(timeout=15))[1]["version"] for _ in range(2)] == [2, 3]
                await stream.expect_end()
            assert service.app.state.listener.reconnects >= 1
        finally:
            await service.stop()
    finally:
        server.cleanup()


async def test_two_processes_a_subscriber_on_a_gets_the_change_b_took(database_url: str, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, tmp_path: Path) -> None:
    async with service_processes(database_url, fal, tmp_path, STREAM_TOKEN_SECRET="s" * 40) as (a_process, b_process):
        a, b = a_process.url, b_process.url
        request_id = await new_job(pool, user)
        async with SseReader(http, f"{a}/api/events", bearer(user)) as on_a:
            await on_a.next()  # ready
            body = msgspec.json.encode({"request_id": request_id, "status": "OK", "payload": {"seed": 1}})
            headers = signed_headers(fal.keyset.current, request_id=request_id, user_id="u", timestamp=int(time.time()), body=body)
            taken = await http.post(f"{b}/api/webhooks/fal", content=body, headers=headers)
            assert taken.status_code == 200 and taken.json()["outcome"] == "applied"
            _, job = await on_a.next_job()
            assert (job["request_id"], job["status"]) == (request_id, "completed")
            # A token minted by B opens a stream on A: the processes share STREAM_TOKEN_SECRET.
            token = (await http.post(f"{b}/api/stream-tokens", json={"scope": "user"}, headers=bearer(user))).json()["token"]
            async with SseReader(http, f"{a}/api/events?token={token}") as with_token:
                assert (await with_token.next()).event == "ready"
            # Shutdown ends open streams cleanly, so that browsers reconnect elsewhere: the body ends
            # with its last chunk. A stream left open would be cut by uvicorn's graceful-shutdown
            # time-out instead, which httpx reports as an incomplete body (no time bound needed).
            a_process.process.send_signal(signal.SIGINT)
            await on_a.expect_end(timeout=60)
            assert on_a.error is None, f"the stream was cut, not ended: {on_a.error!r}"
        assert await asyncio.to_thread(a_process.process.wait, 30) == 0


async def test_stream_tokens_are_scoped_and_expire(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    created = await http.post(f"{service.url}/api/jobs", headers=bearer(user),
                              json={"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x", "fal_emulator": {"queue_ms": 300}}})
    job = created.json()
    request_id, token = job["request_id"], job["stream_token"]
    async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events?token={token}") as stream:
        _, snapshot = await stream.next_job()
        assert snapshot["request_id"] == request_id
    another = await new_job(pool, user)
    wrong_job = await http.get(f"{service.url}/api/jobs/{another}/events?token={token}")
    assert wrong_job.status_code == 401 and "another stream" in wrong_job.json()["message"]
    on_user_stream = await http.get(f"{service.url}/api/events?token={token}")
    assert on_user_stream.status_code == 401
    forged = await http.get(f"{service.url}/api/jobs/{request_id}/events?token={token[:-4]}AAAA")
    assert forged.status_code == 401
    tokens = service.app.state.tokens
    caller = Caller(user_id=user.user_id, credential=KEY + hash_key(user.api_key))
    expired, _ = tokens.issue(caller, f"job:{request_id}", now=time.time() - tokens.ttl_s - 1)
    response = await http.get(f"{service.url}/api/jobs/{request_id}/events?token={expired}")
    assert response.status_code == 401 and "expired" in response.json()["message"]
    theirs = await http.post(f"{service.url}/api/stream-tokens", json={"scope": "job", "request_id": request_id}, headers=bearer(other_user))
    assert theirs.status_code == 404
    user_token = (await http.post(f"{service.url}/api/stream-tokens", json={"scope": "user"}, headers=bearer(user))).json()
    assert user_token["url"].startswith("/api/events?token=")
    nothing = await http.get(f"{service.url}/api/events")
    assert nothing.status_code == 401 and nothing.json()["error"] == "not_authenticated"


async def test_python_client_creates_and_waits_over_sse(service: RunningServer, fal: FalEmulator, user: NewUser) -> None:
    async with FalJobsClient(service.url, user.api_key) as client:
        job = await client.create_job("image", "fal-ai/flux/dev", {"prompt": "a heron", "fal_emulator": {"queue_ms": 100, "run_ms": 200, "logs": 2}})
        assert job.status == "pending"
        seen = [j async for j in client.iter_events(job.request_id)]
        assert seen[0].version >= 1 and seen[-1].status == "completed"
        assert [j.version for j in seen] == sorted({j.version for j in seen}), "in order, no duplicate"
        done = await client.wait_for_job(job.request_id, timeout=10)  # already finished: 204 path
        assert done.status == "completed" and done.result["seed"] > 2**53
        slow = await client.create_job("video", "fal-ai/minimax/video-01", {"prompt": "tide", "fal_emulator": {"queue_ms": 5000}})
        with pytest.raises(JobWaitTimeout) as timed_out:
            await client.wait_for_job(slow.request_id, timeout=0.5)
        assert timed_out.value.job is not None and timed_out.value.job.status == "pending"
        assert (await client.get_job(slow.request_id)).request_id == slow.request_id
