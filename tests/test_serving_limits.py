"""What the Procfile's web process refuses and caps: a public deploy (an https APP_URL) does not
start with /metrics open to anyone, and each process answers 503 past MAX_CONNECTIONS open
connections. Real processes, real HTTP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx

from service.serving import check_can_serve
from tests.conftest import free_socket, service_settings
from tests.test_production_stance import ROOT, procfile_env, procfile_web_command

PUBLIC = {"FAL_KEY": "fal-key:secret", "APP_URL": "https://jobs.example.com"}


async def test_a_public_deploy_refuses_to_start_without_metrics_token(database_url: str) -> None:
    port = free_socket().getsockname()[1]
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", procfile_web_command()], env=procfile_env(database_url, port, **PUBLIC),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "METRICS_TOKEN" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # With a token it may; without https (development, a private network) it need not have one.
    check_can_serve(service_settings(database_url, **PUBLIC, METRICS_TOKEN="m" * 32))
    check_can_serve(service_settings(database_url, FAL_KEY="fal-key:secret", APP_URL="http://10.0.0.5:8000"))


async def test_each_process_answers_503_past_max_connections(database_url: str) -> None:
    port = free_socket().getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        ["bash", "-c", procfile_web_command()],
        env=procfile_env(database_url, port, FAL_EMULATOR="1", WEB_CONCURRENCY="1", MAX_CONNECTIONS="3"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                async with httpx.AsyncClient(timeout=2) as probe:  # a connection of its own, closed after
                    if (await probe.get(f"{url}/readyz")).status_code == 200:
                        break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the web process never became ready"
            await asyncio.sleep(0.2)
        first, second, third = clients
        # Two kept-alive connections are within the limit (once the server has counted the probe's
        # connection as closed, which it learns a moment after the probe's last answer); a third
        # connection is past it.
        for client in (first, second):
            async with asyncio.timeout(15):
                while (await client.get("/healthz")).status_code != 200:
                    await asyncio.sleep(0.05)
        refused = await third.get("/healthz")
        assert refused.status_code == 503, refused.text
        # One closed gives its room back.
        await first.aclose()
        async with asyncio.timeout(15):
            while (await third.get("/healthz")).status_code != 200:
                await asyncio.sleep(0.05)
    finally:
        for client in clients:
            await client.aclose()
        process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(process.wait, 30) == 0
