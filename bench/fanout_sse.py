"""The fan-out bench's SSE subscribers: raw non-blocking sockets read by loop.add_reader (no task,
no StreamReader per client: 10,000 of them share one core), the HTTP head, chunked framing and
`event:`/`id:`/`data:` lines parsed by hand, and the kernel's receive timestamp of each read
(SO_TIMESTAMPNS) as the wire clock. SseHub counts who is ready and routes `completed` events to
the round that waits for them."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.fanout_http import decode_status
from bench.harness import BenchFailure

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
TIMESPEC = struct.Struct("@qq")
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
RECV_SIZE = 65536
BATCH_TIMEOUT_S = 60.0


@dataclass
class Round:
    request_id: str
    expected: int
    done: asyncio.Future[None]
    sent: float = 0.0
    sent_ns: int = 0
    app_ms: list[float] = field(default_factory=list)
    wire_ms: list[float] = field(default_factory=list)

    def stamp(self, sent: float, sent_ns: int) -> None:
        """The webhook's send times (perf_counter and time_ns), taken just before its write."""
        self.sent = sent
        self.sent_ns = sent_ns

    def record(self, app_at: float, wire_ns: int) -> None:
        self.app_ms.append((app_at - self.sent) * 1000)
        if wire_ns:
            self.wire_ms.append((wire_ns - self.sent_ns) / 1e6)
        if len(self.app_ms) >= self.expected and not self.done.done():
            self.done.set_result(None)


class SseHub:
    """The bench side of S subscribers: counts the subscribers that are ready (a user stream's
    `ready` message, a job stream's first `job` event: the job's snapshot), routes `completed`
    events to rounds."""

    def __init__(self) -> None:
        self.ready = 0
        self.ready_target = 0
        self.ready_waiter: asyncio.Future[None] | None = None
        self.rounds: dict[str, Round] = {}
        self.event_info: dict[bytes, tuple[str, str]] = {}
        self.unexpected = 0
        self.other_events = 0
        self.heartbeats = 0
        self.ended = 0
        self.failed: list[str] = []
        self.no_timestamp = 0

    def on_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.ready_target and self.ready_waiter is not None and not self.ready_waiter.done():
            self.ready_waiter.set_result(None)

    def on_job(self, client: SseClient, event_id: bytes, data: bytes, app_at: float, wire_ns: int) -> None:
        info = self.event_info.get(event_id)
        if info is None:  # every subscriber of a broadcast gets the same event: decode it once
            decoded = decode_status(data)
            info = self.event_info[event_id] = (decoded.request_id, decoded.status)
        request_id, status = info
        if client.snapshot_pending:  # a job stream's first message: the job's current state
            client.snapshot_pending = False
            if status != "pending" or request_id != client.request_id:
                self.on_fail(f"job stream {client.request_id} sent the snapshot {request_id} {status}")
                return
            self.on_ready()
            return
        if status != "completed":
            self.other_events += 1
            return
        if client.request_id is not None:
            client.finished = True  # a job stream ends after its terminal event
        round_ = self.rounds.get(request_id)
        if round_ is None:
            self.unexpected += 1
            return
        round_.record(app_at, wire_ns)

    def on_fail(self, reason: str) -> None:
        self.failed.append(reason)
        if self.ready_waiter is not None and not self.ready_waiter.done():
            self.ready_waiter.set_exception(BenchFailure(reason))


def _wire_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The kernel's receive timestamp (SO_TIMESTAMPNS) of a read, in ns; 0 when it sent none."""
    wire_ns = 0
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(value)
            wire_ns = seconds * 1_000_000_000 + nanoseconds
    return wire_ns


class SseClient:
    """One subscriber: a raw non-blocking socket read by loop.add_reader; parses the HTTP head, the
    chunked framing and the SSE lines by hand."""

    __slots__ = (
        "fd",
        "finished",
        "head_done",
        "hub",
        "loop",
        "open",
        "raw",
        "request_id",
        "snapshot_pending",
        "sock",
        "text",
    )

    def __init__(self, sock: socket.socket, hub: SseHub, loop: asyncio.AbstractEventLoop,
                 request_id: str | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.hub = hub
        self.loop = loop
        self.head_done = False
        self.raw = bytearray()
        self.text = bytearray()
        self.open = True
        self.request_id = request_id
        """The watched job, for a job stream; None for a user stream."""
        self.snapshot_pending = request_id is not None
        self.finished = False
        """A job stream that delivered its job's terminal event: the bench closes it."""

    def on_readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(RECV_SIZE, ANCILLARY_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close()
            self.hub.on_fail(f"subscriber socket error: {error}")
            return
        app_at = time.perf_counter()
        if not data:
            self.close()
            self.hub.ended += 1
            return
        wire_ns = _wire_ns(ancillary)
        if not wire_ns:
            self.hub.no_timestamp += 1
        self.raw += data
        if not self.head_done and not self._read_head():
            return
        self._dechunk()
        text = self.text
        while True:  # SSE messages
            end = text.find(b"\n\n")
            if end < 0:
                break
            message = bytes(text[:end])
            del text[:end + 2]
            self._message(message, app_at, wire_ns)
        if self.finished:
            self.close()

    def _read_head(self) -> bool:
        """Consume the HTTP head once it is whole; False while it is not, or when it is not a 200
        (the subscriber is then closed and the bench fails)."""
        raw = self.raw
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        if not raw.startswith(b"HTTP/1.1 200"):
            self.close()
            self.hub.on_fail(f"subscriber got {bytes(raw[:300])!r}")
            return False
        del raw[:end + 4]
        self.head_done = True
        return True

    def _dechunk(self) -> None:
        """Move every whole chunk of the chunked transfer encoding from `raw` to `text`."""
        raw, text = self.raw, self.text
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(raw[:line_end], 16)
            if size == 0:
                del raw[:]
                break
            if len(raw) < line_end + 2 + size + 2:
                break
            text += raw[line_end + 2:line_end + 2 + size]
            del raw[:line_end + 2 + size + 2]

    def _message(self, message: bytes, app_at: float, wire_ns: int) -> None:
        if message.startswith(b"event: job\n"):
            event_id = b""
            data = b""
            for line in message.split(b"\n"):
                if line.startswith(b"id: "):
                    event_id = line[4:]
                elif line.startswith(b"data: "):
                    data = line[6:]  # the service sends one data line (JSON text has no newline)
            self.hub.on_job(self, event_id, data, app_at, wire_ns)
        elif message.startswith(b"event: ready\n"):
            self.hub.on_ready()
        elif message.startswith(b":"):
            self.hub.heartbeats += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.fd)
            self.sock.close()


async def open_subscribers(hub: SseHub, port: int, streams: Sequence[tuple[str, str | None]],
                           batch: int) -> list[SseClient]:
    """Open one subscriber per (path, watched request id or None for a user stream), `batch` at a
    time, each batch waiting until all of its subscribers are ready."""
    loop = asyncio.get_running_loop()
    clients: list[SseClient] = []

    async def one(path: str, request_id: str | None) -> SseClient:
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
                   "Cache-Control: no-cache\r\n\r\n").encode()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            sock.send(request)
        except BaseException:
            sock.close()
            raise
        client = SseClient(sock, hub, loop, request_id)
        loop.add_reader(client.fd, client.on_readable)
        return client

    count = len(streams)
    try:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            hub.ready_target = hub.ready + size
            hub.ready_waiter = loop.create_future()
            results = await asyncio.gather(*(one(path, request_id) for path, request_id in streams[start:start + size]),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            clients.extend(r for r in results if isinstance(r, SseClient))
            if errors:
                raise BenchFailure(f"{len(errors)} of {size} connects failed at {start}: {errors[0]!r}")
            try:
                await asyncio.wait_for(hub.ready_waiter, BATCH_TIMEOUT_S)
            except TimeoutError:
                raise BenchFailure(f"only {hub.ready} of {hub.ready_target} subscribers got `ready` "
                                   f"within {BATCH_TIMEOUT_S:.0f} s") from None
    except BaseException:
        close_subscribers(clients)
        raise
    return clients


def close_subscribers(clients: Any) -> None:
    for client in clients:
        client.close()
