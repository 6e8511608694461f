"""Fan-out benchmark: a fal webhook -> the Server-Sent Event stream that watches its job, with many
other subscribers connected, next to "the seed's way" (every browser polls GET /api/jobs/{id} every 2 s).

    python bench/fanout.py [--subscribers 10,1000,10000] [--broadcast 10,1000] [--pollers 10,1000]
                           [--webhooks 200] [--database-url URL] [--profile-service FILE]

Postgres is --database-url, else DATABASE_URL, else an embedded pgserver in a temporary folder.
The bench creates a database `fal_jobs_fanout_<random>` there, applies the migrations, and drops it
at the end (also on errors and Ctrl-C). All traffic goes to 127.0.0.1.

What runs where:
  * this process: the fal emulator under uvicorn (only to publish the JWKS the webhooks are signed
    with), the webhook sender, and every client. Its event loop is uvloop.
  * the service: `python -m service run`, a separate process, started afresh for every step so
    that one step's RSS is not masked by memory another step freed (CPython keeps freed memory).

Primary step, `sse-job` (S subscribers): the product's case, S browsers each watching THEIR OWN job
and mostly idle. S pending jobs are created in the database, spread over ceil(S / 100) users
(--subscribers-per-user), plus W spare ones, and S subscribers open `GET /api/jobs/{id}/events
?token=`, one per job, with a job-scoped stream token as a browser's EventSource uses (the bench
mints the tokens with the service's StreamTokens and a STREAM_TOKEN_SECRET it gives the service,
instead of S calls of POST /api/stream-tokens; the warm-up exercises that endpoint once). The step
waits until every subscriber has its job's snapshot. Then W rounds, one at a time: a random job
whose subscriber is still open gets its signed "OK" webhook, and the time runs from just before
the POST is written to that one subscriber receiving the `completed` event. A job stream ends after
its terminal event, so the bench then closes that subscriber and opens a new one on a spare pending
job (and waits for its snapshot) before the next round: S subscribers are open during every round,
and each round's event goes to exactly one of them. A short gap (--gap-ms) separates the rounds.

Secondary step, `broadcast` (S subscribers, only S in --broadcast): S clients on ONE user's stream
`GET /api/events?token=`, and W jobs of that user that all S watch, so every event is written to S
sockets. Its cost grows with S by nature (one write per subscriber); it is shown for the
per-delivery cost, not as the product's case. The W jobs are created pending *before* the
subscribers connect, so no `pending` event is fanned out during the measurement. Rounds run one at
a time: the next webhook waits for the previous round's last delivery plus the gap.

Two clocks per delivery:
  * app: time.perf_counter() when this process parsed the event. With many busy clients on one
    core it includes the wait for this process to get round to that socket (the load generator's
    own queueing), so in `broadcast` it overstates what a browser would see. In `sse-job` only one
    socket is readable per round, so app and wire agree closely.
  * wire: the kernel's receive timestamp of the segment (SO_TIMESTAMPNS, CLOCK_REALTIME) minus
    time.time_ns() taken just before the POST. On loopback that is when the service's write hit
    the socket: the service's share, without the load generator's.

The SSE clients are raw non-blocking sockets with loop.add_reader (no task, no StreamReader per
client); HTTP chunked framing and the `event:`/`id:`/`data:` lines are parsed here. Pollers are
asyncio Protocols driven by call_at timers: no task per client either.

Poll step (P clients): each keeps one keep-alive connection and GETs /api/jobs/{id} (Bearer API
key) every 2 s with a random phase; all follow a sequence of jobs, moving to the next job when
they see the current one completed. A webhook completes the next job every 2.5 s; the latency is
webhook POST -> the first poll response that shows `completed`.

Database load: the delta of `pg_stat_database.xact_commit` of the bench database over a window,
read from a connection to another database (so the reads do not count). Postgres flushes these
counters from each backend at most once a second (pending counts of a backend that went idle can
land up to ~10 s later), so each edge of a window is uncertain by about one second of activity;
the idle window (every subscriber open, nothing else) starts 11 s after the last database work,
so it is exact. In `sse-job` the latency window also holds the W re-subscribes (each stream open
reads the job's owner and snapshot), so its db tx are per round = one webhook + one open; the
`broadcast` rows have webhooks only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import resource
import secrets
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import msgspec  # noqa: E402
import uvloop  # noqa: E402

from bench.harness import (  # noqa: E402
    BenchFailure,
    Emulator,
    Service,
    add_processes_argument,
    admin_execute,
    machine_busy_s,
    open_server,
    percentile,
    proc_cpu_s,
    quiet_logging,
    rss_kib,
    start_emulator,
    start_service,
    with_database,
)
from service.auth.api_keys import NewUser, create_user, hash_key  # noqa: E402
from service.app import CREDENTIAL_CHECK_S  # noqa: E402
from service.auth.callers import KEY, Caller  # noqa: E402
from service.auth.stream_tokens import StreamTokens, job_scope  # noqa: E402
from service.db.migrations import apply_migrations  # noqa: E402
from service.db.pool import create_pool  # noqa: E402
from service.emulator import FalEmulator  # noqa: E402
from service.emulator.signing import signed_headers  # noqa: E402
from service.jobs.models import NewJob  # noqa: E402
from service.jobs.status_machine import create_job  # noqa: E402

MODEL_ID = "fal-ai/flux/schnell"
# No media URL: this measures the delivery of events. A fal.media URL (unreachable here) made
# every completed job's output copy retry with backoff in the background, and those claims were
# what the idle window counted (81 tx in 5 s), not the streams. The copy path has bench/outputs.py.
PAYLOAD = {
    "images": [{"width": 1024, "height": 768, "content_type": "image/png"}],
    "seed": 42,
    "has_nsfw_concepts": [False],
}
JOB_INPUT = {"prompt": "a lighthouse at dusk, oil on canvas", "image_size": "landscape_4_3"}

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
TIMESPEC = struct.Struct("@qq")
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
RECV_SIZE = 65536

OPEN_BATCH = 500
SETUP_CONNECTIONS = 8
"""Connections the bench's own set-up writes (users, jobs) use at a time."""
BATCH_TIMEOUT_S = 60.0
ROUND_TIMEOUT_S = 15.0
ACK_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 2.0
POLL_WEBHOOK_EVERY_S = 2.5
STATS_QUIET_S = 11.0
"""A Postgres backend that goes idle less than 1 s after its last statistics flush flushes its
pending counts 10 s later (PGSTAT_IDLE_INTERVAL): windows that must be exact wait this long."""

TARGETS = ("targets: p50 <= 3 ms and p99 <= 10 ms at 10,000; p99(10,000) <= 2 x p99(10); "
           "<= 24 KiB per idle subscriber; 0 db queries per waiting client")



def log(message: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- small helpers --------------------------------------------------------------------------


def postgres_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds of those Postgres backends that run on this machine (0 for a remote server)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/comm") as comm:
                if not comm.read().startswith("postgres"):
                    continue
            total += proc_cpu_s(pid)
    return total


@dataclass
class CpuMeter:
    """Who used the CPU during a window: this process, the service, the bench database's Postgres
    backends, and everything else on the machine (other processes disturb the numbers)."""

    service_under_test: Service
    pg_pids: list[int]
    wall: float = 0.0
    bench: float = 0.0
    service: tuple[float, float] = (0.0, 0.0)
    postgres: float = 0.0
    machine: float = 0.0

    def start(self) -> CpuMeter:
        self.wall, self.bench = time.perf_counter(), time.process_time()
        self.service, self.postgres, self.machine = (self.service_under_test.cpu_split(), postgres_cpu_s(self.pg_pids),
                                                     machine_busy_s())
        return self

    def stop(self, row: Row, pg_pids: Sequence[int]) -> None:
        service = self.service_under_test.cpu_split()
        row.cpu_bench_s = time.process_time() - self.bench
        row.cpu_service_s = sum(service) - sum(self.service)
        row.cpu_service_sys_s = service[1] - self.service[1]
        # Backends that appeared during the window count from their start (their whole life).
        new = [pid for pid in pg_pids if pid not in self.pg_pids]
        row.cpu_postgres_s = postgres_cpu_s(self.pg_pids) - self.postgres + postgres_cpu_s(new)
        row.cpu_machine_s = machine_busy_s() - self.machine
        row.cpu_other_s = row.cpu_machine_s - row.cpu_bench_s - row.cpu_service_s - row.cpu_postgres_s
        window = time.perf_counter() - self.wall
        if row.cpu_other_s > 0.15 * window:
            row.notes.append(f"the machine was busy with other work: {row.cpu_other_s:.1f} CPU-s over {window:.1f} s "
                             "outside this process, the service and the bench database's backends "
                             "(other processes, Postgres housekeeping, kernel): the numbers are disturbed")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---- database -------------------------------------------------------------------------------


class XactCounter:
    """pg_stat_database.xact_commit of the bench database, read over a connection to another one."""

    def __init__(self, connection: asyncpg.Connection, database: str) -> None:
        self._connection = connection
        self._database = database

    async def backend_pids(self) -> list[int]:
        rows = await self._connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self._database)
        return [row["pid"] for row in rows]

    async def read(self) -> int:
        await self._connection.execute("SELECT pg_stat_clear_snapshot()")
        value = await self._connection.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self._database)
        return int(value or 0)

    async def idle_window(self, seconds: float) -> tuple[int, list[str]]:
        """(transactions committed in the bench database over `seconds`, what pg_stat_activity showed
        doing something in it meanwhile: any non-client backend, e.g. an autovacuum worker, and any
        client backend whose query started inside the window), sampled every 100 ms."""
        start = await self.read()
        seen: dict[tuple[Any, ...], str] = {}
        begun = await self._connection.fetchval("SELECT now()")  # this transaction's start, the server's clock
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for r in await self._connection.fetch(
                    "SELECT pid, backend_type, application_name, query_start, left(query, 60) AS query "
                    "FROM pg_stat_activity "
                    "WHERE datname = $1 AND (backend_type <> 'client backend' OR query_start > $2)",
                    self._database, begun):
                seen.setdefault((r["pid"], r["backend_type"], r["query_start"]),
                                f"{r['backend_type']} pid {r['pid']} ({r['application_name'] or 'no application_name'})"
                                f": {r['query']!r}")
            await asyncio.sleep(0.1)
        return await self.read() - start, list(seen.values())


@contextlib.asynccontextmanager
async def setup_pool(dsn: str, size: int = 1) -> Any:
    """A pool for the bench's own writes (users, jobs), closed right after: a backend flushes its
    statistics when it exits, so these writes do not trickle into a later measurement window."""
    pool = await create_pool(dsn, min_size=size, max_size=size)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def new_user(dsn: str, prefix: str) -> NewUser:
    async with setup_pool(dsn) as pool:
        return await create_user(pool, f"{prefix}-{uuid.uuid4().hex[:8]}")


async def new_users(dsn: str, prefix: str, count: int) -> list[NewUser]:
    async with setup_pool(dsn) as pool:
        return [await create_user(pool, f"{prefix}-{uuid.uuid4().hex[:8]}") for _ in range(count)]


async def create_jobs(dsn: str, user_id: str, count: int) -> list[str]:
    return await create_owned_jobs(dsn, [user_id] * count)


async def create_owned_jobs(dsn: str, owners: Sequence[str]) -> list[str]:
    """One pending job per entry of `owners` (a user id), through the service's own create_job,
    over up to SETUP_CONNECTIONS connections at a time."""
    ids = [str(uuid.uuid4()) for _ in owners]
    work = list(zip(ids, owners, strict=True))
    size = max(1, min(SETUP_CONNECTIONS, len(work) // 50 or 1))

    async with setup_pool(dsn, size) as pool:
        async def chunk(part: Sequence[tuple[str, str]]) -> None:
            async with pool.acquire() as connection:
                for request_id, user_id in part:
                    await create_job(connection, NewJob(request_id=request_id, user_id=user_id, model_id=MODEL_ID,
                                                        type="image", input=JOB_INPUT, mode="webhook"))

        await asyncio.gather(*(chunk(work[i::size]) for i in range(size)))
    return ids


# ---- the emulator and the service -----------------------------------------------------------


# ---- lean HTTP/1.1 request/response connection ----------------------------------------------


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


# ---- SSE subscribers ------------------------------------------------------------------------


class _JobStatus(msgspec.Struct):
    request_id: str
    status: str


_decode_status = msgspec.json.Decoder(_JobStatus).decode


@dataclass
class Round:
    request_id: str
    expected: int
    done: asyncio.Future[None]
    sent: float = 0.0
    sent_ns: int = 0
    app_ms: list[float] = field(default_factory=list)
    wire_ms: list[float] = field(default_factory=list)

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
            decoded = _decode_status(data)
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


class SseClient:
    """One subscriber: a raw non-blocking socket read by loop.add_reader; parses the HTTP head, the
    chunked framing and the SSE lines by hand."""

    __slots__ = ("sock", "fd", "hub", "loop", "head_done", "raw", "text", "open", "request_id", "snapshot_pending",
                 "finished")

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
        wire_ns = 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
                seconds, nanoseconds = TIMESPEC.unpack_from(value)
                wire_ns = seconds * 1_000_000_000 + nanoseconds
        if not wire_ns:
            self.hub.no_timestamp += 1
        raw = self.raw
        raw += data
        if not self.head_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            if not raw.startswith(b"HTTP/1.1 200"):
                self.close()
                self.hub.on_fail(f"subscriber got {bytes(raw[:300])!r}")
                return
            del raw[:end + 4]
            self.head_done = True
        text = self.text
        while True:  # chunked transfer encoding
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
        while True:  # SSE messages
            end = text.find(b"\n\n")
            if end < 0:
                break
            message = bytes(text[:end])
            del text[:end + 2]
            self._message(message, app_at, wire_ns)
        if self.finished:
            self.close()

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


# ---- pollers --------------------------------------------------------------------------------


class PollState:
    def __init__(self, request_ids: list[str]) -> None:
        self.request_ids = request_ids
        self.paths = [f"/api/jobs/{r}".encode() for r in request_ids]
        self.sent: list[float | None] = [None] * len(request_ids)
        self.latencies_ms: list[list[float]] = [[] for _ in request_ids]
        self.responses = 0
        self.request_ms: list[float] = []
        self.errors: list[str] = []
        self.stopped = False
        self.before_webhook = 0

    def noticed(self, index: int, at: float) -> None:
        sent = self.sent[index]
        if sent is None:
            self.before_webhook += 1  # cannot happen: the job is completed only by our webhook
            return
        self.latencies_ms[index].append((at - sent) * 1000)


class Poller(HttpConnection):
    """Polls its current job every POLL_INTERVAL_S on a fixed schedule (random phase); when a
    response arrives late, the next poll follows at once instead of piling up."""

    def __init__(self, state: PollState, head_suffix: bytes, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.state = state
        self.head_suffix = head_suffix
        self.loop = loop
        self.index = 0
        self.next_at = 0.0
        self.sent_at = 0.0

    def start(self, first_at: float) -> None:
        self.next_at = first_at
        self.loop.call_at(first_at, self.poll)

    def poll(self) -> None:
        if self.state.stopped or self.closed or self.transport is None:
            return
        self.next_at += POLL_INTERVAL_S
        index = min(self.index, len(self.state.paths) - 1)
        self.sent_at = time.perf_counter()
        self.transport.write(b"GET " + self.state.paths[index] + self.head_suffix)

    def on_response(self, status: int, body: bytes, at: float) -> None:
        state = self.state
        state.responses += 1
        state.request_ms.append((at - self.sent_at) * 1000)
        if status != 200:
            state.errors.append(f"{status}: {body[:200]!r}")
        elif self.index < len(state.paths) and _decode_status(body).status == "completed":
            state.noticed(self.index, at)
            self.index += 1
        if not state.stopped:
            self.loop.call_at(max(self.next_at, self.loop.time()), self.poll)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.state.stopped:
            self.state.errors.append("connection closed by the service")


# ---- results --------------------------------------------------------------------------------


JOB_MODE = "sse-job"
BROADCAST_MODE = "broadcast"
POLL_MODE = "poll 2s"
STREAMS = {
    JOB_MODE: "GET /api/jobs/{id}/events?token=<job-scoped stream token>: one subscriber per job, each watching "
              "its own job; one webhook -> one delivery, with S subscribers open (PRIMARY)",
    BROADCAST_MODE: "GET /api/events?token=<user stream token> of ONE user: every event goes to all S (secondary)",
    POLL_MODE: "GET /api/jobs/{id} with a Bearer API key every 2 s (the seed's way)",
}


@dataclass
class Row:
    mode: str
    clients: int
    deliveries: int = 0
    expected: int = 0
    app_p50: float = float("nan")
    app_p99: float = float("nan")
    wire_p50: float = float("nan")
    wire_p99: float = float("nan")
    last_p50: float = float("nan")
    last_p99: float = float("nan")
    wire_last_p50: float = float("nan")
    wire_last_p99: float = float("nan")
    kib_per_client: float = float("nan")
    tx_per_s: float = float("nan")
    tx_total: int = 0
    window_s: float = 0.0
    rounds: int = 0
    cpu_bench_s: float = float("nan")
    cpu_service_s: float = float("nan")
    cpu_service_sys_s: float = float("nan")
    cpu_postgres_s: float = float("nan")
    cpu_machine_s: float = float("nan")
    cpu_other_s: float = float("nan")
    ack_p50: float = float("nan")
    ack_p99: float = float("nan")
    rss_before_kib: int = 0
    rss_open_kib: int = 0
    rss_closed_kib: int = 0
    fds_before: int = 0
    fds_open: int = 0
    fds_closed: int = 0
    bench_kib_per_client: float = float("nan")
    open_s: float = float("nan")
    cpu_service_open_s: float = float("nan")
    cpu_bench_open_s: float = float("nan")
    requests_per_s: float = float("nan")
    idle_tx: int = -1
    idle_s: float = 0.0
    users: int = 0
    resubscribes: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def tx_per_round(self) -> float:
        return self.tx_total / self.rounds if self.rounds else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def pair(a: float, b: float, digits: int = 1) -> str:
    return f"{fmt(a, digits)}/{fmt(b, digits)}"


def print_tables(rows: list[Row], cores: int, pg_version: str, processes: int) -> None:
    primary = [row for row in rows if row.mode == JOB_MODE]
    secondary = [row for row in rows if row.mode != JOB_MODE]
    print()
    print(f"fal-jobs fan-out benchmark ({cores} cores, Postgres {pg_version}); streams: "
          + "; ".join(f"{mode} = {STREAMS[mode]}" for mode in (JOB_MODE, BROADCAST_MODE, POLL_MODE)))
    print()
    print(f"PRIMARY ({JOB_MODE}): webhook sent -> `completed` at the one subscriber watching that job, "
          "S subscribers open on their own jobs")
    print(f"{'mode':<9} {'clients':>7} {'rounds':>6} {'p50 ms':>7} {'p99 ms':>7} {'wire p50/p99 ms':>15} "
          f"{'ack p50/p99 ms':>14} {'KiB/idle sub':>12} {'idle db tx/client':>17} {'db tx/round':>11} "
          f"{'cpu bench s':>11} {'cpu service s':>13} {'cpu other s':>11}")
    for row in primary:
        if row.error:
            print(f"{row.mode:<9} {row.clients:>7} FAILED: {row.error}")
            continue
        rounds = f"{row.rounds}" + ("" if row.deliveries == row.expected else f" ({row.deliveries}/{row.expected})")
        idle = fmt(row.idle_tx / row.clients, 4) if row.idle_tx >= 0 else "-"
        print(f"{row.mode:<9} {row.clients:>7} {rounds:>6} {fmt(row.app_p50, 2):>7} {fmt(row.app_p99, 2):>7} "
              f"{pair(row.wire_p50, row.wire_p99, 2):>15} {pair(row.ack_p50, row.ack_p99, 2):>14} "
              f"{fmt(row.kib_per_client):>12} {idle:>17} {fmt(row.tx_per_round):>11} "
              f"{fmt(row.cpu_bench_s, 2):>11} {fmt(row.cpu_service_s, 2):>13} {fmt(row.cpu_other_s, 2):>11}")
    print_verdict(primary, secondary, processes)
    print_notes(primary)

    if secondary:
        print()
        print(f"SECONDARY: {BROADCAST_MODE} (every event to all S subscribers of one user stream; grows with S by "
              f"nature) and {POLL_MODE} (the seed's way)")
        print(f"{'mode':<9} {'clients':>7} {'deliveries':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'last-client p50/p99 ms':>22} {'KiB/idle client':>15} {'db tx/s during window':>21} "
              f"{'cpu bench s':>11} {'cpu service s':>13} {'cpu other s':>11}")
        for row in secondary:
            if row.error:
                print(f"{row.mode:<9} {row.clients:>7} FAILED: {row.error}")
                continue
            last = pair(row.last_p50, row.last_p99) if row.mode == BROADCAST_MODE else "-"
            deliveries = f"{row.deliveries}" + ("" if row.deliveries == row.expected else f"/{row.expected}")
            print(f"{row.mode:<9} {row.clients:>7} {deliveries:>10} {fmt(row.app_p50):>8} {fmt(row.app_p99):>8} "
                  f"{last:>22} {fmt(row.kib_per_client):>15} {fmt(row.tx_per_s):>21} "
                  f"{fmt(row.cpu_bench_s, 2):>11} {fmt(row.cpu_service_s, 2):>13} {fmt(row.cpu_other_s, 2):>11}")
        if any(row.mode == BROADCAST_MODE for row in secondary):
            print(f"note ({BROADCAST_MODE}): run only for the --broadcast counts (default 10 and 1,000): at 10,000 one "
                  "round is 10,000 socket writes and 10,000 reads by this one-core load generator, which measures "
                  "the broadcast's nature (one write per subscriber) and the bench's own reading, not the product's "
                  "case; an earlier run took ~40 s of a capped phase for it, outside the time budget")
        print_notes(secondary)

    print()
    print("details (app clock = parsed by this process; wire = kernel receive timestamp, i.e. without this "
          "process's own queueing)")
    print(f"{'mode':<9} {'clients':>7} {'users':>5} {'rounds':>6} {'window s':>8} {'wire p50/p99 ms':>16} "
          f"{'wire last p50/p99':>17} {'ack p50/p99 ms':>14} {'db tx':>6} {'idle db tx':>10} "
          f"{'svc us/deliv':>12} {'bench us/deliv':>14} {'cpu s: svc sys/pg/other':>23} "
          f"{'svc RSS MiB before/open/closed':>30} {'svc fds before/open/closed':>26} {'bench KiB/client':>16} "
          f"{'open s (svc/bench cpu s)':>24}")
    for row in rows:
        if row.error:
            continue
        sse = row.mode != POLL_MODE and row.deliveries > 0
        per_delivery_service = row.cpu_service_s / row.deliveries * 1e6 if sse else float("nan")
        per_delivery_bench = row.cpu_bench_s / row.deliveries * 1e6 if sse else float("nan")
        idle = f"{row.idle_tx}/{row.idle_s:.0f}s" if row.idle_tx >= 0 else "-"
        cpu = f"{fmt(row.cpu_service_sys_s, 2)}/{fmt(row.cpu_postgres_s, 2)}/{fmt(row.cpu_other_s, 2)}"
        wire = pair(row.wire_p50, row.wire_p99, 2) if row.mode != POLL_MODE else "-"
        wire_last = pair(row.wire_last_p50, row.wire_last_p99) if row.mode == BROADCAST_MODE else "-"
        rss = (f"{row.rss_before_kib / 1024:.1f}/{row.rss_open_kib / 1024:.1f}/{row.rss_closed_kib / 1024:.1f}"
               if row.rss_before_kib else "-")
        fds = f"{row.fds_before}/{row.fds_open}/{row.fds_closed}" if row.fds_before else "-"
        opening = (f"{fmt(row.open_s)} ({fmt(row.cpu_service_open_s)}/{fmt(row.cpu_bench_open_s)})"
                   if row.open_s == row.open_s else "-")
        users = f"{row.users}" if row.users else "1"
        print(f"{row.mode:<9} {row.clients:>7} {users:>5} {row.rounds:>6} {fmt(row.window_s):>8} {wire:>16} "
              f"{wire_last:>17} {pair(row.ack_p50, row.ack_p99, 2):>14} {row.tx_total:>6} {idle:>10} "
              f"{fmt(per_delivery_service):>12} {fmt(per_delivery_bench):>14} {cpu:>23} {rss:>30} {fds:>26} "
              f"{fmt(row.bench_kib_per_client):>16} {opening:>24}")


def print_notes(rows: list[Row]) -> None:
    for row in rows:
        for note in row.notes:
            print(f"note ({row.mode} {row.clients}): {note}")


def print_verdict(primary: list[Row], secondary: list[Row], processes: int) -> None:
    done = sorted((row for row in primary if not row.error and row.deliveries), key=lambda r: r.clients)
    print()
    print(TARGETS)
    if not done:
        print(f"  no {JOB_MODE} step finished: nothing to evaluate")
        return
    small, large = done[0], done[-1]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"evaluated on the PRIMARY rows ({JOB_MODE}), at the largest step ({large.clients} subscribers) unless "
          "said otherwise:")
    print(f"  p50 <= 3 ms: {large.app_p50:.2f} ms (wire {large.wire_p50:.2f} ms) -> {verdict(large.app_p50 <= 3)}")
    print(f"  p99 <= 10 ms: {large.app_p99:.2f} ms (wire {large.wire_p99:.2f} ms) -> {verdict(large.app_p99 <= 10)}")
    if large is not small:
        ratio = large.app_p99 / small.app_p99
        wire_ratio = large.wire_p99 / small.wire_p99
        print(f"  p99({large.clients}) <= 2 x p99({small.clients}): {large.app_p99:.2f} / {small.app_p99:.2f} ms "
              f"= {ratio:.2f}x (wire {wire_ratio:.2f}x) -> {verdict(ratio <= 2)}")
    else:
        print("  p99(largest) <= 2 x p99(smallest): only one step ran -> not evaluated")
    per_step = ", ".join(f"{fmt(row.kib_per_client)} at {row.clients}" for row in done)
    print(f"  <= 24 KiB per idle subscriber: {large.kib_per_client:.1f} KiB ({per_step}) -> "
          f"{verdict(large.kib_per_client <= 24)}")
    idle = ", ".join(f"{row.idle_tx} tx / {row.clients} clients at {row.clients}" for row in done)
    # What a process does while its clients wait, whatever their number: one credential check per
    # CREDENTIAL_CHECK_S (revoked keys close their streams) and the listener's idle read.
    processes = max(1, processes)
    allowance = processes * (math.ceil(large.idle_s / CREDENTIAL_CHECK_S) + 1)
    waiting_ok = all(row.idle_tx <= allowance for row in done)
    print(f"  0 db queries per waiting client: {large.idle_s:.0f} s idle with every stream open: {idle} "
          f"(per process, not per client: <= {allowance} = {processes} process(es) x (one credential check per "
          f"{CREDENTIAL_CHECK_S:.0f} s + the listener's idle read)) -> {verdict(waiting_ok)}")
    per_round = ", ".join(f"{fmt(row.tx_per_round)} at {row.clients}" for row in done if row.rounds)
    broadcast = ", ".join(f"{fmt(row.tx_per_round)} at {row.clients}" for row in secondary
                          if row.mode == BROADCAST_MODE and not row.error and row.rounds)
    print(f"  (not a target) db tx per round, {JOB_MODE} = one webhook + one stream re-open: {per_round}; "
          f"per webhook alone ({BROADCAST_MODE} rows): {broadcast or '-'}")


# ---- the steps ------------------------------------------------------------------------------


@dataclass
class Context:
    server_dsn: str
    dsn: str
    database: str
    counter: XactCounter
    emulator: FalEmulator
    fal_key: str
    log_dir: Path
    deadline: float
    args: argparse.Namespace
    token_secret: str
    tokens: StreamTokens

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


async def serve(ctx: Context, name: str, *, profile: bool = False) -> Service:
    """The service for one step, with a stream-token secret the bench shares (it mints job tokens)."""
    return await start_service(ctx.dsn, ctx.emulator, ctx.fal_key, ctx.log_dir / f"service-{name}.log",
                               processes=ctx.args.processes, profile_path=ctx.args.profile_service if profile else None,
                               # Every subscriber of a user shares its key: the per-credential stream limit
                               # (MAX_STREAMS_PER_USER, 50 by default) would refuse the bench's 100 per user.
                               extra_env={"SSE_HEARTBEAT_S": "15", "STREAM_TOKEN_SECRET": ctx.token_secret,
                                          "MAX_STREAMS_PER_USER": "1000000"})


async def stream_token(service: Service, user: NewUser, request_id: str | None = None) -> str:
    body: dict[str, str] = {"scope": "user"} if request_id is None else {"scope": "job", "request_id": request_id}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{service.url}/api/stream-tokens", json=body,
                                     headers={"Authorization": f"Bearer {user.api_key}"})
        if response.status_code != 201:
            raise BenchFailure(f"POST /api/stream-tokens answered {response.status_code}: {response.text[:300]}")
        return response.json()["token"]


async def warm_up(ctx: Context, service: Service, user: NewUser, sender: WebhookSender, *, job_streams: bool) -> None:
    """The first webhook fetches the JWKS; the first streams and poll warm Litestar's lazy paths.
    With `job_streams`, each warm job also gets a job stream, with a token from POST /api/stream-tokens."""
    warm_ids = await create_jobs(ctx.dsn, user.user_id, 2)
    token = await stream_token(service, user)
    streams: list[tuple[str, str | None]] = [(f"/api/events?token={token}", None)] * 20
    if job_streams:
        for request_id in warm_ids:
            streams.append((f"/api/jobs/{request_id}/events?token={await stream_token(service, user, request_id)}",
                            request_id))
    hub = SseHub()
    clients = await open_subscribers(hub, service.port, streams, len(streams))
    try:
        loop = asyncio.get_running_loop()
        for request_id in warm_ids:
            watchers = sum(1 for _, watched in streams if watched in (None, request_id))
            hub.rounds[request_id] = round_ = Round(request_id, watchers, loop.create_future())
            await sender.send(sender.prepare(request_id), lambda s, n, r=round_: _stamp(r, s, n))
            await asyncio.wait_for(round_.done, ROUND_TIMEOUT_S)
        if hub.failed:
            raise BenchFailure(f"warm-up: {hub.failed[0]}")
    finally:
        close_subscribers(clients)
    async with httpx.AsyncClient(timeout=10) as client:
        for request_id in warm_ids:
            response = await client.get(f"{service.url}/api/jobs/{request_id}",
                                        headers={"Authorization": f"Bearer {user.api_key}"})
            if response.status_code != 200 or response.json()["status"] != "completed":
                raise BenchFailure(f"warm-up job not completed: {response.status_code} {response.text[:200]}")
    sender.acks_ms.clear()


def _stamp(round_: Round, sent: float, sent_ns: int) -> None:
    round_.sent = sent
    round_.sent_ns = sent_ns


def _check_hub(hub: SseHub, row: Row) -> None:
    if hub.no_timestamp:
        row.notes.append(f"{hub.no_timestamp} reads without a kernel timestamp")
    if hub.unexpected or hub.other_events or hub.ended or hub.failed:
        row.notes.append(f"unexpected completed events {hub.unexpected}, other job events {hub.other_events}, "
                         f"streams ended by the service {hub.ended}, failures {len(hub.failed)}")
    if hub.heartbeats:
        row.notes.append(f"{hub.heartbeats} heartbeats received during the step (SSE_HEARTBEAT_S=15: the streams take "
                         "turns, a slice of them every ~60 ms)")


def _note_idle_activity(row: Row, seen: list[str]) -> None:
    if seen:
        row.notes.append(f"idle window: {row.idle_tx} db tx; pg_stat_activity showed in the bench database: "
                         + "; ".join(seen[:5]) + (f" (+{len(seen) - 5} more)" if len(seen) > 5 else ""))
    elif row.idle_tx:
        row.notes.append(f"idle window: {row.idle_tx} db tx, and pg_stat_activity caught no backend at work "
                         "(sampled every 100 ms)")


def _latency_stats(row: Row, rounds: list[Round], sender: WebhookSender) -> None:
    row.rounds = len(rounds)
    row.expected = sum(r.expected for r in rounds)
    app = sorted(v for r in rounds for v in r.app_ms)
    wire = sorted(v for r in rounds for v in r.wire_ms)
    row.deliveries = len(app)
    row.app_p50, row.app_p99 = percentile(app, 50), percentile(app, 99)
    row.wire_p50, row.wire_p99 = percentile(wire, 50), percentile(wire, 99)
    last = sorted(max(r.app_ms) for r in rounds if r.app_ms)
    row.last_p50, row.last_p99 = percentile(last, 50), percentile(last, 99)
    wire_last = sorted(max(r.wire_ms) for r in rounds if r.wire_ms)
    row.wire_last_p50, row.wire_last_p99 = percentile(wire_last, 50), percentile(wire_last, 99)
    acks = sorted(sender.acks_ms)
    row.ack_p50, row.ack_p99 = percentile(acks, 50), percentile(acks, 99)
    if wire and wire[0] < 0:
        row.notes.append(f"{sum(1 for v in wire if v < 0)} wire timestamps before the send (clock steps?)")
    if app:
        row.notes.append(f"latency max {app[-1]:.2f} ms (wire {wire[-1] if wire else float('nan'):.2f} ms) over "
                         f"{len(app)} deliveries (p99 is nearest-rank)")
    slowest = sorted(((max(r.app_ms), i) for i, r in enumerate(rounds, 1) if r.app_ms), reverse=True)[:5]
    if slowest:
        row.notes.append("slowest rounds (last delivery, app ms): "
                         + ", ".join(f"#{i} {ms:.1f}" for ms, i in slowest))


async def job_step(ctx: Context, subscribers: int, profile: bool) -> Row:
    """The primary measurement: S subscribers on their own jobs' streams; each round completes one
    random watched job, and its subscriber is replaced by one on a spare pending job."""
    args = ctx.args
    row = Row(JOB_MODE, subscribers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"job-{subscribers}", profile=profile)
    sender = WebhookSender(ctx.emulator, service.port)
    clients: dict[str, SseClient] = {}
    try:
        per_user = args.subscribers_per_user
        users = await new_users(ctx.dsn, f"fanout-job-{subscribers}", -(-subscribers // per_user))
        row.users = len(users)
        await warm_up(ctx, service, users[0], sender, job_streams=True)
        total = subscribers + args.webhooks  # W spare jobs: one replacement subscriber per round
        owners = [users[(i % subscribers) // per_user] for i in range(total)]
        log(f"{JOB_MODE} {subscribers}: creating {total} pending jobs for {len(users)} users")
        request_ids = await create_owned_jobs(ctx.dsn, [owner.user_id for owner in owners])
        # Minted here, as POST /api/stream-tokens would for the owner's API key (same secret, same
        # StreamTokens code; the token names the key, which the service checks at open).
        callers = {owner.user_id: Caller(user_id=owner.user_id, credential=KEY + hash_key(owner.api_key)) for owner in users}
        streams = {request_id: (f"/api/jobs/{request_id}/events?token="
                                f"{ctx.tokens.issue(callers[owner.user_id], job_scope(request_id))[0]}", request_id)
                   for request_id, owner in zip(request_ids, owners, strict=True)}
        watched, spare = request_ids[:subscribers], request_ids[subscribers:]
        await asyncio.sleep(1.0 + total / 5000)  # the listener publishes the pending events before anyone subscribes
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()

        hub = SseHub()
        log(f"{JOB_MODE} {subscribers}: opening {subscribers} job streams ({args.batch} at a time)")
        opened_at, service_cpu0, bench_cpu0 = time.perf_counter(), service.cpu_s(), time.process_time()
        opened = await open_subscribers(hub, service.port, [streams[r] for r in watched], args.batch)
        clients = dict(zip(watched, opened, strict=True))
        row.open_s = time.perf_counter() - opened_at
        row.cpu_service_open_s = service.cpu_s() - service_cpu0
        row.cpu_bench_open_s = time.process_time() - bench_cpu0
        quiet_since = time.monotonic()  # each open reads the database: the last work before the idle window
        await asyncio.sleep(args.settle)
        service.check_alive()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.kib_per_client = (row.rss_open_kib - row.rss_before_kib) / subscribers
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / subscribers
        # Idle window: nothing happens but S open streams, once every backend flushed its counts.
        await asyncio.sleep(max(0.0, quiet_since + STATS_QUIET_S - time.monotonic()))
        row.idle_tx, seen = await ctx.counter.idle_window(args.idle_s)
        row.idle_s = args.idle_s
        _note_idle_activity(row, seen)
        closed = sum(1 for client in clients.values() if not client.open)
        if hub.failed or closed:
            raise BenchFailure(f"{closed} job streams closed while idle; {hub.failed[:1]}")
        log(f"{JOB_MODE} {subscribers}: open in {row.open_s:.1f} s; service RSS "
            f"{row.rss_before_kib / 1024:.1f} -> {row.rss_open_kib / 1024:.1f} MiB; idle db tx {row.idle_tx}")

        # The latency phase: one webhook at a time, each for a different random watched job. The
        # bench's S client objects are frozen out of its own garbage collector, whose full passes
        # would otherwise stall the reading of a round's one socket (the wire clock is immune anyway).
        budget = max(5.0, min(args.max_phase_s, ctx.remaining() - 60))
        gc.collect()
        gc.freeze()
        await sender.fresh()
        if profile and service.profiling:
            service.process.send_signal(signal.SIGUSR1)
        tx0 = await ctx.counter.read()
        heartbeats0 = hub.heartbeats
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        rounds: list[Round] = []
        open_ids = list(watched)
        resubscribe_ms: list[float] = []
        for _ in range(args.webhooks):
            if time.perf_counter() - start > budget:
                row.notes.append(f"latency phase capped at {budget:.0f} s: {len(rounds)} of {args.webhooks} "
                                 "webhooks sent (--max-phase-s)")
                break
            index = random.randrange(len(open_ids))
            request_id = open_ids[index]
            open_ids[index] = open_ids[-1]
            open_ids.pop()
            request = sender.prepare(request_id)  # signed before the clock starts
            round_ = Round(request_id, 1, loop.create_future())
            hub.rounds[request_id] = round_
            rounds.append(round_)
            await sender.send(request, lambda s, n, r=round_: _stamp(r, s, n))
            try:
                await asyncio.wait_for(asyncio.shield(round_.done), ROUND_TIMEOUT_S)
            except TimeoutError:
                row.notes.append(f"round {len(rounds)}: no `completed` within {ROUND_TIMEOUT_S:.0f} s")
                break
            if hub.failed:
                raise BenchFailure(hub.failed[0])
            finished = clients.pop(request_id)
            finished.close()  # normally closed already, right after its terminal event
            # Keep S open: a new subscriber on a spare pending job, ready before the next round.
            replacement = spare.pop()
            reopen_at = time.perf_counter()
            [clients[replacement]] = await open_subscribers(hub, service.port, [streams[replacement]], 1)
            resubscribe_ms.append((time.perf_counter() - reopen_at) * 1000)
            open_ids.append(replacement)
            row.resubscribes += 1
            await asyncio.sleep(args.gap_ms / 1000)
        row.window_s = time.perf_counter() - start
        phase_end = time.monotonic()
        meter.stop(row, await ctx.counter.backend_pids())
        gc.unfreeze()
        if profile and service.profiling:
            service.process.send_signal(signal.SIGUSR2)
        row.notes.append(f"heartbeats received during the latency phase: {hub.heartbeats - heartbeats0} "
                         "(each stream one per SSE_HEARTBEAT_S, the streams taking turns by slice)")
        _latency_stats(row, rounds, sender)
        still_open = sum(1 for client in clients.values() if client.open)
        if still_open != subscribers:
            row.notes.append(f"{still_open} of {subscribers} subscribers open at the end of the phase")
        _check_hub(hub, row)
        if resubscribe_ms:
            resubscribe_ms.sort()
            row.notes.append(f"re-subscribe (connect -> snapshot) between rounds: p50 "
                             f"{percentile(resubscribe_ms, 50):.1f} ms, p99 {percentile(resubscribe_ms, 99):.1f} ms")
        log(f"{JOB_MODE} {subscribers}: {row.rounds} rounds in {row.window_s:.1f} s, p50 {row.app_p50:.2f} ms "
            f"(wire {row.wire_p50:.2f}), p99 {row.app_p99:.2f} ms (wire {row.wire_p99:.2f})")

        sender.close()
        close_subscribers(clients.values())
        clients = {}
        deadline = time.monotonic() + 20
        while service.open_fds() > row.fds_before + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.settle)
        row.rss_closed_kib, row.fds_closed = service.rss_kib(), service.open_fds()
        service.check_alive()
        await asyncio.sleep(max(0.0, phase_end + STATS_QUIET_S - time.monotonic()))
        row.tx_total = await ctx.counter.read() - tx0
        row.tx_per_s = row.tx_total / row.window_s
        if row.rounds:
            row.notes.append(f"db tx per round {row.tx_per_round:.1f} (one webhook + one stream re-open; "
                             f"{row.tx_total} over {row.window_s:.1f} s)")
    finally:
        gc.unfreeze()
        close_subscribers(clients.values())
        sender.close()
        await service.stop()
    if profile and args.profile_service:
        print_profile(args.profile_service)
    return row


async def broadcast_step(ctx: Context, subscribers: int) -> Row:
    """Secondary: S subscribers on one user's stream, every event delivered to all S."""
    args = ctx.args
    row = Row(BROADCAST_MODE, subscribers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"broadcast-{subscribers}")
    sender = WebhookSender(ctx.emulator, service.port)
    clients: list[SseClient] = []
    try:
        user = await new_user(ctx.dsn, f"fanout-broadcast-{subscribers}")
        await warm_up(ctx, service, user, sender, job_streams=False)
        token = await stream_token(service, user)
        path = f"/api/events?token={token}"
        request_ids = await create_jobs(ctx.dsn, user.user_id, args.webhooks)
        await asyncio.sleep(1.0)  # the listener publishes the pending events before anyone subscribes
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()

        hub = SseHub()
        log(f"{BROADCAST_MODE} {subscribers}: opening {subscribers} subscribers ({args.batch} at a time)")
        opened_at, service_cpu0, bench_cpu0 = time.perf_counter(), service.cpu_s(), time.process_time()
        clients = await open_subscribers(hub, service.port, [(path, None)] * subscribers, args.batch)
        quiet_since = time.monotonic()  # each open checks its token's credential: the last database work
        row.open_s = time.perf_counter() - opened_at
        row.cpu_service_open_s = service.cpu_s() - service_cpu0
        row.cpu_bench_open_s = time.process_time() - bench_cpu0
        await asyncio.sleep(args.settle)
        service.check_alive()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.kib_per_client = (row.rss_open_kib - row.rss_before_kib) / subscribers
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / subscribers
        # Idle window: nothing happens but S open streams. It starts once every backend had the time
        # to flush the counts of the set-up and the opens above, so it is exact.
        await asyncio.sleep(max(0.0, quiet_since + STATS_QUIET_S - time.monotonic()))
        row.idle_tx, seen = await ctx.counter.idle_window(args.idle_s)
        row.idle_s = args.idle_s
        _note_idle_activity(row, seen)
        log(f"{BROADCAST_MODE} {subscribers}: open in {row.open_s:.1f} s; service RSS "
            f"{row.rss_before_kib / 1024:.1f} -> {row.rss_open_kib / 1024:.1f} MiB")

        # The latency phase: one webhook at a time.
        budget = max(5.0, min(args.max_phase_s, ctx.remaining() - 60))
        await sender.fresh()
        tx0 = await ctx.counter.read()
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        rounds: list[Round] = []
        for request_id in request_ids:
            if time.perf_counter() - start > budget:
                row.notes.append(f"latency phase capped at {budget:.0f} s: {len(rounds)} of {len(request_ids)} "
                                 "webhooks sent (--max-phase-s)")
                break
            request = sender.prepare(request_id)  # signed before the clock starts
            round_ = Round(request_id, len(clients), loop.create_future())
            hub.rounds[request_id] = round_
            rounds.append(round_)
            await sender.send(request, lambda s, n, r=round_: _stamp(r, s, n))
            try:
                await asyncio.wait_for(asyncio.shield(round_.done), ROUND_TIMEOUT_S)
            except TimeoutError:
                row.notes.append(f"round {len(rounds)}: {len(round_.app_ms)} of {round_.expected} deliveries "
                                 f"within {ROUND_TIMEOUT_S:.0f} s")
                break
            if hub.failed:
                raise BenchFailure(hub.failed[0])
            await asyncio.sleep(args.gap_ms / 1000)
        row.window_s = time.perf_counter() - start
        phase_end = time.monotonic()
        meter.stop(row, await ctx.counter.backend_pids())
        _latency_stats(row, rounds, sender)
        _check_hub(hub, row)
        log(f"{BROADCAST_MODE} {subscribers}: {row.rounds} rounds in {row.window_s:.1f} s, p50 {row.app_p50:.2f} ms "
            f"(wire {row.wire_p50:.2f}), last-client p50 {row.last_p50:.1f} ms")

        # Close everything; the service must release its side.
        sender.close()
        close_subscribers(clients)
        clients = []
        deadline = time.monotonic() + 20
        while service.open_fds() > row.fds_before + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.settle)
        row.rss_closed_kib, row.fds_closed = service.rss_kib(), service.open_fds()
        service.check_alive()
        # Nothing touched the database since the phase ended: once the backends flushed, the
        # counter holds exactly the phase's transactions.
        await asyncio.sleep(max(0.0, phase_end + STATS_QUIET_S - time.monotonic()))
        row.tx_total = await ctx.counter.read() - tx0
        row.tx_per_s = row.tx_total / row.window_s
        if row.rounds:
            row.notes.append(f"db tx per webhook {row.tx_per_round:.1f} "
                             f"(= {row.tx_per_s:.1f} tx/s over {row.window_s:.1f} s with {subscribers} waiting clients)")
    finally:
        close_subscribers(clients)
        sender.close()
        await service.stop()
    return row


async def poll_step(ctx: Context, pollers: int) -> Row:
    args = ctx.args
    row = Row(POLL_MODE, pollers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"poll-{pollers}")
    sender = WebhookSender(ctx.emulator, service.port)
    connections: list[Poller] = []
    try:
        user = await new_user(ctx.dsn, f"fanout-poll-{pollers}")
        await warm_up(ctx, service, user, sender, job_streams=False)
        window = args.poll_window_s
        webhook_count = max(1, int((window - 1.0 - POLL_INTERVAL_S - 0.5) // POLL_WEBHOOK_EVERY_S) + 1)
        request_ids = await create_jobs(ctx.dsn, user.user_id, webhook_count)
        state = PollState(request_ids)
        suffix = (f" HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nAuthorization: Bearer {user.api_key}\r\n"
                  "Accept: application/json\r\n\r\n").encode()
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()
        log(f"poll {pollers}: opening {pollers} keep-alive connections")
        opened_at = time.perf_counter()
        for start in range(0, pollers, args.batch):
            size = min(args.batch, pollers - start)
            connections.extend(await asyncio.gather(
                *(connect(lambda: Poller(state, suffix, loop), service.port) for _ in range(size))))
        row.open_s = time.perf_counter() - opened_at
        # Random phases over one interval, starting now: the load ramps to its steady rate within 2 s.
        now = loop.time()
        for connection in connections:
            connection.start(now + random.uniform(0, POLL_INTERVAL_S))
        await asyncio.sleep(POLL_INTERVAL_S + 0.5)
        await sender.fresh()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / pollers
        responses0 = state.responses
        requests0 = len(state.request_ms)
        tx0 = await ctx.counter.read()
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        for index, request_id in enumerate(request_ids):
            due = start + 1.0 + index * POLL_WEBHOOK_EVERY_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            request = sender.prepare(request_id)
            await sender.send(request, lambda s, n, i=index: state.sent.__setitem__(i, s))
            service.check_alive()
        await asyncio.sleep(max(0.0, start + window - time.perf_counter()))
        row.window_s = time.perf_counter() - start
        meter.stop(row, await ctx.counter.backend_pids())
        tx1 = await ctx.counter.read()
        responses = state.responses - responses0
        state.stopped = True
        row.rounds = webhook_count
        row.tx_total = tx1 - tx0
        row.tx_per_s = row.tx_total / row.window_s
        row.requests_per_s = responses / row.window_s
        latencies = sorted(v for per_job in state.latencies_ms for v in per_job)
        row.deliveries = len(latencies)
        row.expected = webhook_count * pollers
        row.app_p50, row.app_p99 = percentile(latencies, 50), percentile(latencies, 99)
        acks = sorted(sender.acks_ms)
        row.ack_p50, row.ack_p99 = percentile(acks, 50), percentile(acks, 99)
        mean = sum(latencies) / len(latencies) if latencies else float("nan")
        row.notes.append(f"{row.requests_per_s:.0f} polls/s answered (asked: {pollers / POLL_INTERVAL_S:.0f}/s); "
                         f"{row.tx_total / max(1, responses):.2f} db tx per poll; mean latency {mean:.0f} ms; "
                         f"{webhook_count} webhooks, one per {POLL_WEBHOOK_EVERY_S} s")
        request_ms = sorted(state.request_ms[requests0:])
        row.notes.append(f"one poll (GET -> 200) took p50 {percentile(request_ms, 50):.1f} ms, "
                         f"p99 {percentile(request_ms, 99):.1f} ms, max {request_ms[-1] if request_ms else 0:.0f} ms")
        if state.errors:
            row.notes.append(f"{len(state.errors)} poll errors, first: {state.errors[0]}")
        if state.before_webhook:
            row.notes.append(f"{state.before_webhook} completions seen before their webhook was sent (a bench bug)")
        log(f"poll {pollers}: p50 {row.app_p50:.0f} ms, {row.tx_per_s:.0f} db tx/s, "
            f"{row.requests_per_s:.0f} polls/s; webhook acks ms {[round(v, 1) for v in sender.acks_ms]}; "
            f"per-webhook max latency ms {[round(max(v)) if v else None for v in state.latencies_ms]}")
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        connections = []
        await asyncio.sleep(args.settle)
        row.rss_closed_kib, row.fds_closed = service.rss_kib(), service.open_fds()
        service.check_alive()
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        sender.close()
        await service.stop()
    return row


def print_profile(path: str) -> None:
    import pstats

    with contextlib.suppress(OSError):
        print(f"\nservice profile of the largest SSE step's latency phase ({path}), by own time:", file=sys.stderr)
        stats = pstats.Stats(path, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)


# ---- main -----------------------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return values


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    quiet_logging()
    limits = raise_nofile()
    needed = max([*args.subscribers, *args.broadcast, *args.pollers, 0]) + 200
    if limits[0] != resource.RLIM_INFINITY and limits[0] < needed:
        raise BenchFailure(f"RLIMIT_NOFILE is {limits[0]} (hard {limits[1]}); {needed} needed")
    log(f"RLIMIT_NOFILE {limits[0]} (inherited by the service)")

    server_dsn, pgserver_handle = open_server(args.database_url)
    database = f"fal_jobs_fanout_{uuid.uuid4().hex[:12]}"
    rows: list[Row] = []
    pg_version = "?"
    created = False
    emulator: Emulator | None = None
    admin: asyncpg.Connection | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="fal-jobs-fanout-"))
    try:
        await admin_execute(server_dsn, f'CREATE DATABASE "{database}"')
        created = True
        dsn = with_database(server_dsn, database)
        log(f"database {database}: applying migrations")
        await asyncio.to_thread(apply_migrations, dsn)
        admin = await asyncpg.connect(server_dsn)
        pg_version = str(await admin.fetchval("SHOW server_version")).split()[0]
        fal_key = "bench-fal-key:" + uuid.uuid4().hex
        emulator = await start_emulator(fal_key)
        token_secret = secrets.token_urlsafe(32)
        ctx = Context(server_dsn, dsn, database, XactCounter(admin, database), emulator.emulator, fal_key,
                      log_dir, started + args.max_seconds, args, token_secret, StreamTokens(token_secret, ttl_s=3600))
        largest = max(args.subscribers) if args.subscribers else 0
        # Run order = priority (the secondary broadcast last, so that the budget never skips the
        # seed's way); printed: primary, then broadcast, then poll.
        steps: list[tuple[str, int, float, Any]] = [
            *((JOB_MODE, count, 60.0, lambda c: job_step(ctx, c, profile=bool(args.profile_service) and c == largest))
              for count in args.subscribers),
            *((POLL_MODE, count, args.poll_window_s + 20, lambda c: poll_step(ctx, c)) for count in args.pollers),
            *((BROADCAST_MODE, count, 60.0, lambda c: broadcast_step(ctx, c)) for count in args.broadcast),
        ]
        for mode, count, needs_s, step in steps:
            if ctx.remaining() < needs_s:
                rows.append(Row(mode, count, error="skipped: --max-seconds reached"))
                continue
            try:
                rows.append(await step(count))
            except (BenchFailure, OSError, TimeoutError, ConnectionError) as error:
                log(f"{mode} {count} failed: {error!r}")
                rows.append(Row(mode, count, error=f"{type(error).__name__}: {str(error)[:300]}"))
    finally:
        if emulator is not None:
            await emulator.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if created:
            try:
                await admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                log(f"database {database} dropped")
            except Exception as error:  # noqa: BLE001 - reported, never hidden
                log(f"could not drop database {database}: {error!r}")
        if pgserver_handle is not None:
            with contextlib.suppress(Exception):
                pgserver_handle.cleanup()
    order = {JOB_MODE: 0, BROADCAST_MODE: 1, POLL_MODE: 2}
    print_tables(sorted(rows, key=lambda row: order[row.mode]), os.cpu_count() or 0, pg_version, args.processes)
    print(f"\ntotal {time.monotonic() - started:.0f} s; service logs in {log_dir}")
    return 1 if any(row.error for row in rows) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=parse_counts, default=parse_counts("10,1000,10000"),
                        help="primary: job-stream subscriber counts, comma-separated (default 10,1000,10000)")
    parser.add_argument("--broadcast", type=parse_counts, default=parse_counts("10,1000"),
                        help="secondary: user-stream broadcast subscriber counts (default 10,1000)")
    parser.add_argument("--subscribers-per-user", type=int, default=100,
                        help="job-stream subscribers per user in the primary steps (default 100)")
    parser.add_argument("--webhooks", type=int, default=200, help="webhooks (rounds) per SSE step (default 200)")
    parser.add_argument("--pollers", type=parse_counts, default=parse_counts("10,1000"),
                        help="polling client counts, comma-separated (default 10,1000)")
    parser.add_argument("--poll-window-s", type=float, default=20.0, help="poll measurement window (default 20)")
    parser.add_argument("--database-url", default=None, help="a Postgres server (default DATABASE_URL, else embedded)")
    parser.add_argument("--gap-ms", type=float, default=15.0,
                        help="pause after each round's last delivery (and re-subscribe) (default 15)")
    parser.add_argument("--batch", type=int, default=OPEN_BATCH, help="connections opened at a time (default 500)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to settle before reading RSS (default 1)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="idle window with every subscriber open, for db tx per waiting client (default 5)")
    parser.add_argument("--max-phase-s", type=float, default=40.0,
                        help="cap on one SSE latency phase; fewer webhooks are sent when reached (default 40)")
    parser.add_argument("--max-seconds", type=float, default=360.0,
                        help="overall budget; later steps are skipped past it (default 360)")
    parser.add_argument("--profile-service", metavar="FILE", default=None,
                        help="cProfile the service during the largest job-stream step's latency phase (slows it down)")
    add_processes_argument(parser)
    args = parser.parse_args()
    if args.webhooks <= 0 or args.batch <= 0 or args.subscribers_per_user <= 0:
        parser.error("--webhooks, --batch and --subscribers-per-user must be positive")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(args))
    except BenchFailure as failure:
        print(f"fanout: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fanout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
