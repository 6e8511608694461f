"""The webhook bench's load: fal's signed "OK" webhooks made before the clock starts, sent
`concurrency` at a time over keep-alive connections by httpx or a minimal raw HTTP/1.1 client,
each answer checked to be an applied 200."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import msgspec

from bench.harness import BenchFailure
from bench.webhooks_jobs import PAYLOAD
from service.emulator import FalEmulator
from service.emulator.signing import signed_headers

WEBHOOK_PATH = "/api/webhooks/fal"
PHASE_TIMEOUT_S = 150.0  # no single measured phase may take longer


class _Ack(msgspec.Struct):
    outcome: str = ""


def sign_webhooks(emulator: FalEmulator, request_ids: list[str]) -> list[tuple[bytes, dict[str, str]]]:
    """Bodies and signed headers, made before the clock starts (signing is fal's cost, not ours)."""
    key = emulator.keyset.current
    timestamp = int(time.time())
    prepared = []
    for request_id in request_ids:
        body = msgspec.json.encode({"request_id": request_id, "gateway_request_id": request_id,
                                    "status": "OK", "payload": PAYLOAD})
        headers = signed_headers(key, request_id=request_id, user_id=emulator.user_id, timestamp=timestamp, body=body)
        headers["Content-Type"] = "application/json"
        prepared.append((body, headers))
    return prepared


async def run_workers(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run one(i) for i in range(count), `concurrency` at a time; returns the wall time."""
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await one(i)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=PHASE_TIMEOUT_S)
    return time.perf_counter() - started


Post = Callable[[bytes, dict[str, str]], Awaitable[tuple[int, bytes]]]


def httpx_post(client: httpx.AsyncClient, url: str) -> Post:
    async def post(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        response = await client.post(url, content=body, headers=headers)
        return response.status_code, response.content

    return post


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client (`--client raw`): `connections` sockets handed out from
    a queue, no pool bookkeeping. Only for telling the load generator's CPU apart from the service's."""

    def __init__(self, url: str, path: str, connections: int) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._prefix = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()
        self._count = connections
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._all: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawHttpClient:
        await self.reconnect()
        return self

    async def reconnect(self) -> None:
        """Fresh connections: uvicorn closes keep-alive connections idle for 5 s (between phases)."""
        await self.__aexit__()
        self._idle = asyncio.Queue()
        for _ in range(self._count):
            reader, writer = await asyncio.open_connection(self._host, self._port)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._all.append(writer)
            self._idle.put_nowait((reader, writer))

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._all:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._all = []

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        reader, writer = await self._idle.get()
        try:
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(b"".join((self._prefix, head.encode("latin-1"),
                                   b"Content-Length: %d\r\n\r\n" % len(body), body)))
            response_head = await reader.readuntil(b"\r\n\r\n")
            status = int(response_head[9:12])
            length = None
            for line in response_head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise BenchFailure(f"raw client: response without Content-Length: {response_head[:300]!r}")
            return status, await reader.readexactly(length)
        finally:
            self._idle.put_nowait((reader, writer))


async def fire_webhooks(post: Post, prepared: list[tuple[bytes, dict[str, str]]],
                        concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    failures: list[str] = []
    decode = msgspec.json.Decoder(_Ack).decode

    async def one(i: int) -> None:
        body, headers = prepared[i]
        started = time.perf_counter()
        status, content = await post(body, headers)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            failures.append(f"{status} {content[:200]!r}")
        elif decode(content).outcome != "applied":
            failures.append(f"200 but {content[:200]!r}")

    wall = await run_workers(len(prepared), concurrency, one)
    if failures:
        raise BenchFailure(f"{len(failures)} of {len(prepared)} webhooks were not applied with 200; "
                           f"first: {failures[0]}")
    return wall, latencies

