"""Real servers on free ports: the emulator (under uvicorn) and a tiny webhook receiver."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest

from service.emulator import FalEmulator, create_emulator_app
from tests.conftest import free_socket, start_uvicorn

KEY = "emulator-test-key:secret"
# Compressed version of fal's two-hour retry schedule.
FAST_RETRIES: tuple[float, ...] = (0.05, 0.05, 0.05)


def bound_socket() -> tuple[socket.socket, int]:
    # Bound before the server starts, so the port (and thus base_url) is known and never raced for.
    sock = free_socket()
    return sock, sock.getsockname()[1]


@asynccontextmanager
async def serve(app: Any, sock: socket.socket, *, lifespan: str = "on") -> AsyncIterator[None]:
    running = await start_uvicorn(app, sock, lifespan=lifespan)
    try:
        yield
    finally:
        await running.stop()
        sock.close()


@asynccontextmanager
async def running_emulator(**options: Any) -> AsyncIterator[FalEmulator]:
    settings: dict[str, Any] = {
        "retry_schedule_s": FAST_RETRIES,
        "webhook_timeout_s": 5.0,
        "heartbeat_s": 15.0,
        "default_queue_ms": 20,
        "default_run_ms": 40,
    }
    settings.update(options)
    sock, port = bound_socket()
    emulator = FalEmulator(f"http://127.0.0.1:{port}", KEY, **settings)
    async with serve(create_emulator_app(emulator), sock):
        yield emulator


@pytest.fixture(scope="session")
async def shared_emulator() -> AsyncIterator[FalEmulator]:
    # One server for the whole folder (a uvicorn start/stop costs ~0.2 s); tests look at their own
    # request ids and at deltas, never at totals.
    async with running_emulator() as emulator:
        yield emulator


@pytest.fixture
async def emu(shared_emulator: FalEmulator) -> FalEmulator:
    return shared_emulator


@asynccontextmanager
async def fal_against(emulator: FalEmulator, key: str = KEY) -> AsyncIterator[fal_client.AsyncClient]:
    """The real fal-client, unchanged except for the queue base URL (read by it at every call)."""
    previous = fal_client.client.QUEUE_URL_FORMAT
    fal_client.client.QUEUE_URL_FORMAT = emulator.base_url + "/"
    client = fal_client.AsyncClient(key=key)
    try:
        yield client
    finally:
        fal_client.client.QUEUE_URL_FORMAT = previous
        cached = client.__dict__.get("_client")
        if cached is not None:
            await (await client._client).aclose()


@pytest.fixture
async def fal(emu: FalEmulator) -> AsyncIterator[fal_client.AsyncClient]:
    async with fal_against(emu) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        yield client


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """ASGI app standing in for the service's webhook endpoint; answers from a script."""

    statuses: list[int] = field(default_factory=list)  # popped per request; 200 once empty
    delays_s: list[float] = field(default_factory=list)  # popped per request; 0 once empty
    received: list[Received] = field(default_factory=list)
    url: str = ""
    on_receive: Callable[[Received], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        item = Received(scope["path"], headers, body)
        self.received.append(item)
        if self.on_receive is not None:
            self.on_receive(item)
        self._changed.set()
        self._changed = asyncio.Event()
        delay = self.delays_s.pop(0) if self.delays_s else 0.0
        if delay:
            await asyncio.sleep(delay)
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"nope"})

    def reset(self) -> None:
        self.statuses.clear()
        self.delays_s.clear()
        self.received.clear()
        self.on_receive = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                await self._changed.wait()
        return self.received

    def for_request(self, request_id: str) -> list[Received]:
        return [r for r in self.received if r.headers.get("x-fal-webhook-request-id") == request_id]


@pytest.fixture(scope="session")
async def shared_receiver() -> AsyncIterator[WebhookReceiver]:
    sock, port = bound_socket()
    app = WebhookReceiver(url=f"http://127.0.0.1:{port}/webhooks/fal")
    async with serve(app, sock, lifespan="off"):
        yield app


@pytest.fixture
async def receiver(shared_receiver: WebhookReceiver) -> WebhookReceiver:
    shared_receiver.reset()
    return shared_receiver


def closed_port_url() -> str:
    sock, port = bound_socket()
    sock.close()
    return f"http://127.0.0.1:{port}/nothing-listens-here"


def faults(**options: Any) -> dict[str, Any]:
    return {"fal_emulator": options}


async def lifecycle_over(emulator: FalEmulator, request_id: str, timeout: float = 30) -> None:
    """Wait until a request's lifecycle task has ended: queue, run and every webhook delivery and
    retry are behind it, so nothing more will be sent for it (an exact point, unlike a sleep)."""
    task = emulator.requests[request_id].task
    assert task is not None
    await asyncio.wait([task], timeout=timeout)
    assert task.done(), f"request {request_id} still running after {timeout} s"
