"""Service processes of their own (`python -m service run`), as a deployment runs them: for the tests
that need several processes on one database, or settings that only a whole process reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import msgspec

from tests.conftest import FAL_KEY, free_socket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.emulator import FalEmulator

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess(msgspec.Struct):
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def start_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("not ready: " + log.read_text())


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, as a terminal or a process manager stops it; killed if it has not ended in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()


def fal_env(database_url: str, fal: FalEmulator, port: int, **overrides: str) -> dict[str, str]:
    """A process's environment: this database, the emulator as fal, webhooks to its own port."""
    url = f"http://127.0.0.1:{port}"
    return {**os.environ, "DATABASE_URL": database_url, "FAL_KEY": FAL_KEY, "FAL_QUEUE_URL": fal.base_url,
            "FAL_SCHEMA_URL": fal.schema_url, "FAL_API_URL": fal.base_url, "FAL_JWKS_URL": fal.jwks_url,
            "APP_URL": url, "PORT": str(port), "LOG_LEVEL": "WARNING", "RECONCILE_INTERVAL_S": "3600", **overrides}


@contextlib.asynccontextmanager
async def service_processes(database_url: str, fal: FalEmulator, logs: Path, count: int = 2,
                            **overrides: str) -> AsyncIterator[list[ServiceProcess]]:
    """`count` processes on one database, each on its own port, ready; stopped on the way out."""
    started: list[ServiceProcess] = []
    try:
        for index in range(count):
            with free_socket() as sock:
                port = sock.getsockname()[1]
            log = logs / f"service-{index}.log"
            started.append(ServiceProcess(url=f"http://127.0.0.1:{port}", log=log,
                                          process=start_process(fal_env(database_url, fal, port, **overrides), log)))
        # The processes call back into the test's event loop (the emulator's JWKS): wait without blocking it.
        for each in started:
            await asyncio.to_thread(wait_ready, each.url, each.process, each.log)
        yield started
    finally:
        for each in started:
            await stop_process(each.process)
