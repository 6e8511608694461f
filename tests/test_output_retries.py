"""Outputs that survive their store: the copy workers against the real store (a local folder, and
S3 through moto's server) and a real HTTP source, on a database of their own.

A store outage longer than the source's budget leaves the output pending, and it is stored once
the store is back; a failure that may pass is re-driven by the sweep and by `outputs retry`;
`outputs gc` lists an object that no output names and deletes it only with --delete; a copy whose
outcome could not be written leaves no bytes behind. Backoffs are passed small, not slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import create_user
from service.db.pool import create_pool
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import apply_change, create_job
from service.outputs.copier import Copier
from service.outputs.sources import SourcePolicy
from service.outputs.store import MediaStore
from service.outputs.upkeep import OutputUpkeep
from service.outputs.workers import MAX_ATTEMPTS, OutputWorkers
from tests.conftest import RunningServer, free_socket, start_uvicorn
from tests.test_outputs import fresh_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parent.parent
BODY = bytes(range(256)) * 400  # 100 KiB
FAST = {"backoff_base_s": 0.01, "store_retry_max_s": 0.02, "poll_s": 0.2}


class Cdn:
    """A stand-in for fal's CDN over real HTTP: `/media/ok/…` serves BODY, `/media/flaky-N/…`
    answers 503 N times first, `/media/gone/…` 404. Every request is counted by path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.server: RunningServer | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        self.hits[path] += 1
        mode = path.split("/")[2]
        status = 200
        if mode == "gone" or (mode.startswith("flaky-") and self.hits[path] <= int(mode.split("-")[1])):
            status = 404 if mode == "gone" else 503
        body = BODY if status == 200 else b"no"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"video/mp4"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def url(self, mode: str) -> str:
        assert self.server is not None
        return f"{self.server.url}/media/{mode}/{uuid.uuid4().hex[:8]}.mp4"


@pytest_asyncio.fixture(loop_scope="session")
async def cdn() -> AsyncIterator[Cdn]:
    source = Cdn()
    source.server = await start_uvicorn(source, free_socket())
    yield source
    await source.server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def database(server_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(server_dsn) as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def db(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, max_size=6)
    yield pool
    await pool.close()


async def completed_job(pool: asyncpg.Pool, source_url: str) -> str:
    """A completed video job whose one output is a pending copy of `source_url`."""
    user = await create_user(pool, f"u-{uuid.uuid4().hex[:10]}")
    request_id = f"req-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, type="video",
                                            model_id="fal-ai/kling-video/v2.1/master/text-to-video", input={},
                                            mode="webhook"))
        await apply_change(connection, request_id, JobChange(
            status="completed", result={"video": {"url": source_url, "content_type": "video/mp4"}}))
    return request_id


async def output_row(pool: asyncpg.Pool, request_id: str) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM fal_job_outputs WHERE request_id = $1 AND index = 0", request_id)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def copying(pool: asyncpg.Pool, store: MediaStore, cdn: Cdn, **options: Any) -> AsyncIterator[OutputWorkers]:
    assert cdn.server is not None
    async with httpx.AsyncClient() as http:
        policy = SourcePolicy((), emulator_media_base=f"{cdn.server.url}/media")
        workers = OutputWorkers(pool, store, Copier(http, store, policy, max_bytes=10**7), concurrency=2,
                                **{**FAST, **options})
        running = asyncio.create_task(workers.run_forever())
        try:
            yield workers
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await workers.aclose()


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@contextlib.asynccontextmanager
async def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[MediaStore, Callable[[], Awaitable[None]]]]:
    """A store on moto's S3 server whose bucket does not exist yet (every write fails with a 404,
    as with expired credentials' 403: a refusal obstore does not retry itself), and how to create it."""
    from moto.server import ThreadedMotoServer

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"fal-media-{uuid.uuid4().hex[:8]}"  # moto's buckets outlive its server, within a process
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)

    async def create_bucket() -> None:
        async with httpx.AsyncClient() as s3:
            assert (await s3.put(f"{endpoint}/{bucket}")).status_code == 200

    store = MediaStore.open(f"s3://{bucket}/prod", "unused")
    try:
        yield store, create_bucket
    finally:
        store.close()
        server.stop()


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.skipif(os.environ.get("SKIP_S3") == "1", reason="SKIP_S3=1")
async def test_a_store_outage_longer_than_the_source_budget_leaves_the_output_pending(
    kind: str, db: asyncpg.Pool, cdn: Cdn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if kind == "local":
            store = MediaStore.open(None, str(tmp_path))
            stack.callback(store.close)
            blocker = tmp_path / "outputs"
            blocker.write_bytes(b"a file where the folder should be: every write fails")

            async def heal() -> None:
                blocker.unlink()
        else:
            store, heal = await stack.enter_async_context(s3_bucket(monkeypatch))
        source = cdn.url("ok")
        request_id = await completed_job(db, source)
        path = "/" + source.split("/", 3)[3]
        await stack.enter_async_context(copying(db, store, cdn))
        # Every try fetched the source whole and failed at the store: more tries than the source's
        # budget, and the output is still pending, having spent none of it.
        await until(lambda: _settled_or(db, request_id, lambda: cdn.hits[path] >= MAX_ATTEMPTS + 4))
        row = await output_row(db, request_id)
        assert row["status"] == "pending", row["last_error"]
        assert row["attempts"] == 0 and row["store_failures"] >= MAX_ATTEMPTS + 3
        assert "writing to the store failed" in row["last_error"]
        await heal()
        await until(lambda: _settled(db, request_id))
        row = await output_row(db, request_id)
        assert row["status"] == "stored" and row["sha256"] == hashlib.sha256(BODY).hexdigest()
        assert await store.keys(f"outputs/{request_id}") == [row["store_key"]]


async def _settled(pool: asyncpg.Pool, request_id: str) -> bool:
    return (await output_row(pool, request_id))["status"] != "pending"


async def _settled_or(pool: asyncpg.Pool, request_id: str, enough: Callable[[], bool]) -> bool:
    return enough() or await _settled(pool, request_id)


def cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("FAL_KEY", "APP_URL")}
    environment.update(DATABASE_URL=database_url, **env)
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_the_sweep_and_outputs_retry_re_drive_failed_outputs(
    database: str, db: asyncpg.Pool, cdn: Cdn, tmp_path: Path,
) -> None:
    store = MediaStore.open(None, str(tmp_path))
    upkeep = OutputUpkeep(db, store, fal_copy_lifetime_s=3600, redrive_after_s=0.01)
    try:
        # A source that fails more often than the budget allows, and one that says the file is gone.
        flaky = await completed_job(db, cdn.url(f"flaky-{3}"))
        gone = await completed_job(db, cdn.url("gone"))
        expired = await completed_job(db, cdn.url(f"flaky-{3}"))
        async with copying(db, store, cdn, max_attempts=2) as workers:
            for request_id in (flaky, gone, expired):
                await until(lambda request_id=request_id: _settled(db, request_id))
            row = await output_row(db, flaky)
            assert (row["status"], row["retryable"]) == ("failed", True), row["last_error"]
            assert "gave up after 2 attempts" in row["last_error"]
            assert (await output_row(db, gone))["retryable"] is False
            # One whose fal copy has expired by now (as far as we know): left alone.
            await db.execute("UPDATE fal_job_outputs SET created_at = now() - interval '2 hours' "
                             "WHERE request_id = $1", expired)
            done = await upkeep.sweep()
            assert done["outputs_redriven"] == 1
            job = await db.fetchval("SELECT outputs->0->>'status' FROM fal_jobs WHERE request_id = $1", flaky)
            assert job == "pending"  # the job's view (and an event) too
            workers.wake()
            await until(lambda: _settled(db, flaky))
            assert (await output_row(db, flaky))["status"] == "stored"
            assert (await output_row(db, gone))["status"] == "failed"  # a failure for good: not by the sweep
            assert (await output_row(db, expired))["status"] == "failed"
            assert await upkeep.sweep() == {}
        # By hand, for one job: any failure, printed.
        retried = cli("outputs", "retry", "--job", gone, database_url=database)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.splitlines() == [f"{gone} 0 was: source answered 404: fal no longer has this file, "
                                               "or never had it"]
        assert "1 failed output(s) set pending again" in retried.stderr
        assert (await output_row(db, gone))["status"] == "pending"
        assert (await output_row(db, expired))["status"] == "failed"
        again = cli("outputs", "retry", "--job", gone, database_url=database)
        assert again.returncode == 0 and again.stdout == "" and "0 failed output(s)" in again.stderr
    finally:
        store.close()


async def test_outputs_gc_lists_an_orphan_and_deletes_it_only_when_told(
    database: str, db: asyncpg.Pool, cdn: Cdn, tmp_path: Path,
) -> None:
    store = MediaStore.open(None, str(tmp_path))
    try:
        request_id = await completed_job(db, cdn.url("ok"))
        async with copying(db, store, cdn):
            await until(lambda: _settled(db, request_id))
        kept = (await output_row(db, request_id))["store_key"]

        async def one(data: bytes) -> AsyncIterator[bytes]:
            yield data

        orphan, young = f"outputs/{request_id}/0-orphan", "outputs/req-other/0-young"
        await store.put(orphan, one(b"nobody names me"))
        await store.put(young, one(b"a copy being recorded"))
        day_ago = time.time() - 2 * 86400
        for key in (orphan, kept):
            os.utime(tmp_path / key, (day_ago, day_ago))
        env = {"MEDIA_DIR": str(tmp_path)}
        listed = cli("outputs", "gc", database_url=database, **env)
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[0] for line in listed.stdout.splitlines()] == [orphan]
        assert "run again with --delete" in listed.stderr
        assert sorted(await store.keys("outputs")) == sorted([kept, orphan, young])
        deleted = cli("outputs", "gc", "--delete", database_url=database, **env)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.split() == [orphan, str(len(b"nobody names me")), deleted.stdout.split()[2], "deleted"]
        assert sorted(await store.keys("outputs")) == sorted([kept, young])
        assert cli("outputs", "gc", "--older-than-h", "0", database_url=database, **env).returncode == 2
    finally:
        store.close()


@pytest.mark.skipif(os.environ.get("SKIP_S3") == "1", reason="SKIP_S3=1")
async def test_gc_finds_orphans_in_s3(db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.outputs.upkeep import orphans

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async with s3_bucket(monkeypatch) as (store, create_bucket):
        await create_bucket()
        await store.put("outputs/req-s3/0-orphan", one(b"x"))
        found = [obj.key async for obj in orphans(db, store, older_than_s=0)]
        assert found == ["outputs/req-s3/0-orphan"]
        assert [obj.key async for obj in orphans(db, store, older_than_s=3600)] == []


async def test_the_sweep_removes_staging_leftovers_older_than_a_day(db: asyncpg.Pool, tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))
    try:
        folder = tmp_path / "outputs" / "req-1"
        folder.mkdir(parents=True)
        old, young, plain = folder / "0-abc#1234", folder / "1-def#5678", folder / "2-ghi"
        for path in (old, young, plain):
            path.write_bytes(b"partial")
        day_ago = time.time() - 2 * 86400
        for path in (old, plain):
            os.utime(path, (day_ago, day_ago))
        upkeep = OutputUpkeep(db, store, fal_copy_lifetime_s=3600, redrive_after_s=3600)
        assert await upkeep.sweep() == {"staging_files_removed": 1}
        assert files(tmp_path) == ["outputs/req-1/1-def#5678", "outputs/req-1/2-ghi"]
    finally:
        store.close()


async def test_a_copy_whose_outcome_is_not_written_leaves_no_bytes(
    database: str, db: asyncpg.Pool, cdn: Cdn, tmp_path: Path,
) -> None:
    """The job's row is held by another transaction while the copy records its outcome: the write
    times out after the bytes were stored. Those bytes go; the copy is made again once the row is
    free, and one object remains."""
    store = MediaStore.open(None, str(tmp_path))
    short = await create_pool(database, max_size=4, statement_timeout_s=0.5)
    holder = await asyncpg.connect(database)
    try:
        source = cdn.url("ok")
        path = "/" + source.split("/", 3)[3]
        request_id = await completed_job(db, source)
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT 1 FROM fal_jobs WHERE request_id = $1 FOR UPDATE", request_id)
        async with copying(short, store, cdn, lease_s=1.0):
            # A second fetch comes only after the first claim's lease lapsed, which is after its
            # copy stored the bytes, failed to record them and dealt with them.
            await until(lambda: asyncio.sleep(0, cdn.hits[path] >= 2))
            await holding.rollback()
            await until(lambda: _settled(db, request_id))
        row = await output_row(db, request_id)
        assert row["status"] == "stored" and row["attempts"] == 0
        assert files(tmp_path) == [row["store_key"]]
    finally:
        await holder.close()
        await short.close()
        store.close()
