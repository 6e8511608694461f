"""The reconciliation sweep against the emulator and the real Postgres."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec

from service.emulator import FalEmulator
from service.fal.gateway import FalGateway
from service.jobs.models import NewJob
from service.jobs.status_machine import create_job
from service.usecases.sweep import SWEEP_LOCK_KEY, Reconciler, SweepReport
from tests.conftest import FAL_KEY, RunningServer


def reconciler_of(service: RunningServer) -> Reconciler:
    return service.app.state.reconciler


async def sweep(service: RunningServer) -> SweepReport:
    for _ in range(100):  # the service's own start-up sweep may hold the lock for a moment
        report = await reconciler_of(service).sweep_once()
        if report.ran:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError("the sweep never got its lock")


async def job_row(pool: asyncpg.Pool, request_id: str, *, mode: str = "webhook", overdue: bool = True) -> None:
    await pool.execute("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", "sweep-tests")  # jobs reference a user
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id="sweep-tests", model_id="fal-ai/flux/dev",
                                            type="image", input={}, mode=mode))  # type: ignore[arg-type]
    if overdue:
        await pool.execute("UPDATE fal_jobs SET updated_at = now() - interval '1 hour' WHERE request_id = $1", request_id)


async def test_a_job_fal_does_not_know_becomes_failed(service: RunningServer, pool: asyncpg.Pool) -> None:
    request_id = str(uuid.uuid4())
    await job_row(pool, request_id)
    report = await sweep(service)
    assert report.ran and report.unknown_to_fal >= 1
    row = await pool.fetchrow("SELECT status, error, error_type FROM fal_jobs WHERE request_id = $1", request_id)
    assert row["status"] == "failed" and "fal does not know this request" in row["error"]


async def test_a_completed_job_whose_webhook_never_came_is_completed_by_the_sweep(service: RunningServer, fal: FalEmulator, pool: asyncpg.Pool) -> None:
    gateway = FalGateway(key=FAL_KEY, queue_url=fal.base_url)
    try:
        request_id = await gateway.submit("fal-ai/flux/dev", {"prompt": "lost webhook"}, webhook_url=None)
        await fal.wait_until(lambda: fal.requests[request_id].state == "COMPLETED")
    finally:
        await gateway.aclose()
    await job_row(pool, request_id)
    not_yet = await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id)
    await sweep(service)
    row = await pool.fetchrow("SELECT status, result FROM fal_jobs WHERE request_id = $1", request_id)
    assert (not_yet, row["status"]) == ("pending", "completed")
    assert row["result"]["images"]


async def test_a_job_not_yet_overdue_is_left_alone(service: RunningServer, pool: asyncpg.Pool) -> None:
    request_id = str(uuid.uuid4())
    await job_row(pool, request_id, overdue=False)
    await sweep(service)
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "pending"


async def test_a_parked_webhook_is_adopted_by_the_sweep(service: RunningServer, pool: asyncpg.Pool) -> None:
    request_id = str(uuid.uuid4())
    parked = {"request_id": request_id, "status": "OK", "payload": {"images": [], "seed": 7}}
    await pool.execute("INSERT INTO fal_early_webhooks (request_id, body) VALUES ($1, $2)", request_id, parked)
    await job_row(pool, request_id, overdue=False)
    report = await sweep(service)
    assert report.adopted_webhooks >= 1
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "completed"
    assert await pool.fetchval("SELECT count(*) FROM fal_early_webhooks WHERE request_id = $1", request_id) == 0


async def test_only_one_process_sweeps_at_a_time(service: RunningServer, database_url: str) -> None:
    other_process = await asyncpg.connect(database_url)
    try:
        assert await other_process.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_KEY)
        report = await reconciler_of(service).sweep_once()
        assert msgspec.structs.asdict(report)["ran"] is False
    finally:
        await other_process.close()
    assert (await reconciler_of(service).sweep_once()).ran


async def test_the_sweep_re_drives_a_failed_output_while_fal_keeps_the_file(
    service: RunningServer, pool: asyncpg.Pool,
) -> None:
    from service.jobs.models import JobChange
    from service.jobs.status_machine import apply_change

    request_id = str(uuid.uuid4())
    await job_row(pool, request_id, overdue=False)
    async with pool.acquire() as connection:
        await apply_change(connection, request_id, JobChange(
            status="completed", result={"images": [{"url": "https://v3.fal.media/files/x.png"}]}))
    # Its fetches failed 8 times an hour ago (OUTPUT_REDRIVE_AFTER_S); fal keeps the file for days.
    await pool.execute(
        "UPDATE fal_job_outputs SET status = 'failed', retryable = true, last_error = 'gave up after 8 attempts', "
        "claim = NULL, updated_at = now() - interval '2 hours' WHERE request_id = $1", request_id)
    report = await sweep(service)
    assert report.outputs.get("outputs_redriven", 0) >= 1
    # One more event shows it pending again (the service's copiers may have had a go at it since).
    assert await pool.fetchval("SELECT count(*) FROM fal_job_events WHERE request_id = $1 "
                               "AND data->'outputs'->0->>'status' = 'pending'", request_id) == 2
