"""The fan-out bench's plain HTTP side: a lean HTTP/1.1 keep-alive connection (one request at a
time, Content-Length responses only), the sender of signed fal "OK" webhooks that stamps the moment
just before each write, and the two fields the bench reads of a job's JSON."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import msgspec

from bench.harness import BenchFailure
from service.emulator import FalEmulator
from service.emulator.signing import signed_headers

# No media URL: this measures the delivery of events. A fal.media URL (unreachable here) made
# every completed job's output copy retry with backoff in the background, and those claims were
# what the idle window counted (81 tx in 5 s), not the streams. The copy path has bench/outputs.py.
PAYLOAD = {
    "images": [{"width": 1024, "height": 768, "content_type": "image/png"}],
    "seed": 42,
    "has_nsfw_concepts": [False],
}
ACK_TIMEOUT_S = 15.0


class _JobStatus(msgspec.Struct):
    request_id: str
    status: str


decode_status = msgspec.json.Decoder(_JobStatus).decode
"""A job's JSON (an SSE `job` event's data, a GET /api/jobs/{id} body) -> its request id and status."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time, Content-Length responses only."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, bytes, float]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise BenchFailure(f"response without content-length: {head[:200]!r}")
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:line_end if line_end > 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.on_response(status, body, now)

    def on_response(self, status: int, body: bytes, at: float) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body, at))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the service closed the connection"))


async def connect(factory: Any, port: int) -> Any:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(factory, "127.0.0.1", port)
    return protocol


class WebhookSender:
    """Signs fal "OK" webhooks and POSTs them over one keep-alive connection, stamping the moment
    just before the write."""

    def __init__(self, emulator: FalEmulator, port: int) -> None:
        self._emulator = emulator
        self._port = port
        self._connection: HttpConnection | None = None
        self.acks_ms: list[float] = []

    def prepare(self, request_id: str) -> bytes:
        body = msgspec.json.encode({"request_id": request_id, "gateway_request_id": request_id,
                                    "status": "OK", "payload": PAYLOAD})
        headers = signed_headers(self._emulator.keyset.current, request_id=request_id,
                                 user_id=self._emulator.user_id, timestamp=int(time.time()), body=body)
        lines = ["POST /api/webhooks/fal HTTP/1.1", f"Host: 127.0.0.1:{self._port}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def fresh(self) -> None:
        """A new connection (uvicorn closes keep-alive connections idle for 5 s)."""
        self.close()
        self._connection = await connect(HttpConnection, self._port)

    async def send(self, request: bytes, on_sent: Any = None) -> tuple[float, int]:
        """Write `request`; returns (perf_counter just before the write, time_ns just before it)
        once the 200 arrived."""
        if self._connection is None or self._connection.closed:
            await self.fresh()
        connection = self._connection
        assert connection is not None and connection.transport is not None
        connection.waiter = asyncio.get_running_loop().create_future()
        sent_ns = time.time_ns()
        sent = time.perf_counter()
        if on_sent is not None:
            on_sent(sent, sent_ns)
        connection.transport.write(request)
        status, body, at = await asyncio.wait_for(connection.waiter, ACK_TIMEOUT_S)
        if status != 200:
            raise BenchFailure(f"webhook answered {status}: {body[:300]!r}")
        self.acks_ms.append((at - sent) * 1000)
        return sent, sent_ns

    def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
        self._connection = None
