"""Retention by the sweep: aged rows go, each job keeps its latest event, and every stream still works,
a resume from a deleted event id included."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid

import asyncpg
import httpx

from service.auth.api_keys import NewUser
from service.auth.browser_sessions import issue_sign_in_token
from service.db.retention import apply_retention
from service.usecases.sweep import SweepReport
from tests.conftest import RunningServer, bearer
from tests.sse import SseReader
from tests.test_fal_round_trip import submit, wait_until_terminal


async def sweep(service: RunningServer) -> SweepReport:
    for _ in range(100):  # the service's own start-up sweep may hold the lock for a moment
        report = await service.app.state.reconciler.sweep_once()
        if report.ran:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError("the sweep never got its lock")


async def settled(http: httpx.AsyncClient, url: str, user: NewUser, request_id: str) -> None:
    """Completed, and every output copied or given up on (each of those is one more event)."""
    for _ in range(400):
        job = (await http.get(f"{url}/api/jobs/{request_id}", headers=bearer(user))).json()
        if job["status"] == "completed" and all(o["status"] != "pending" for o in job.get("outputs") or []):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {request_id} did not settle: {job}")


async def event_ids(pool: asyncpg.Pool, request_id: str) -> list[int]:
    return [r["id"] for r in await pool.fetch("SELECT id FROM fal_job_events WHERE request_id = $1 ORDER BY id", request_id)]


async def session_row(pool: asyncpg.Pool, user: NewUser, *, expired: bool) -> str:
    id_hash = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    await pool.execute(
        "INSERT INTO fal_browser_sessions (id_hash, user_id, csrf_token, created_at, expires_at) "
        "VALUES ($1, $2, 'csrf', now() - interval '40 days', now() + $3 * interval '1 day')",
        id_hash, user.user_id, -1 if expired else 1,
    )
    return id_hash


async def test_the_sweep_deletes_what_expired_and_streams_still_work(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser
) -> None:
    old_job = (await submit(http, service.url, user, queue_ms=50, run_ms=50, logs=2))["request_id"]
    recent_job = (await submit(http, service.url, user, queue_ms=50, run_ms=50))["request_id"]
    for request_id in (old_job, recent_job):
        assert (await wait_until_terminal(http, service.url, user, request_id))["status"] == "completed"
        await settled(http, service.url, user, request_id)
    old_events = await event_ids(pool, old_job)
    recent_events = await event_ids(pool, recent_job)
    assert len(old_events) >= 3 and len(recent_events) >= 2
    await pool.execute("UPDATE fal_job_events SET created_at = now() - interval '31 days' WHERE request_id = $1", old_job)

    expired_link = await issue_sign_in_token(pool, user.user_id)
    live_link = await issue_sign_in_token(pool, user.user_id)
    expired_hash = hashlib.sha256(expired_link.encode()).hexdigest()
    await pool.execute("UPDATE fal_sign_in_tokens SET expires_at = now() - interval '1 minute' WHERE token_hash = $1",
                       expired_hash)
    expired_session = await session_row(pool, user, expired=True)
    live_session = await session_row(pool, user, expired=False)
    unclaimed, recent_parked = f"unclaimed-{uuid.uuid4()}", f"parked-{uuid.uuid4()}"
    await pool.execute("INSERT INTO fal_early_webhooks (request_id, body, received_at) "
                       "VALUES ($1, '{}', now() - interval '2 days'), ($2, '{}', now())", unclaimed, recent_parked)
    reservations = [await pool.fetchval(
        "INSERT INTO fal_job_reservations (user_id, idempotency_key, body_sha256, created_at) "
        "VALUES ($1, $2, 'x', now() - $3 * interval '1 hour') RETURNING id", user.user_id, str(uuid.uuid4()), hours)
        for hours in (25, 1)]
    tokens_before = await pool.fetchval("SELECT count(*) FROM fal_sign_in_tokens WHERE user_id = $1", user.user_id)

    report = await sweep(service)

    assert report.deleted.get("fal_job_events", 0) >= len(old_events) - 1
    assert await event_ids(pool, old_job) == old_events[-1:], "an aged job keeps only its latest event"
    assert await event_ids(pool, recent_job) == recent_events, "recent events are kept"
    assert await pool.fetchval("SELECT count(*) FROM fal_jobs WHERE request_id = $1", old_job) == 1, "job rows stay"
    tokens_after = await pool.fetchval("SELECT count(*) FROM fal_sign_in_tokens WHERE user_id = $1", user.user_id)
    assert tokens_after == tokens_before - 1
    assert await pool.fetchval("SELECT count(*) FROM fal_sign_in_tokens WHERE token_hash = $1", expired_hash) == 0
    sessions = {r["id_hash"] for r in await pool.fetch("SELECT id_hash FROM fal_browser_sessions WHERE user_id = $1", user.user_id)}
    assert expired_session not in sessions and live_session in sessions
    parked = {r["request_id"] for r in await pool.fetch("SELECT request_id FROM fal_early_webhooks WHERE request_id = ANY($1)",
                                                        [unclaimed, recent_parked])}
    assert parked == {recent_parked}
    kept = {r["id"] for r in await pool.fetch("SELECT id FROM fal_job_reservations WHERE id = ANY($1)", reservations)}
    assert kept == {reservations[1]}, "an idempotency key older than a day goes; a recent one stays"
    async with httpx.AsyncClient(timeout=30) as browser:  # its session cookie stays out of the shared client
        signed_in = await browser.get(f"{service.url}/?token={live_link}", follow_redirects=False)
    assert signed_in.status_code == 303, "an unexpired sign-in link still works"

    # Streams: a fresh one gets the snapshot; a resume from a deleted id gets the current state, then the end.
    latest = old_events[-1]
    async with SseReader(http, f"{service.url}/api/jobs/{old_job}/events", bearer(user)) as stream:
        event_id, job = await stream.next_job()
        assert (event_id, job["status"]) == (latest, "completed")
        await stream.expect_end()
    headers = {**bearer(user), "Last-Event-ID": str(old_events[0])}
    async with SseReader(http, f"{service.url}/api/jobs/{old_job}/events", headers) as stream:
        event_id, job = await stream.next_job()
        assert (event_id, job["status"]) == (latest, "completed")
        await stream.expect_end()
    async with SseReader(http, f"{service.url}/api/events", headers) as stream:
        seen: dict[str, str] = {}
        while seen.get(old_job) != "completed" or seen.get(recent_job) != "completed":
            event_id, job = await stream.next_job()
            assert job["request_id"] != old_job or event_id == latest, "only the old job's surviving event"
            seen[job["request_id"]] = job["status"]
    assert (await http.get(f"{service.url}/api/jobs/{old_job}", headers=bearer(user))).json()["status"] == "completed"


async def test_retention_works_in_batches(pool: asyncpg.Pool) -> None:
    request_ids = [f"expired-{uuid.uuid4()}" for _ in range(3)]
    await pool.execute("INSERT INTO fal_early_webhooks (request_id, body, received_at) "
                       "SELECT unnest($1::text[]), '{}', now() - interval '2 days'", request_ids)
    expired = "SELECT count(*) FROM fal_early_webhooks WHERE received_at < now() - interval '1 day'"
    remaining = await pool.fetchval(expired)
    assert remaining >= 3
    async with pool.acquire() as connection:
        while remaining:
            deleted = await apply_retention(connection, event_retention_days=30, batch=1, max_batches=1)
            assert deleted.get("fal_early_webhooks") == 1, "one batch of one row per call"
            assert await pool.fetchval(expired) == remaining - 1
            remaining -= 1
        assert "fal_early_webhooks" not in await apply_retention(connection, event_retention_days=30)
