"""Uploads against the running service and the emulator: what is taken in and what is refused
(and then stored nowhere), ownership, the daily quota, one object per file, Range, retention, and
a job whose input names an upload: fal is sent a signed link to our copy and fetches it."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser, create_user
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer, fal_settings, serve

I2V = "fal-ai/kling-video/v2.1/master/image-to-video"
MiB = 1024 * 1024


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG's first bytes claiming `width`x`height`, then compressed zeros: a decompression bomb's shape."""
    head = solid_png(1, 1, (0, 0, 0))[:33]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    head = head[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return head + zlib.compress(bytes(256 * 1024))


@pytest.fixture(scope="module")
def media_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fal-jobs-uploads-"))


async def start(database_url: str, fal: FalEmulator, media_dir: Path, **overrides: str) -> RunningServer:
    from service.app import create_app

    values = {"MEDIA_DIR": str(media_dir), **overrides}
    return await serve(lambda url: create_app(fal_settings(database_url, fal, url, **values)))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def uploads_service(database_url: str, fal: FalEmulator, media_dir: Path) -> AsyncIterator[RunningServer]:
    running = await start(database_url, fal, media_dir, INPUT_DELIVERY="signed_url")
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cdn_service(database_url: str, fal: FalEmulator, media_dir: Path) -> AsyncIterator[RunningServer]:
    """The default delivery: inputs go to fal's CDN (the emulator's), as fal-client uploads them."""
    running = await start(database_url, fal, media_dir, FAL_MEDIA_EXPIRY_S="7200")
    yield running
    await running.stop()


def stored_files(media_dir: Path, user: NewUser) -> list[Path]:
    return sorted(p for p in (media_dir / "uploads" / user.user_id).rglob("*") if p.is_file())


async def upload(http: httpx.AsyncClient, url: str, user: NewUser, body: bytes,
                 content_type: str = "image/png") -> httpx.Response:
    return await http.post(f"{url}/api/uploads", content=body,
                           headers={**bearer(user), "Content-Type": content_type})


async def rows_of(pool: asyncpg.Pool, user: NewUser) -> int:
    return await pool.fetchval("SELECT count(*) FROM fal_uploads WHERE user_id = $1", user.user_id)


async def test_an_upload_is_sniffed_stored_listed_served_and_deleted(
    uploads_service: RunningServer, http: httpx.AsyncClient, user: NewUser, other_user: NewUser, media_dir: Path,
) -> None:
    url, png = uploads_service.url, solid_png(64, 48, (10, 200, 30))
    # The declared type is not believed: the bytes are a PNG.
    answer = await upload(http, url, user, png, content_type="application/octet-stream")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["content_type"] == "image/png" and (body["width"], body["height"]) == (64, 48)
    assert body["size"] == len(png) and body["sha256"] == hashlib.sha256(png).hexdigest()
    assert body["expires_at"] > body["created_at"]
    upload_id = body["upload_id"]

    again = await upload(http, url, user, png)
    assert again.status_code == 201 and again.json()["upload_id"] == upload_id  # one object per file
    assert len(stored_files(media_dir, user)) == 1
    listed = (await http.get(f"{url}/api/uploads", headers=bearer(user))).json()["uploads"]
    assert [u["upload_id"] for u in listed] == [upload_id]

    whole = await http.get(f"{url}/api/uploads/{upload_id}", headers=bearer(user))
    assert whole.status_code == 200 and whole.content == png and whole.headers["content-type"] == "image/png"
    part = await http.get(f"{url}/api/uploads/{upload_id}", headers={**bearer(user), "Range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == png[1:4]
    assert part.headers["content-range"] == f"bytes 1-3/{len(png)}"

    # Another user sees nothing of it.
    assert (await http.get(f"{url}/api/uploads/{upload_id}", headers=bearer(other_user))).status_code == 404
    assert (await http.delete(f"{url}/api/uploads/{upload_id}", headers=bearer(other_user))).status_code == 404
    assert (await http.get(f"{url}/api/uploads", headers=bearer(other_user))).json()["uploads"] == []

    assert (await http.delete(f"{url}/api/uploads/{upload_id}", headers=bearer(user))).status_code == 204
    assert (await http.get(f"{url}/api/uploads/{upload_id}", headers=bearer(user))).status_code == 404
    assert stored_files(media_dir, user) == []


@pytest.mark.parametrize(("body", "content_type", "status", "error"), [
    (b"<!doctype html><html><script>alert(1)</script></html>" * 20, "image/png", 415, "unsupported_media_type"),
    (png_header_claiming(30_000, 30_000), "image/png", 422, "invalid_request"),
])
async def test_a_bad_upload_is_refused_and_nothing_is_stored(
    uploads_service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, media_dir: Path,
    body: bytes, content_type: str, status: int, error: str,
) -> None:
    answer = await upload(http, uploads_service.url, user, body, content_type)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert stored_files(media_dir, user) == [] and await rows_of(pool, user) == 0


async def test_a_body_over_the_limit_is_refused_without_reading_the_rest(
    uploads_service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, media_dir: Path,
) -> None:
    # Announced: the answer comes with only the first bytes sent.
    host, port = uploads_service.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /api/uploads HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {user.api_key}\r\n"
                  f"Content-Type: image/png\r\nContent-Length: {60 * MiB}\r\n\r\n").encode() + solid_png(8, 8, (1, 2, 3)))
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"413"

    # Not announced (chunked): counted as it streams, and stopped at the limit.
    sent = 0

    async def sixty_mib() -> AsyncIterator[bytes]:
        nonlocal sent
        yield solid_png(8, 8, (1, 2, 3))
        piece = bytes(MiB)
        for _ in range(60):
            sent += len(piece)
            yield piece

    answer = await http.post(f"{uploads_service.url}/api/uploads", content=sixty_mib(),
                             headers={**bearer(user), "Content-Type": "image/png"})
    assert answer.status_code == 413 and "MAX_UPLOAD_BYTES" in answer.json()["message"]
    assert stored_files(media_dir, user) == [] and await rows_of(pool, user) == 0
    staging = [p for p in (media_dir / "uploads").rglob("*") if p.is_file() and "#" in p.name]
    assert staging == []


async def test_a_form_upload_streams_its_file_part(
    uploads_service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, media_dir: Path,
) -> None:
    url, png = uploads_service.url, solid_png(30, 20, (4, 5, 6))
    answer = await http.post(f"{url}/api/uploads", headers=bearer(user), data={"note": "a field first"},
                             files={"file": ("photo.png", png, "image/png")})
    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(png).hexdigest() and answer.json()["size"] == len(png)
    assert (await http.get(f"{url}/api/uploads/{answer.json()['upload_id']}", headers=bearer(user))).content == png
    no_file = await http.post(f"{url}/api/uploads", headers=bearer(user), data={"note": "x"},
                              files={"other": (None, b"not a file")})
    assert no_file.status_code == 400 and "no file part" in no_file.json()["message"]
    html = await http.post(f"{url}/api/uploads", headers=bearer(user),
                           files={"file": ("x.png", b"<html><body>hi</body></html>", "image/png")})
    assert html.status_code == 415
    big = await http.post(f"{url}/api/uploads", headers=bearer(user),
                          files={"file": ("big.png", solid_png(8, 8, (0, 0, 0)) + bytes(60 * MiB), "image/png")})
    assert big.status_code == 413
    assert len(stored_files(media_dir, user)) == 1 and await rows_of(pool, user) == 1


async def test_the_daily_quota_holds_across_processes(
    database_url: str, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser, media_dir: Path,
) -> None:
    first = await start(database_url, fal, media_dir, MAX_UPLOAD_BYTES_PER_DAY="3000")
    second = await start(database_url, fal, media_dir, MAX_UPLOAD_BYTES_PER_DAY="3000")
    try:
        one = await upload(http, first.url, user, solid_png(16, 16, (1, 1, 1)) + bytes(1000))
        assert one.status_code == 201, one.text
        # The same file again stores nothing new, so it does not count.
        assert (await upload(http, second.url, user, solid_png(16, 16, (1, 1, 1)) + bytes(1000))).status_code == 201
        two = await upload(http, second.url, user, solid_png(16, 16, (2, 2, 2)) + bytes(1000))
        assert two.status_code == 201, two.text
        three = await upload(http, first.url, user, solid_png(16, 16, (3, 3, 3)) + bytes(1000))
        assert three.status_code == 429 and three.json()["error"] == "too_many_requests"
        assert 1 <= int(three.headers["retry-after"]) <= 24 * 3600
    finally:
        await first.stop()
        await second.stop()
    assert len(stored_files(media_dir, user)) == 2


async def submit(http: httpx.AsyncClient, url: str, user: NewUser, model_input: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{url}/api/jobs", headers=bearer(user),
                           json={"type": "video", "model_id": I2V, "input": model_input})


async def test_an_image_to_video_job_from_an_upload_reaches_the_model(
    uploads_service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    png = solid_png(32, 32, (200, 40, 90))
    upload_id = (await upload(http, uploads_service.url, user, png)).json()["upload_id"]
    created = await submit(http, uploads_service.url, user, {"prompt": "it moves", "image_url": f"upload:{upload_id}"})
    assert created.status_code == 202, created.text
    request_id = created.json()["request_id"]
    assert created.json()["input"]["image_url"] == f"upload:{upload_id}"  # the job keeps the reference
    job = (await http.get(f"{uploads_service.url}/api/jobs/{request_id}?wait=60", headers=bearer(user))).json()
    assert job["status"] == "completed", job
    assert job["input"]["image_url"] == f"upload:{upload_id}"
    # fal was sent a signed link to our copy, fetched it, and made the video from it.
    sent = fal.requests[request_id].input["image_url"]
    assert sent.startswith(f"{uploads_service.url}/api/uploads/{upload_id}?token=")
    fetches = [f for f in fal.input_fetches if f.request_id == request_id]
    assert [(f.status, f.sha256) for f in fetches] == [(200, hashlib.sha256(png).hexdigest())]
    assert job["result"]["video"]["file_name"] == "from-c8285a.mp4"
    # The link opens this upload only, and nothing without it.
    token = sent.split("token=", 1)[1]
    assert (await http.get(sent)).content == png
    other = (await upload(http, uploads_service.url, user, solid_png(4, 4, (9, 9, 9)))).json()["upload_id"]
    assert (await http.get(f"{uploads_service.url}/api/uploads/{other}?token={token}")).status_code == 401
    assert (await http.get(f"{uploads_service.url}/api/uploads/{upload_id}?token=x{token}")).status_code == 401


async def test_through_fal_cdn_the_file_is_uploaded_once_and_the_model_fetches_it(
    cdn_service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    png = solid_png(16, 16, (0, 128, 255))
    digest = hashlib.sha256(png).hexdigest()
    upload_id = (await upload(http, cdn_service.url, user, png)).json()["upload_id"]
    jobs = []
    for _ in range(2):
        created = await submit(http, cdn_service.url, user, {"prompt": "p", "image_url": f"upload:{upload_id}"})
        assert created.status_code == 202, created.text
        jobs.append(created.json()["request_id"])
    on_cdn = [f for f in fal.storage.files.values() if f.sha256 == digest]
    assert len(on_cdn) == 1  # the second job reused the CDN's copy
    assert on_cdn[0].content_type == "image/png" and on_cdn[0].name == f"{upload_id}.png"
    assert on_cdn[0].lifecycle == '{"expiration_duration_seconds": 7200}'
    for request_id in jobs:
        job = (await http.get(f"{cdn_service.url}/api/jobs/{request_id}?wait=60", headers=bearer(user))).json()
        assert job["status"] == "completed", job
        assert job["input"]["image_url"] == f"upload:{upload_id}"
        sent = fal.requests[request_id].input["image_url"]
        assert sent == f"{fal.base_url}/files/{on_cdn[0].file_id}/{upload_id}.png"
        assert [(f.status, f.sha256) for f in fal.input_fetches if f.request_id == request_id] == [(200, digest)]
        assert job["result"]["video"]["file_name"] == "from-0080ff.mp4"


async def test_an_upload_that_is_not_yours_or_gone_is_never_sent_to_fal(
    uploads_service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser, other_user: NewUser,
) -> None:
    url = uploads_service.url
    theirs = (await upload(http, url, other_user, solid_png(8, 8, (5, 6, 7)))).json()["upload_id"]
    mine = (await upload(http, url, user, solid_png(8, 8, (7, 6, 5)))).json()["upload_id"]
    assert (await http.delete(f"{url}/api/uploads/{mine}", headers=bearer(user))).status_code == 204
    before = len(fal.submissions)
    for model_input, field in (({"prompt": "x", "image_url": f"upload:{theirs}"}, "input.image_url"),
                               ({"prompt": "x", "image_url": "upload:ok", "extra": [f"upload:{mine}"]}, "input.image_url"),
                               ({"prompt": "x", "image_url": f"upload:{uuid.uuid4().hex}"}, "input.image_url")):
        answer = await submit(http, url, user, model_input)
        assert answer.status_code == 422, answer.text
        assert answer.json()["message"].startswith(f"{field}: upload ")
    assert len(fal.submissions) == before


async def test_the_emulator_fails_an_input_it_cannot_fetch_as_fal_does(
    uploads_service: RunningServer, http: httpx.AsyncClient, user: NewUser,
) -> None:
    created = await submit(http, uploads_service.url, user,
                           {"prompt": "x", "image_url": f"{uploads_service.url}/api/uploads/nothing-here"})
    request_id = created.json()["request_id"]
    job = (await http.get(f"{uploads_service.url}/api/jobs/{request_id}?wait=60", headers=bearer(user))).json()
    assert job["status"] == "failed", job
    assert job["result"]["detail"][0]["loc"] == ["body", "image_url"]


async def test_expired_uploads_go_unless_an_open_job_uses_them(
    uploads_service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, media_dir: Path,
) -> None:
    owner = await create_user(pool, f"retention-{uuid.uuid4().hex[:8]}")
    url = uploads_service.url
    kept = (await upload(http, url, owner, solid_png(8, 8, (1, 0, 0)))).json()["upload_id"]
    gone = (await upload(http, url, owner, solid_png(8, 8, (0, 1, 0)))).json()["upload_id"]
    request_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input) "
                       "VALUES ($1, $2, $3, 'video', '{}')", request_id, owner.user_id, I2V)
    await pool.execute("INSERT INTO fal_job_uploads (request_id, upload_id) VALUES ($1, $2)", request_id, kept)
    await pool.execute("UPDATE fal_uploads SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                       owner.user_id)
    await uploads_service.app.state.uploads.remove_expired()
    left = [u["upload_id"] for u in (await http.get(f"{url}/api/uploads", headers=bearer(owner))).json()["uploads"]]
    assert left == [kept] and gone not in left
    assert len(stored_files(media_dir, owner)) == 1


async def test_the_python_client_uploads_a_path_or_bytes(
    uploads_service: RunningServer, http: httpx.AsyncClient, user: NewUser, tmp_path: Path,
) -> None:
    from service.client import FalJobsClient, FalJobsError

    png = solid_png(20, 10, (1, 2, 3))
    (tmp_path / "in.png").write_bytes(png)
    async with FalJobsClient(uploads_service.url, user.api_key) as client:
        from_path = await client.upload(tmp_path / "in.png")
        from_bytes = await client.upload(png)
        assert from_path.upload_id == from_bytes.upload_id
        assert (from_path.content_type, from_path.width, from_path.height, from_path.size) == ("image/png", 20, 10, len(png))
        with pytest.raises(FalJobsError) as refused:
            await client.upload(b"plain text, not a picture")
        assert refused.value.status == 415


async def test_signed_links_need_a_public_app_url(
    database_url: str, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser, media_dir: Path,
) -> None:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, None, MEDIA_DIR=str(media_dir),
                                                              INPUT_DELIVERY="signed_url")))
    try:
        upload_id = (await upload(http, running.url, user, solid_png(8, 8, (3, 3, 3)))).json()["upload_id"]
        before = len(fal.submissions)
        answer = await submit(http, running.url, user, {"prompt": "p", "image_url": f"upload:{upload_id}"})
        assert answer.status_code == 422 and "APP_URL" in answer.json()["message"]
        assert len(fal.submissions) == before
    finally:
        await running.stop()
