"""The demo with several processes behind one port, as `run` starts it by default: each process
keeps its own LISTEN connection and hub, the emulator runs once beside them, and a subscriber on
one process sees the webhook another process took."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import httpx

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from tests.conftest import FAL_KEY, bearer, free_socket
from tests.processes import start_process, wait_ready
from tests.sse import SseReader
from tests.test_production_stance import ROOT, procfile_env, procfile_web_command

PROCESSES = 2


async def pinned_clients(url: str, want: int, tries: int = 60) -> dict[int, httpx.AsyncClient]:
    """One keep-alive client per service process: a connection stays with the process that
    accepted it, and /healthz says which that is."""
    found: dict[int, httpx.AsyncClient] = {}
    for _ in range(tries):
        client = httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))
        pid = (await client.get("/healthz")).json()["process"]
        if pid in found:
            await client.aclose()
        else:
            found[pid] = client
        if len(found) == want:
            return found
    for client in found.values():
        await client.aclose()
    raise AssertionError(f"only {len(found)} of {want} processes answered in {tries} connections")


async def test_run_with_several_processes_delivers_across_them(
    database_url: str, pool: asyncpg.Pool, user: NewUser, tmp_path: Path,
) -> None:
    port = free_socket().getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "APP_URL", "EMULATOR_"))}
    env.update(DATABASE_URL=database_url, PORT=str(port), LOG_LEVEL="WARNING", WEB_CONCURRENCY=str(PROCESSES),
               RECONCILE_INTERVAL_S="3600")
    env.pop("STREAM_TOKEN_SECRET", None)  # run shares one of its own among its processes
    log = tmp_path / "run.log"
    process = start_process(env, log)
    await delivers_across_processes(url, process, log, user, emulator_is_local=True)


async def test_the_procfile_with_several_processes_delivers_across_them(
    database_url: str, fal: FalEmulator, user: NewUser, tmp_path: Path,
) -> None:
    """The Procfile's web command as a deployment runs it: a real fal (here the emulator on its own
    port, as fal would be), its webhooks to APP_URL, one stream-token secret for every process."""
    port = free_socket().getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = procfile_env(database_url, port, WEB_CONCURRENCY=str(PROCESSES), FAL_KEY=FAL_KEY,
                       FAL_QUEUE_URL=fal.base_url, FAL_SCHEMA_URL=fal.schema_url, FAL_API_URL=fal.base_url, FAL_JWKS_URL=fal.jwks_url, APP_URL=url,
                       STREAM_TOKEN_SECRET="procfile-test-" + "s" * 32, RECONCILE_INTERVAL_S="3600")
    env.pop("LISTEN_DATABASE_URL", None)
    log = tmp_path / "web.log"
    process = subprocess.Popen(["bash", "-c", procfile_web_command()], cwd=ROOT, env=env, stdout=log.open("ab"),
                               stderr=subprocess.STDOUT)
    await delivers_across_processes(url, process, log, user, emulator_is_local=False)


async def delivers_across_processes(url: str, process: subprocess.Popen[bytes], log: Path, user: NewUser, *,
                                    emulator_is_local: bool) -> None:
    """A job created through one process; a subscriber on every process; each sees it complete,
    whichever process fal's webhook reached. Then the metrics sum every process, and the server
    stops cleanly."""
    clients: dict[int, httpx.AsyncClient] = {}
    try:
        await asyncio.to_thread(wait_ready, url, process, log)
        clients = await pinned_clients(url, PROCESSES)
        first, *_ = clients.values()
        created = await first.post("/api/jobs", headers=bearer(user), json={
            "type": "image", "model_id": "fal-ai/flux/schnell",
            "input": {"prompt": "a kite", "fal_emulator": {"queue_ms": 1500, "run_ms": 500}}})
        assert created.status_code == 202, created.text
        job = created.json()
        # A subscriber on every process, with the token one of them minted; the emulator's webhook
        # lands on one of them.
        readers = [SseReader(client, f"{url}/api/jobs/{job['request_id']}/events?token={job['stream_token']}")
                   for client in clients.values()]
        for reader in readers:
            await reader.__aenter__()
        try:
            for reader in readers:
                while True:
                    _, state = await reader.next_job(timeout=30)
                    if state["status"] in ("completed", "failed"):
                        break
                assert state["status"] == "completed" and state["mode"] == "webhook"
                # The stream ends once every output has settled (one more event per output).
                while (message := await asyncio.wait_for(reader.messages.get(), 30)) is not None:
                    assert message.data is None or message.json()["status"] == "completed", message

        finally:
            for reader in readers:
                await reader.close()
        image = state["result"]["images"][0]["url"]
        assert (await first.get(image)).headers["content-type"] == "image/png"
        # /metrics sums every process, whichever one answers (prometheus-client's multiprocess mode).
        for client in clients.values():
            text = (await client.get("/metrics")).text
            assert "fal_jobs_listener_connected 2.0" in text, text
            assert 'fal_jobs_jobs_created_total{model="fal-ai/flux/schnell"} 1.0' in text
            assert 'fal_jobs_jobs_finished_total{model="fal-ai/flux/schnell",status="completed"} 1.0' in text
    finally:
        for client in clients.values():
            await client.aclose()
        process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()
    # `run` said, once every process served, that jobs go to the emulator; the Procfile's web has a real fal.
    assert ("fal-jobs: FAL_KEY is not set: jobs go to the local fal emulator" in log.read_text()) == emulator_is_local
