"""What one credential may hold open in a process, beyond streams: a revoked key's pending `?wait=`
ends with 401 (not with the job, later), and output downloads are limited per key (429 with
Retry-After past MAX_DOWNLOADS_PER_USER), per output for signed links, and give their place back
when they end, read to the last byte or abandoned. Real service, real sockets, real Postgres."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.auth.api_keys import NewUser, create_key, create_user, hash_key, revoke_key
from service.auth.callers import KEY
from service.db.pool import create_pool
from service.emulator.media import video_slice
from service.outputs.store import READ_CHUNK_BYTES, MediaStore
from tests.conftest import RunningServer, bearer
from tests.test_credentials import job_for
from tests.test_outputs import fresh_database, settled, start_service, submit

live = pytest.mark.asyncio(loop_scope="session")

VIDEO_MODEL = "fal-ai/kling-video/v2.1/master/text-to-video"
VIDEO_BYTES = 16 * 1024 * 1024
"""Far more than the kernel buffers of a connection whose client reads nothing: its download stalls."""
DEADLINE_S = 15
"""How long a place may take to come back once its download ended (it is given back at once; a
loaded machine gets slack)."""


async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not await condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE_S} s: {what}") from None


@live
async def test_a_revoked_keys_pending_wait_answers_401(
    service: RunningServer, pool: asyncpg.Pool, http: httpx.AsyncClient, user: NewUser,
) -> None:
    job = await job_for(http, service, bearer(user))  # queued for a minute: the wait cannot end by itself
    admission = service.app.state.admission
    credential = KEY + hash_key(user.api_key)
    waiting = asyncio.create_task(http.get(f"{service.url}/api/jobs/{job['request_id']}?wait=20",
                                           headers=bearer(user), timeout=60))

    async def admitted() -> bool:
        return admission.held(credential, "wait") == 1

    await until(admitted, "the wait was admitted")
    await revoke_key(pool, user.api_key[:12])
    answer = await waiting
    assert answer.status_code == 401, answer.text
    assert "revoked" in answer.json()["message"] and "result" not in answer.json()
    assert admission.held(credential, "wait") == 0


async def stalled_download(base_url: str, path: str, headers: dict[str, str]) -> tuple[socket.socket, bytes]:
    """A GET whose client reads the answer's head and then nothing: (its socket, the head)."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    async with asyncio.timeout(DEADLINE_S):
        while b"\r\n\r\n" not in head:
            piece = await loop.sock_recv(sock, 1024)
            assert piece, head
            head += piece
    return sock, head.split(b"\r\n\r\n", 1)[0]


async def refusals(http: httpx.AsyncClient, url: str) -> float:
    for family in text_string_to_metric_families((await http.get(f"{url}/metrics")).text):
        if family.name == "fal_jobs_limit_refusals":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["limit"] == "downloads":
                    return sample.value
    return 0.0


@live
@pytest.mark.timeout(240)
async def test_downloads_are_limited_per_key_and_per_signed_output(
    http: httpx.AsyncClient, server_dsn: str, tmp_path: Path,
) -> None:
    async with fresh_database(server_dsn) as dsn:
        running = await start_service(dsn, tmp_path, MAX_DOWNLOADS_PER_USER="2")
        pool = await create_pool(dsn, min_size=1, max_size=3)
        sockets: list[socket.socket] = []
        try:
            owner = await create_user(pool, f"downloader-{uuid.uuid4().hex[:8]}")
            other_key = {"Authorization": f"Bearer {await create_key(pool, owner.name)}"}
            request_id = await submit(http, running.url, owner, "video", VIDEO_MODEL, {
                "prompt": "long", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": VIDEO_BYTES}})
            job = await settled(http, running.url, owner, request_id)
            [output] = job["outputs"]
            assert output["status"] == "stored", output
            path = output["url"]
            admission = running.app.state.admission
            credential = KEY + hash_key(owner.api_key)

            async def none_held() -> bool:
                return admission.held(credential, "download") == 0

            # Downloads read to their end give their place back (just after their last byte): more
            # of them, one after another, than the limit.
            for _ in range(3):
                whole = await http.get(running.url + path, headers=bearer(owner))
                assert whole.status_code == 200 and len(whole.content) == VIDEO_BYTES
                await until(none_held, "the finished download's place came back")

            # Two that stall hold both places; the third download of that key is refused.
            for _ in range(2):
                sock, head = await stalled_download(running.url, path, bearer(owner))
                sockets.append(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
            assert admission.held(credential, "download") == 2
            refused_before = await refusals(http, running.url)
            refused = await http.get(running.url + path, headers=bearer(owner))
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert "MAX_DOWNLOADS_PER_USER = 2" in refused.json()["message"]
            assert await refusals(http, running.url) == refused_before + 1
            # Per credential: the user's other key still downloads (a short range).
            part = await http.get(running.url + path, headers={**other_key, "Range": "bytes=0-9"})
            assert part.status_code == 206 and part.content == video_slice(0, 10)
            assert admission.held(credential, "download") == 2

            # A signed link's downloads take the output's places, not the minting key's.
            link = await http.post(f"{running.url}{path}/link", headers=bearer(owner))
            assert link.status_code == 200, link.text
            signed = link.json()["url"]
            for _ in range(2):
                sock, head = await stalled_download(running.url, signed, {})
                sockets.append(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
            by_link = await http.get(running.url + signed)
            assert by_link.status_code == 429 and "signed links" in by_link.json()["message"]
            assert "retry-after" in by_link.headers

            # A client that goes away gives its place back.
            sockets.pop(0).close()

            async def freed() -> bool:
                return admission.held(credential, "download") == 1

            await until(freed, "the abandoned download's place came back")
            again = await http.get(running.url + path, headers={**bearer(owner), "Range": "bytes=-10"})
            assert again.status_code == 206 and again.content == video_slice(VIDEO_BYTES - 10, VIDEO_BYTES)
        finally:
            for sock in sockets:
                sock.close()
            await pool.close()
            await running.stop()


@live
async def test_the_store_reads_in_pieces_of_at_most_read_chunk_bytes(tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))
    try:
        size = 3 * 1024 * 1024 + 5
        data = bytes(range(256)) * (size // 256) + b"12345"

        async def chunks():  # type: ignore[no-untyped-def]
            yield data

        await store.put("outputs/x/0", chunks())
        pieces = [piece async for piece in await store.read("outputs/x/0", 0, size)]
        assert b"".join(pieces) == data
        assert max(len(piece) for piece in pieces) <= READ_CHUNK_BYTES <= 256 * 1024
    finally:
        store.close()
