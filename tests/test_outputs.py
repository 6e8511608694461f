"""Durable outputs over real HTTP: the service with its emulator mounted (as `python3 -m service
run` has it) copies every media file of a completed job into a local store, serves it with Range
and ETag after fal's copy has expired, and deletes it with the job.

These tests run on a database of their own: every service process claims copy work from the
database it uses, and the suite's other services (pointed at a standalone emulator on loopback,
which their allow-list refuses) would otherwise take these jobs' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser, create_user
from service.db.migrations import apply_migrations
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.emulator.media import png_bytes, video_slice
from tests.conftest import (
    RunningServer,
    _with_database,
    bearer,
    free_socket,
    service_settings,
    start_uvicorn,
)
from tests.sse import SseReader

pytestmark = pytest.mark.asyncio(loop_scope="session")

IMAGE_MODEL = "fal-ai/flux/dev"
VIDEO_MODEL = "fal-ai/kling-video/v2.1/master/text-to-video"


async def _admin(server_dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A database of one test's own: a service with a store or emulator of its own must not share
    the copy queue with services that have others."""
    name = f"fal_jobs_outputs_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = _with_database(server_dsn, name)
    try:
        await asyncio.to_thread(apply_migrations, dsn)
        yield dsn
    finally:
        await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outputs_database(server_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(server_dsn) as dsn:
        yield dsn


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outputs_pool(outputs_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(outputs_database, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def media_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fal-jobs-media-"))


async def start_service(database_url: str, media_dir: Path, sock: socket.socket | None = None,
                        **overrides: str) -> RunningServer:
    """The service with its emulator mounted; `sock` keeps a port across a restart."""
    from service.app import create_app

    sock = sock or free_socket()
    port = sock.getsockname()[1]
    settings = service_settings(database_url, PORT=str(port), MEDIA_DIR=str(media_dir), SSE_HEARTBEAT_S="0.5", FAL_EMULATOR="1",
                                RECONCILE_INTERVAL_S="3600", **overrides)
    return await start_uvicorn(create_app(settings), sock)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def media_service(outputs_database: str, media_dir: Path) -> AsyncIterator[RunningServer]:
    running = await start_service(outputs_database, media_dir, MAX_OUTPUT_BYTES=str(2 * 1024 * 1024),
                                  FAL_MEDIA_EXPIRY_S="3600")
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def owner(outputs_pool: asyncpg.Pool) -> NewUser:
    return await create_user(outputs_pool, f"owner-{uuid.uuid4().hex[:10]}")


@pytest_asyncio.fixture(loop_scope="session")
async def stranger(outputs_pool: asyncpg.Pool) -> NewUser:
    return await create_user(outputs_pool, f"stranger-{uuid.uuid4().hex[:10]}")


def emulator_of(running: RunningServer) -> FalEmulator:
    return running.app.state.emulator


async def submit(http: httpx.AsyncClient, url: str, user: NewUser, type_: str, model: str,
                 model_input: dict[str, Any]) -> str:
    response = await http.post(f"{url}/api/jobs", headers=bearer(user),
                               json={"type": type_, "model_id": model, "input": model_input})
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


async def settled(http: httpx.AsyncClient, url: str, user: NewUser, request_id: str, timeout: float = 60) -> dict[str, Any]:
    """Read the job's stream to its end (terminal, and every output stored or failed): its last state."""
    last: dict[str, Any] | None = None
    async with SseReader(http, f"{url}/api/jobs/{request_id}/events", bearer(user)) as reader:
        while True:
            message = await asyncio.wait_for(reader.messages.get(), timeout)
            if message is None:
                break
            if message.event == "job":
                last = message.json()
    assert last is not None, "the job stream ended without a job event"
    return last


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(media_dir: Path, request_id: str) -> list[Path]:
    folder = media_dir / "outputs" / request_id
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def wait_gone(http: httpx.AsyncClient, url: str, timeout: float = 30) -> None:
    """Until fal's (the emulator's) copy answers 404: its media_ttl_ms has passed."""
    async with asyncio.timeout(timeout):
        while (await http.get(url)).status_code != 404:
            await asyncio.sleep(0.1)


async def test_outputs_outlive_fal_and_serve_byte_identical(
    http: httpx.AsyncClient, media_service: RunningServer, media_dir: Path, owner: NewUser,
) -> None:
    url = media_service.url
    image_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
        "prompt": "two foxes", "num_images": 2, "image_size": {"width": 64, "height": 48},
        "fal_emulator": {"queue_ms": 0, "run_ms": 0, "media_ttl_ms": 4000},
    })
    video_bytes = 300_000
    video_id = await submit(http, url, owner, "video", VIDEO_MODEL, {
        "prompt": "a fox runs", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "media_ttl_ms": 4000,
                                                 "video_bytes": video_bytes},
    })
    image_job = await settled(http, url, owner, image_id)
    video_job = await settled(http, url, owner, video_id)
    assert image_job["status"] == video_job["status"] == "completed"
    assert [o["status"] for o in image_job["outputs"]] == ["stored", "stored"], image_job["outputs"]
    assert [o["status"] for o in video_job["outputs"]] == ["stored"], video_job["outputs"]

    seed = image_job["result"]["seed"]
    expected = {
        (image_id, 0): png_bytes(64, 48, seed),
        (image_id, 1): png_bytes(64, 48, seed + 1),
        (video_id, 0): video_slice(0, video_bytes // 2) + video_slice(video_bytes // 2, video_bytes),
    }
    await wait_gone(http, image_job["result"]["images"][0]["url"])
    await wait_gone(http, video_job["result"]["video"]["url"])

    for job in (image_job, video_job):
        for output in job["outputs"]:
            original = expected[(job["request_id"], output["index"])]
            assert output["url"] == f"/api/jobs/{job['request_id']}/outputs/{output['index']}"
            assert output["sha256"] == sha(original) and output["size"] == len(original)
            assert output["kind"] == job["type"] and output["content_type"] == ("image/png" if job["type"] == "image" else "video/mp4")
            served = await http.get(url + output["url"], headers=bearer(owner))
            assert served.status_code == 200, served.text
            assert sha(served.content) == sha(original)
            assert served.headers["etag"] == f'"{sha(original)}"'
            assert served.headers["cache-control"] == "private, max-age=31536000, immutable"
            assert served.headers["content-type"] == output["content_type"]
            assert "nosniff" in served.headers["x-content-type-options"]
            # Its own policy alone: the service's global one is not added on top (both would apply).
            [policy] = served.headers.get_list("content-security-policy")
            assert "sandbox" in policy
        assert len(stored_files(media_dir, job["request_id"])) == len(job["outputs"])
    # The GET /api/jobs view carries the same outputs.
    listed = (await http.get(f"{url}/api/jobs/{video_id}", headers=bearer(owner))).json()
    assert listed["outputs"] == video_job["outputs"]


async def test_range_conditional_and_auth(
    http: httpx.AsyncClient, media_service: RunningServer, owner: NewUser, stranger: NewUser,
) -> None:
    url = media_service.url
    size = 100_000
    video_id = await submit(http, url, owner, "video", VIDEO_MODEL, {
        "prompt": "seek", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": size}})
    image_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
        "prompt": "two", "num_images": 2, "image_size": {"width": 16, "height": 16},
        "fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    video = await settled(http, url, owner, video_id)
    image = await settled(http, url, owner, image_id)
    original = video_slice(0, size)
    output_url = url + video["outputs"][0]["url"]
    auth = bearer(owner)

    part = await http.get(output_url, headers={**auth, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == original[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
    tail = await http.get(output_url, headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == original[-10:]
    assert tail.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    open_ended = await http.get(output_url, headers={**auth, "Range": f"bytes={size - 5}-"})
    assert open_ended.status_code == 206 and open_ended.content == original[-5:]
    beyond = await http.get(output_url, headers={**auth, "Range": f"bytes={size}-{size + 10}"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["error"] == "range_not_satisfiable"

    etag = video["outputs"][0]["sha256"]
    not_modified = await http.get(output_url, headers={**auth, "If-None-Match": f'"{etag}"'})
    assert not_modified.status_code == 304
    assert len(not_modified.headers.get_list("content-security-policy")) == 1
    stale_range = await http.get(output_url, headers={**auth, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale_range.status_code == 200 and len(stale_range.content) == size

    assert (await http.get(output_url)).status_code == 401
    assert (await http.get(output_url, headers=bearer(stranger))).status_code == 404
    assert (await http.get(f"{url}/api/jobs/{video_id}/outputs/5", headers=auth)).status_code == 404

    # A signed link opens that one output, and nothing else.
    link = await http.post(f"{output_url}/link", headers=auth)
    assert link.status_code == 200, link.text
    signed = link.json()["url"]
    token = signed.split("token=", 1)[1]
    opened = await http.get(url + signed)
    assert opened.status_code == 200 and opened.content == original
    assert (await http.get(f"{url}{image['outputs'][0]['url']}?token={token}")).status_code == 401
    assert (await http.get(f"{url}/api/jobs/{image_id}/outputs/1?token={token}")).status_code == 401
    assert (await http.get(f"{url}/api/jobs/{video_id}?token={token}")).status_code == 401
    assert (await http.post(f"{output_url}/link", headers=bearer(stranger))).status_code == 404


async def test_delete_removes_the_bytes(
    http: httpx.AsyncClient, media_service: RunningServer, media_dir: Path, owner: NewUser, stranger: NewUser,
) -> None:
    url = media_service.url
    request_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
        "prompt": "gone", "num_images": 2, "image_size": {"width": 8, "height": 8},
        "fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    job = await settled(http, url, owner, request_id)
    assert len(stored_files(media_dir, request_id)) == 2
    assert (await http.delete(f"{url}/api/jobs/{request_id}", headers=bearer(stranger))).status_code == 404

    deleted = await http.delete(f"{url}/api/jobs/{request_id}", headers=bearer(owner))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    assert [o["status"] for o in deleted.json()["outputs"]] == ["deleted", "deleted"]
    assert deleted.json()["result"] == job["result"]  # the history stays
    assert stored_files(media_dir, request_id) == []
    gone = await http.get(url + job["outputs"][0]["url"], headers=bearer(owner))
    assert gone.status_code == 410 and gone.json()["error"] == "gone"
    again = await http.delete(f"{url}/api/jobs/{request_id}", headers=bearer(owner))
    assert again.status_code == 200 and again.json()["version"] == deleted.json()["version"]

    running = await submit(http, url, owner, "image", IMAGE_MODEL, {
        "prompt": "slow", "fal_emulator": {"queue_ms": 60_000}})
    refused = await http.delete(f"{url}/api/jobs/{running}", headers=bearer(owner))
    assert refused.status_code == 409 and "cancel it" in refused.json()["message"]
    assert (await http.post(f"{url}/api/jobs/{running}/cancel", headers=bearer(owner))).status_code == 200


async def test_a_url_outside_the_allow_list_is_never_fetched(
    http: httpx.AsyncClient, media_service: RunningServer, owner: NewUser,
) -> None:
    hits: list[str] = []

    async def counting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        hits.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": b"\x89PNG"})

    sock = free_socket()
    elsewhere = await start_uvicorn(counting_app, sock)
    try:
        url = media_service.url
        request_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
            "prompt": "elsewhere", "fal_emulator": {"queue_ms": 0, "run_ms": 0,
                                                     "media_base_url": f"{elsewhere.url}/files"}})
        job = await settled(http, url, owner, request_id)
        [output] = job["outputs"]
        assert output["status"] == "failed"
        assert "only https URLs are fetched" in output["error"]
        assert hits == []
        # Nor is a client sent there: no redirect to a host outside the allow-list.
        assert (await http.get(url + output["url"], headers=bearer(owner))).status_code == 404
    finally:
        await elsewhere.stop()


async def test_too_large_output_fails_with_a_clear_error_and_redirects_to_fal(
    http: httpx.AsyncClient, media_service: RunningServer, media_dir: Path, owner: NewUser,
) -> None:
    url = media_service.url  # MAX_OUTPUT_BYTES is 2 MiB there
    request_id = await submit(http, url, owner, "video", VIDEO_MODEL, {
        "prompt": "huge", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": 3 * 1024 * 1024}})
    job = await settled(http, url, owner, request_id)
    [output] = job["outputs"]
    assert output["status"] == "failed" and "MAX_OUTPUT_BYTES" in output["error"], output
    assert stored_files(media_dir, request_id) == []
    redirect = await http.get(url + output["url"], headers=bearer(owner))
    assert redirect.status_code == 307 and redirect.headers["location"] == job["result"]["video"]["url"]


async def test_failing_media_is_retried_and_lifecycle_header_is_sent(
    http: httpx.AsyncClient, media_service: RunningServer, outputs_pool: asyncpg.Pool, owner: NewUser,
) -> None:
    running = media_service
    if True:
        url = running.url
        request_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
            "prompt": "flaky", "image_size": {"width": 8, "height": 8},
            "fal_emulator": {"queue_ms": 0, "run_ms": 0, "media_fail_ms": 1500}})
        completed = (await http.get(f"{url}/api/jobs/{request_id}?wait=30", headers=bearer(owner))).json()
        assert completed["status"] == "completed" and completed["outputs"][0]["status"] == "pending"
        # Until stored, our URL sends the client to fal's copy (the first try met a 503; the
        # next is 2 s later).
        first = await http.get(f"{url}/api/jobs/{request_id}/outputs/0", headers=bearer(owner))
        assert first.status_code == 307 and first.headers["location"] == completed["result"]["images"][0]["url"]
        job = await settled(http, url, owner, request_id)
        assert job["outputs"][0]["status"] == "stored", job["outputs"]
        row = await outputs_pool.fetchrow(
            "SELECT attempts, last_error FROM fal_job_outputs WHERE request_id = $1", request_id)
        # Counted as tries fail: the first met a 503, a later one stored.
        assert row["attempts"] >= 1 and "503" in row["last_error"]
        [submission] = [s for s in emulator_of(running).submissions if s.request_id == request_id]
        assert msgspec.json.decode(submission.lifecycle_preference or "null") == {"expiration_duration_seconds": 3600}


async def test_restart_mid_copy_resumes_and_stores_once(http: httpx.AsyncClient, server_dsn: str) -> None:
    async with fresh_database(server_dsn) as database_url:
        pool = await create_pool(database_url, min_size=1, max_size=2)
        try:
            await _restart_mid_copy(http, database_url, pool, await create_user(pool, "restart-owner"))
        finally:
            await pool.close()


async def _restart_mid_copy(http: httpx.AsyncClient, outputs_database: str, outputs_pool: asyncpg.Pool,
                            owner: NewUser) -> None:
    media = Path(tempfile.mkdtemp(prefix="fal-jobs-media-restart-"))
    sock = free_socket()
    port = sock.getsockname()[1]
    first = await start_service(outputs_database, media, sock)
    size = 2_000_000
    request_id = await submit(http, first.url, owner, "video", VIDEO_MODEL, {
        "prompt": "interrupted", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": size,
                                                  "media_stall_ms": 8000}})
    # Wait for the copy to be under way: claimed, and the source fetch started (then it stalls).
    async with asyncio.timeout(30):
        while not (await outputs_pool.fetchval(
                "SELECT claim IS NOT NULL FROM fal_job_outputs WHERE request_id = $1", request_id)) \
                or not any(request_id in path for path in emulator_of(first).media_fetches):
            await asyncio.sleep(0.05)
    await first.stop()
    row = await outputs_pool.fetchrow("SELECT status, claim FROM fal_job_outputs WHERE request_id = $1", request_id)
    assert row["status"] == "pending" and row["claim"] is None  # handed back on shutdown

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # the same port: the media URLs name the mounted emulator's origin
    second = await start_service(outputs_database, media, sock)
    try:
        job = await settled(http, second.url, owner, request_id)
        [output] = job["outputs"]
        assert output["status"] == "stored" and output["sha256"] == sha(
            b"".join(video_slice(i, min(i + 1_000_000, size)) for i in range(0, size, 1_000_000)))
        assert len(stored_files(media, request_id)) == 1
        stored_events = await outputs_pool.fetchval(
            "SELECT count(*) FROM fal_job_events WHERE request_id = $1 AND data->'outputs'->0->>'status' = 'stored'",
            request_id)
        assert stored_events == 1
        served = await http.get(second.url + output["url"], headers=bearer(owner))
        assert served.status_code == 200 and sha(served.content) == output["sha256"]
    finally:
        await second.stop()


@pytest.mark.skipif(os.environ.get("SKIP_S3") == "1", reason="SKIP_S3=1")
async def test_s3_store_over_real_http(
    http: httpx.AsyncClient, server_dsn: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fresh_database(server_dsn) as database_url:
        pool = await create_pool(database_url, min_size=1, max_size=2)
        try:
            await _s3_round_trip(http, database_url, await create_user(pool, "s3-owner"), monkeypatch)
        finally:
            await pool.close()


async def _s3_round_trip(http: httpx.AsyncClient, outputs_database: str, owner: NewUser,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer

    sock = free_socket()
    s3_port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(name, value)
        async with httpx.AsyncClient() as s3:
            assert (await s3.put(f"{endpoint}/fal-media")).status_code == 200  # create the bucket
        running = await start_service(outputs_database, Path(tempfile.mkdtemp()), MEDIA_STORE_URL="s3://fal-media/prod")
        try:
            size = 6 * 1024 * 1024 + 123  # more than one multipart part
            request_id = await submit(http, running.url, owner, "video", VIDEO_MODEL, {
                "prompt": "to s3", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": size}})
            job = await settled(http, running.url, owner, request_id)
            [output] = job["outputs"]
            assert output["status"] == "stored", output
            async with httpx.AsyncClient() as s3:
                listing = (await s3.get(f"{endpoint}/fal-media", params={"prefix": f"prod/outputs/{request_id}/"})).text
            assert f"prod/outputs/{request_id}/0-" in listing
            served = await http.get(running.url + output["url"], headers={**bearer(owner), "Range": "bytes=5000000-5000099"})
            assert served.status_code == 206 and served.content == video_slice(5_000_000, 5_000_100)
            whole = await http.get(running.url + output["url"], headers=bearer(owner))
            assert sha(whole.content) == output["sha256"] and len(whole.content) == size
            assert (await http.delete(f"{running.url}/api/jobs/{request_id}", headers=bearer(owner))).status_code == 200
            async with httpx.AsyncClient() as s3:
                listing = (await s3.get(f"{endpoint}/fal-media", params={"prefix": f"prod/outputs/{request_id}/"})).text
            assert f"prod/outputs/{request_id}/0-" not in listing
        finally:
            await running.stop()
    finally:
        server.stop()


async def test_session_cookie_and_python_client_download(
    http: httpx.AsyncClient, media_service: RunningServer, outputs_pool: asyncpg.Pool, owner: NewUser,
    stranger: NewUser, tmp_path: Path,
) -> None:
    from service.auth.browser_sessions import issue_sign_in_token
    from service.client import FalJobsClient, FalJobsError

    url = media_service.url
    request_id = await submit(http, url, owner, "image", IMAGE_MODEL, {
        "prompt": "cookie", "image_size": {"width": 24, "height": 24}, "fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    job = await settled(http, url, owner, request_id)
    expected = png_bytes(24, 24, job["result"]["seed"])

    # The page's <img src> carries only the session cookie.
    async with httpx.AsyncClient(base_url=url) as browser:
        signed_in = await browser.get(f"/?token={await issue_sign_in_token(outputs_pool, owner.user_id)}")
        assert signed_in.status_code in (200, 303)
        image = await browser.get(job["outputs"][0]["url"])
        assert image.status_code == 200 and image.content == expected
        attachment = await browser.get(job["outputs"][0]["url"] + "?download=1")
        assert attachment.headers["content-disposition"] == f'attachment; filename="{request_id}-0.png"'

    async with FalJobsClient(url, owner.api_key) as client:
        saved = await client.download_output(request_id, 0, tmp_path / "fox.png")
        assert saved.read_bytes() == expected
        assert [p.name for p in tmp_path.iterdir()] == ["fox.png"]
    async with FalJobsClient(url, stranger.api_key) as client:
        with pytest.raises(FalJobsError) as refused:
            await client.download_output(request_id, 0, tmp_path / "theirs.png")
        assert refused.value.status == 404
        assert not (tmp_path / "theirs.png").exists() and not (tmp_path / "theirs.png.part").exists()


async def test_a_dead_workers_claim_lapses_and_another_takes_over(
    media_service: RunningServer, outputs_pool: asyncpg.Pool, media_dir: Path, owner: NewUser,
) -> None:
    from service.jobs.models import JobChange, NewJob
    from service.jobs.status_machine import apply_change, create_job

    request_id = f"dead-claim-{uuid.uuid4().hex[:8]}"
    source = f"{emulator_of(media_service).media_base}/video/{request_id}.mp4?bytes=50000"
    async with outputs_pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=owner.user_id, model_id=VIDEO_MODEL,
                                            type="video", input={}, mode="webhook"))
        async with connection.transaction():
            # Completed, and its output claimed by a process that then died: the lease lapses.
            await apply_change(connection, request_id, JobChange(
                status="completed", result={"video": {"url": source, "content_type": "video/mp4"}}))
            await connection.execute(
                "UPDATE fal_job_outputs SET claim = 'dead-process', attempts = 1, "
                "lease_until = now() + interval '1 second' WHERE request_id = $1", request_id)
    async with asyncio.timeout(30):
        while await outputs_pool.fetchval(
                "SELECT status FROM fal_job_outputs WHERE request_id = $1", request_id) == "pending":
            await asyncio.sleep(0.05)
    row = await outputs_pool.fetchrow("SELECT status, attempts, sha256 FROM fal_job_outputs WHERE request_id = $1",
                                      request_id)
    assert row["status"] == "stored" and row["attempts"] == 1  # a lapsed lease spends no try of the budget
    assert row["sha256"] == sha(video_slice(0, 50000))
    assert len(stored_files(media_dir, request_id)) == 1


async def test_copier_refuses_unexpected_types_and_keeps_nothing(tmp_path: Path) -> None:
    """The copier on its own, against a real HTTP server that answers what fal never should: a
    type we do not keep, and a body that outgrows MAX_OUTPUT_BYTES without having declared it."""
    from service.outputs.copier import Copier
    from service.outputs.sources import SourcePolicy
    from service.outputs.store import MediaStore

    async def odd_cdn(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        kind = scope["path"].rsplit("/", 1)[-1]
        content_type = {"html": b"text/html", "png": b"image/png", "big": b"video/mp4"}[kind]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        if kind == "big":  # no Content-Length (chunked): the limit can only be found while streaming
            for _ in range(3):
                await send({"type": "http.response.body", "body": b"v" * 60, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.body", "body": b"<script>alert(1)</script>" if kind != "png" else b"\x89PNG"})

    cdn = await start_uvicorn(odd_cdn, free_socket())
    store = MediaStore.open(None, str(tmp_path))
    try:
        async with httpx.AsyncClient() as client:
            copier = Copier(client, store, SourcePolicy((), emulator_media_base=f"{cdn.url}/media"), max_bytes=100)
            html = await copier.copy(f"{cdn.url}/media/html", "image", "k/html")
            assert html.status == "failed" and "'text/html'" in (html.error or "")
            png = await copier.copy(f"{cdn.url}/media/png", "image", "k/png")
            assert png.status == "stored" and png.size == 4 and png.sha256 == sha(b"\x89PNG")
            big = await copier.copy(f"{cdn.url}/media/big", "video", "k/big")
            assert big.status == "failed" and "MAX_OUTPUT_BYTES" in (big.error or ""), big
            assert await store.keys("k") == ["k/png"]
            assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["png"]  # no staging file either
    finally:
        await cdn.stop()


async def test_media_files_finds_every_url_in_order_once_and_nothing_else() -> None:
    from service.jobs.media import MAX_OUTPUTS, media_files

    result = {
        "images": [{"url": "https://fal.media/a.png", "width": 1, "content_type": "image/png"},
                   {"url": "https://fal.media/b.webp"}],
        "seed": 7, "timings": {"inference": 0.5}, "embedding": [0.1] * 1000,
        "video": {"url": "https://fal.media/c.mp4", "file_size": 3},
        "nested": [[{"audio_file": {"url": "https://fal.media/d.wav"}}]],
        "again": {"url": "https://fal.media/a.png"},  # the same file twice: once
        "local": {"url": "file:///etc/passwd"}, "relative": {"url": "/x.png"}, "not_text": {"url": 3},
    }
    assert [(f.url, f.kind) for f in media_files(result)] == [
        ("https://fal.media/a.png", "image"), ("https://fal.media/b.webp", "image"),
        ("https://fal.media/c.mp4", "video"), ("https://fal.media/d.wav", "audio"),
    ]
    assert media_files({"images": [{"url": f"https://fal.media/{i}.png"} for i in range(MAX_OUTPUTS + 5)]})[-1].url == \
        f"https://fal.media/{MAX_OUTPUTS - 1}.png"
    assert media_files(None) == [] and media_files([1, "x", None]) == [] and media_files("https://fal.media/a.png") == []
