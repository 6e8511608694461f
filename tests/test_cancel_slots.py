"""A cancelled job gives its open-jobs slot back only once fal has ended the request.

fal's cancel of a running request only signals the runner, which may run on (and bill) to its own
end; the emulator's `cancel_ignored` is such a runner, and its `hold` lets a test say when fal ends
it. The user sees `cancelled` at once all the same; a queued request is removed by fal at once.
Against the live service and the emulator, over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser
from service.auth.users import UserLimits, set_limits
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer, fal_settings, serve
from tests.test_fal_round_trip import submit
from tests.test_reconcile import reconciler_of

RUNS_UNTIL_RELEASED = {"queue_ms": 0, "hold": True, "cancel_ignored": True}
"""A request that starts when released once, ignores a cancel, and ends when released again."""


async def running_job(server: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
                      **faults: object) -> str:
    request_id = (await submit(http, server.url, user, **RUNS_UNTIL_RELEASED, **faults))["request_id"]
    fal.release(request_id)
    await fal.wait_until(lambda: fal.requests[request_id].state == "IN_PROGRESS")
    return request_id


async def cancel(server: RunningServer, http: httpx.AsyncClient, user: NewUser, request_id: str) -> None:
    answer = await http.post(f"{server.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelled"), answer.text


async def create(server: RunningServer, http: httpx.AsyncClient, user: NewUser) -> httpx.Response:
    return await http.post(f"{server.url}/api/jobs", headers=bearer(user), json={
        "type": "image", "model_id": "fal-ai/flux/dev",
        "input": {"prompt": "after a cancel", "fal_emulator": {"queue_ms": 120_000}}})


async def wait_for_fal_end(pool: asyncpg.Pool, request_id: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while await pool.fetchval("SELECT counts_open_until FROM fal_jobs WHERE request_id = $1", request_id):
            await asyncio.sleep(0.05)


async def job_state(pool: asyncpg.Pool, request_id: str) -> tuple[str, int, int]:
    row = await pool.fetchrow(
        "SELECT status, version, (SELECT count(*) FROM fal_job_events e WHERE e.request_id = j.request_id) AS events "
        "FROM fal_jobs j WHERE request_id = $1", request_id)
    return row["status"], row["version"], row["events"]


async def test_jobs_cancelled_while_running_keep_their_slots_until_fal_ends_them(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    """fal's end arrives as its webhook: the status stream the follower reads stays silent."""
    await cancelled_running_jobs_hold_their_slots(service, fal, http, pool, user, stream_stall=True)


async def test_jobs_cancelled_while_running_keep_their_slots_until_fal_ends_them_without_webhooks(
    polling_service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    """fal's end is seen by the follower alone."""
    await cancelled_running_jobs_hold_their_slots(polling_service, fal, http, pool, user)


async def cancelled_running_jobs_hold_their_slots(
    server: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
    **faults: object,
) -> None:
    await set_limits(pool, user.name, UserLimits(max_open_jobs=2))
    jobs = [await running_job(server, fal, http, user, **faults) for _ in range(2)]
    try:
        for request_id in jobs:
            await cancel(server, http, user, request_id)
        refused = await create(server, http, user)
        assert refused.status_code == 429, refused.text
        assert "cancelled but not yet ended at fal" in refused.json()["message"]
        assert refused.headers["retry-after"].isdigit()
        before = await job_state(pool, jobs[0])

        fal.release(jobs[0])  # fal's runner ends the first by itself: its result comes, the job stays cancelled
        await wait_for_fal_end(pool, jobs[0])
        assert (await create(server, http, user)).status_code == 202
        assert (await create(server, http, user)).status_code == 429, "the second is still running at fal"
        assert await job_state(pool, jobs[0]) == before == ("cancelled", before[1], before[2])
    finally:
        for request_id in jobs:
            fal.release(request_id)


async def test_a_queued_job_cancelled_gives_its_slot_back_at_once(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    await set_limits(pool, user.name, UserLimits(max_open_jobs=2))
    for _ in range(2):
        request_id = (await submit(http, service.url, user, queue_ms=120_000, cancel_ignored=True))["request_id"]
        await cancel(service, http, user, request_id)
        assert await pool.fetchval("SELECT counts_open_until FROM fal_jobs WHERE request_id = $1", request_id) is None
    assert [(await create(service, http, user)).status_code for _ in range(3)] == [202, 202, 429]


@pytest_asyncio.fixture(loop_scope="session")
async def short_hold_service(database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, url, CANCEL_HOLD_MAX_S="10")))
    yield running
    await running.stop()


@pytest.mark.timeout(120)
async def test_a_cancelled_job_whose_end_never_comes_gives_its_slot_back_after_cancel_hold_max_s(
    short_hold_service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    server = short_hold_service
    await set_limits(pool, user.name, UserLimits(max_open_jobs=1))
    request_id = await running_job(server, fal, http, user)
    try:
        await cancel(server, http, user, request_id)
        assert (await create(server, http, user)).status_code == 429
        refusals = 0
        async with asyncio.timeout(60):
            while (answer := await create(server, http, user)).status_code == 429:
                refusals += 1
                await asyncio.sleep(0.5)
        assert answer.status_code == 202, answer.text
        # fal never ended it: the slot came back by the bound alone.
        assert fal.requests[request_id].state == "IN_PROGRESS"
        assert await pool.fetchval("SELECT counts_open_until FROM fal_jobs WHERE request_id = $1", request_id)
        assert refusals > 0
    finally:
        fal.release(request_id)


async def test_the_sweep_frees_the_slot_of_a_cancelled_job_fal_no_longer_knows(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    request_id = await running_job(service, fal, http, user)
    await cancel(service, http, user, request_id)
    before = await job_state(pool, request_id)
    fal.forget(request_id)  # fal lost it: no webhook, no COMPLETED; the follower leaves it to the sweep
    follower = service.app.state.follower
    async with asyncio.timeout(20):
        while follower.is_streaming(request_id):
            await asyncio.sleep(0.05)
    assert await pool.fetchval("SELECT counts_open_until FROM fal_jobs WHERE request_id = $1", request_id)
    await pool.execute("UPDATE fal_jobs SET updated_at = now() - interval '1 hour' WHERE request_id = $1", request_id)
    report = await reconciler_of(service).sweep_once()
    assert report.fal_ended >= 1
    assert await pool.fetchval("SELECT counts_open_until FROM fal_jobs WHERE request_id = $1", request_id) is None
    assert await job_state(pool, request_id) == before
