"""Webhook intake benchmark: fal's signed "OK" webhooks against the service, next to the raw
database floor for the same work, with and without the NOTIFY trigger.

    python bench/webhooks.py [--n 3000] [--concurrency 16] [--database-url URL]
                             [--warmup 200] [--client httpx|raw] [--profile-service FILE]

Postgres is --database-url, else DATABASE_URL, else an embedded pgserver in a temporary folder.
The bench creates a database `fal_jobs_bench_<random>` there, applies the migrations, and drops
it at the end (also on errors). Everything talks to 127.0.0.1 (or a local socket) only.

Phases, all on the same database:
  1. the service (`python -m service run`, a separate process) receives N signed webhooks, one per
     pending job, `--concurrency` in flight over keep-alive connections; ACK latency is send ->
     response. Afterwards every job must be `completed`, version 2, with exactly 2 events.
  2. the raw floor: per job one transaction UPDATE fal_jobs + INSERT fal_job_events with plain
     asyncpg and C connections (C = 4, 8, 16).
  3. the service's own intake code (WebhookIntake.receive, the same SQL and Python as the route)
     without HTTP or signature checking, on a pool of 10 like the service's: it splits the gap
     between (1) and (2) into "database path" and "HTTP + verification".
  4. (1) and (2) again with the `fal_job_events_notify` trigger disabled (re-enabled afterwards).

The service logs at WARNING, so the per-request log line is not in its CPU; the environment
variable BENCH_SERVICE_LOG_LEVEL=INFO runs it at the production level (one JSON line per request).

--profile-service FILE runs the service under cProfile, switched on only for phase 1 (SIGUSR1 /
SIGUSR2), writes the stats to FILE and prints the top entries. Profiling slows the service down:
its numbers are then not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import msgspec  # noqa: E402

from bench.harness import (  # noqa: E402
    BenchFailure,
    Emulator,
    Service,
    add_processes_argument,
    admin_execute,
    open_server,
    percentile,
    proc_cpu_s,
    start_emulator,
    start_service,
    with_database,
)
from service.db.migrations import apply_migrations  # noqa: E402
from service.db.pool import create_pool  # noqa: E402
from service.emulator import FalEmulator  # noqa: E402
from service.emulator.signing import signed_headers  # noqa: E402
from service.usecases.receive_webhook import FalWebhook, WebhookIntake  # noqa: E402
from service.jobs.models import Job  # noqa: E402

WEBHOOK_PATH = "/api/webhooks/fal"
TRIGGER = "fal_job_events_notify"
MODEL_ID = "fal-ai/flux/dev"
JOB_INPUT = {"prompt": "a lighthouse at dusk, bench", "image_size": "landscape_4_3"}
# No media URL: this measures the webhook's intake. A URL would add an output row and, for a host
# outside MEDIA_HOSTS, a "failed" output event per job: the copy path has bench/outputs.py.
PAYLOAD = {
    "images": [{"width": 1024, "height": 768, "content_type": "image/png"}],
    "seed": 196619188014358660,
}
RAW_CONCURRENCIES = (4, 8, 16)
SERVICE_POOL_SIZE = 10  # service.db.pool.create_pool's default max_size, which the service uses
PHASE_TIMEOUT_S = 150.0  # no single measured phase may take longer



# ---- small helpers --------------------------------------------------------------------------


def postgres_cpu_s(pids: Sequence[int]) -> float | None:
    """CPU of the given Postgres processes (None when /proc does not show them: a remote server)."""
    if not pids or not any(os.path.exists(f"/proc/{pid}") for pid in pids):
        return None
    return sum(proc_cpu_s(pid) for pid in pids)


async def postgres_pids(pool: asyncpg.Pool) -> list[int]:
    """This database's backends and the server's background processes (WAL writer, checkpointer, ...);
    not other databases' backends, so that a neighbour's tests on the same server do not count."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR backend_type <> 'client backend'"
    )
    return [row["pid"] for row in rows]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def self_cpu_s() -> float:
    return time.process_time()


@dataclass
class CpuSnapshot:
    bench: float
    service: float
    postgres: float | None
    busy: int
    total: int
    wall: float

    @classmethod
    def take(cls, service: Service | None, pg_pids: Sequence[int]) -> CpuSnapshot:
        busy, total = machine_jiffies()
        return cls(
            bench=self_cpu_s(),
            service=service.cpu_s() if service else 0.0,
            postgres=postgres_cpu_s(pg_pids),
            busy=busy,
            total=total,
            wall=time.perf_counter(),
        )


@dataclass
class CpuUse:
    bench: float
    service: float
    postgres: float | None
    wall: float
    machine_busy_cores: float

    @property
    def others(self) -> float:
        """CPU seconds the rest of the machine used meanwhile (noise from other processes)."""
        return self.machine_busy_cores * self.wall - self.bench - self.service - (self.postgres or 0.0)

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot, ncpu: int) -> CpuUse:
        pg = None if a.postgres is None or b.postgres is None else b.postgres - a.postgres
        share = (b.busy - a.busy) / max(1, b.total - a.total)
        return cls(bench=b.bench - a.bench, service=b.service - a.service, postgres=pg,
                   wall=b.wall - a.wall, machine_busy_cores=share * ncpu)


@dataclass
class Result:
    label: str
    trigger: str
    count: int
    wall_s: float
    latencies_s: list[float]
    cpu: CpuUse | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_s), 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.latencies_s), 99) * 1000


# ---- the database ---------------------------------------------------------------------------


@dataclass
class Database:
    server_dsn: str
    dsn: str
    name: str
    embedded: Any = None  # the pgserver handle, when we started one


@dataclass
class JobBlock:
    """Pending jobs made for one phase."""

    request_ids: list[str]
    user_id: str
    created_at: datetime


async def create_jobs(pool: asyncpg.Pool, sizes: dict[str, int]) -> dict[str, JobBlock]:
    """Bulk-create pending jobs (version 1) and their first events, as create_job would."""
    blocks: dict[str, JobBlock] = {}
    job_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    now = datetime.now(UTC)
    for name, size in sizes.items():
        user_id = str(uuid.uuid4())
        ids = [str(uuid.uuid4()) for _ in range(size)]
        blocks[name] = JobBlock(ids, user_id, now)
        for request_id in ids:
            job = Job(request_id=request_id, user_id=user_id, model_id=MODEL_ID, type="image", input=JOB_INPUT,
                      status="pending", queue_position=None, logs=None, result=None, error=None, error_type=None,
                      mode="webhook", version=1, created_at=now, updated_at=now, completed_at=None)
            job_rows.append((request_id, user_id, MODEL_ID, "image", JOB_INPUT, "webhook", now))
            event_rows.append((request_id, user_id, job, now))
    async with pool.acquire() as connection, connection.transaction():
        await connection.executemany("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", [(block.user_id,) for block in blocks.values()])
        await connection.executemany(
            "INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, mode, version, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, 1, $7, $7)",
            job_rows,
        )
        await connection.executemany(
            "INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at) "
            "VALUES ($1, $2, 1, 'pending', $3, $4)",
            event_rows,
        )
    return blocks


async def check_completed(pool: asyncpg.Pool, block: JobBlock, what: str) -> str:
    ids = block.request_ids
    row = await pool.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM fal_jobs WHERE request_id = ANY($1::text[])) AS jobs,
          (SELECT count(*) FROM fal_jobs WHERE request_id = ANY($1::text[])
              AND status = 'completed' AND version = 2 AND result IS NOT NULL) AS completed_v2,
          (SELECT count(*) FROM fal_job_events WHERE request_id = ANY($1::text[])) AS events,
          (SELECT count(*) FROM (SELECT request_id FROM fal_job_events WHERE request_id = ANY($1::text[])
              GROUP BY request_id HAVING count(*) = 2 AND max(version) = 2
                  AND bool_or(status = 'completed')) AS t) AS jobs_with_2_events
        """,
        ids,
    )
    n = len(ids)
    ok = row["jobs"] == n and row["completed_v2"] == n and row["events"] == 2 * n and row["jobs_with_2_events"] == n
    line = (f"check {what}: {row['completed_v2']}/{n} jobs completed at version 2, "
            f"{row['jobs_with_2_events']}/{n} with exactly 2 events ({row['events']} events)")
    if not ok:
        raise BenchFailure("FAILED " + line)
    return "OK    " + line


async def set_trigger(pool: asyncpg.Pool, enabled: bool) -> None:
    await pool.execute(f"ALTER TABLE fal_job_events {'ENABLE' if enabled else 'DISABLE'} TRIGGER {TRIGGER}")


# ---- the emulator (JWKS only) and the service -----------------------------------------------


# ---- the load ---------------------------------------------------------------------------------


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


async def service_phase(post: Post, service: Service, emulator: FalEmulator, block: JobBlock,
                        concurrency: int, trigger: str, pg: asyncpg.Pool, ncpu: int) -> Result:
    prepared = sign_webhooks(emulator, block.request_ids)
    pids = await postgres_pids(pg)
    before = CpuSnapshot.take(service, pids)
    wall, latencies = await fire_webhooks(post, prepared, concurrency)
    after = CpuSnapshot.take(service, pids)
    return Result("service POST /api/webhooks/fal", trigger, len(prepared), wall, latencies,
                  CpuUse.between(before, after, ncpu))


_RAW_UPDATE = ("UPDATE fal_jobs SET status = 'completed', result = $2, version = version + 1, "
               "updated_at = now(), completed_at = now() WHERE request_id = $1")
_RAW_INSERT = ("INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at) "
               "VALUES ($1, $2, 2, 'completed', $3, now())")


def completed_job(request_id: str, block: JobBlock) -> Job:
    now = datetime.now(UTC)
    return Job(request_id=request_id, user_id=block.user_id, model_id=MODEL_ID, type="image", input=JOB_INPUT,
               status="completed", queue_position=None, logs=None, result=PAYLOAD, error=None, error_type=None,
               mode="webhook", version=2, created_at=block.created_at, updated_at=now, completed_at=now)


async def raw_phase(dsn: str, block: JobBlock, warmup: JobBlock, connections: int, trigger: str,
                    pg: asyncpg.Pool, ncpu: int) -> Result:
    """Per job one transaction: UPDATE fal_jobs + INSERT fal_job_events, on `connections` connections."""
    pool = await create_pool(dsn, min_size=connections, max_size=connections)
    try:
        held = [await pool.acquire() for _ in range(connections)]
        try:
            async def run(target: JobBlock) -> tuple[float, list[float]]:
                events = [completed_job(request_id, target) for request_id in target.request_ids]
                latencies: list[float] = []
                queue = iter(range(len(target.request_ids)))

                async def worker(connection: asyncpg.Connection) -> None:
                    for i in queue:
                        request_id = target.request_ids[i]
                        started = time.perf_counter()
                        async with connection.transaction():
                            await connection.execute(_RAW_UPDATE, request_id, PAYLOAD)
                            await connection.execute(_RAW_INSERT, request_id, target.user_id, events[i])
                        latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.wait_for(asyncio.gather(*(worker(c) for c in held)), timeout=PHASE_TIMEOUT_S)
                return time.perf_counter() - started, latencies

            await run(warmup)  # prepares the statements on every connection
            pids = await postgres_pids(pg)
            before = CpuSnapshot.take(None, pids)
            wall, latencies = await run(block)
            after = CpuSnapshot.take(None, pids)
        finally:
            for connection in held:
                await pool.release(connection)
    finally:
        await pool.close()
    return Result(f"raw asyncpg UPDATE+INSERT (C={connections})", trigger, len(block.request_ids), wall,
                  latencies, CpuUse.between(before, after, ncpu))


async def intake_phase(dsn: str, block: JobBlock, warmup: JobBlock, concurrency: int, trigger: str,
                       pg: asyncpg.Pool, ncpu: int) -> Result:
    """The service's WebhookIntake.receive, in this process, without HTTP or signatures."""
    pool = await create_pool(dsn, min_size=SERVICE_POOL_SIZE, max_size=SERVICE_POOL_SIZE)
    try:
        intake = WebhookIntake(pool, gateway=None)  # type: ignore[arg-type]  # only used for payload_error

        async def run(target: JobBlock) -> tuple[float, list[float]]:
            latencies: list[float] = []
            failures: list[str] = []

            async def one(i: int) -> None:
                request_id = target.request_ids[i]
                webhook = FalWebhook(request_id=request_id, gateway_request_id=request_id, status="OK",
                                     payload=PAYLOAD)
                started = time.perf_counter()
                applied = await intake.receive(webhook)
                latencies.append(time.perf_counter() - started)
                if applied is None or not applied.accepted:
                    failures.append(request_id)

            wall = await run_workers(len(target.request_ids), concurrency, one)
            if failures:
                raise BenchFailure(f"intake: {len(failures)} webhooks not applied")
            return wall, latencies

        await run(warmup)
        pids = await postgres_pids(pg)
        before = CpuSnapshot.take(None, pids)
        wall, latencies = await run(block)
        after = CpuSnapshot.take(None, pids)
    finally:
        await pool.close()
    return Result(f"service intake, no HTTP (pool {SERVICE_POOL_SIZE})", trigger, len(block.request_ids), wall,
                  latencies, CpuUse.between(before, after, ncpu))


# ---- the report ---------------------------------------------------------------------------------


def row(result: Result, label: str | None = None) -> str:
    return (f"{(label or result.label):<38} {result.trigger:<8} {result.rate:>16.0f}  "
            f"{result.p50_ms:>6.2f}  {result.p99_ms:>6.2f}{('  ' + result.note) if result.note else ''}")


def cpu_line(result: Result, n_cpu: int) -> str:
    cpu = result.cpu
    assert cpu is not None
    pg = f", postgres {cpu.postgres:.1f} s" if cpu.postgres is not None else ""
    per = cpu.service / result.count * 1e6
    return (f"cpu (trigger {result.trigger}): bench process {cpu.bench:.1f} s, service process {cpu.service:.1f} s"
            f"{pg}, other processes {cpu.others:.1f} s, wall {cpu.wall:.1f} s; machine busy "
            f"{cpu.machine_busy_cores:.2f} of {n_cpu} cores; service {per:.0f} us CPU per webhook")


def print_profile(path: str, limit: int = 30) -> None:
    import pstats

    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"\n--- service profile (webhook phase, trigger on), top {limit} by {sort} ---")
        print("\n".join(out.getvalue().splitlines()[4:]))


# ---- the run ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, database: Database, log_dir: Path) -> None:
    n, concurrency, ncpu = args.n, args.concurrency, os.cpu_count() or 1
    fal_key = f"bench-fal-key:{uuid.uuid4().hex}"
    raw_warmup = max(concurrency, 64)
    sizes = {"warmup": args.warmup, "service_on": n}
    if not args.service_only:
        sizes |= {"service_off": n, "intake_on": n, "intake_warmup": raw_warmup}
    for trigger in ("on", "off") if not args.service_only else ():
        for c in RAW_CONCURRENCIES:
            sizes[f"raw_{trigger}_{c}"] = n
            sizes[f"raw_{trigger}_{c}_warmup"] = max(raw_warmup, 4 * c)

    pool = await create_pool(database.dsn, min_size=1, max_size=2, statement_timeout_s=120)
    emulator: Emulator | None = None
    service: Service | None = None
    trigger_disabled = False
    checks: list[str] = []
    try:
        version = await pool.fetchval("SHOW server_version")
        pg_settings = {name: await pool.fetchval(f"SHOW {name}") for name in ("synchronous_commit", "fsync")}
        started = time.perf_counter()
        blocks = await create_jobs(pool, sizes)
        print(f"[bench] {sum(sizes.values())} pending jobs created in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)

        emulator = await start_emulator(fal_key)
        service = await start_service(database.dsn, emulator.emulator, fal_key, log_dir / "service.log",
                                      processes=args.processes, profile_path=args.profile_service)
        print(f"[bench] service pid {service.pid} ({args.processes} process(es)) ready at {service.url}",
              file=sys.stderr, flush=True)

        results: dict[str, Result] = {}
        async with contextlib.AsyncExitStack() as stack:
            raw_client: RawHttpClient | None = None
            if args.client == "raw":
                raw_client = await stack.enter_async_context(RawHttpClient(service.url, WEBHOOK_PATH, concurrency))
                post: Post = raw_client.post
            else:
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                client = await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=30))
                post = httpx_post(client, f"{service.url}{WEBHOOK_PATH}")
            await fire_webhooks(post, sign_webhooks(emulator.emulator, blocks["warmup"].request_ids), concurrency)
            checks.append(await check_completed(pool, blocks["warmup"], "warm-up webhooks"))

            if args.profile_service:
                service.process.send_signal(signal.SIGUSR1)
                await asyncio.sleep(0.2)
            results["service_on"] = await service_phase(post, service, emulator.emulator, blocks["service_on"],
                                                        concurrency, "on", pool, ncpu)
            if args.profile_service:
                service.process.send_signal(signal.SIGUSR2)
            checks.append(await check_completed(pool, blocks["service_on"], "service webhooks, trigger on"))
            print(f"[bench] {row(results['service_on'])}", file=sys.stderr, flush=True)

            for c in RAW_CONCURRENCIES if not args.service_only else ():
                results[f"raw_on_{c}"] = await raw_phase(database.dsn, blocks[f"raw_on_{c}"],
                                                         blocks[f"raw_on_{c}_warmup"], c, "on", pool, ncpu)
                checks.append(await check_completed(pool, blocks[f"raw_on_{c}"], f"raw C={c}, trigger on"))
                print(f"[bench] {row(results[f'raw_on_{c}'])}", file=sys.stderr, flush=True)

            if args.service_only:
                await stack.aclose()
                await service.stop()
                service = None
                print(row(results["service_on"]))
                print(cpu_line(results["service_on"], ncpu))
                print("\n".join(checks))
                if args.profile_service:
                    print_profile(args.profile_service)
                return
            results["intake_on"] = await intake_phase(database.dsn, blocks["intake_on"], blocks["intake_warmup"],
                                                      concurrency, "on", pool, ncpu)
            checks.append(await check_completed(pool, blocks["intake_on"], "intake without HTTP, trigger on"))
            print(f"[bench] {row(results['intake_on'])}", file=sys.stderr, flush=True)

            await set_trigger(pool, enabled=False)
            trigger_disabled = True
            if raw_client is not None:
                await raw_client.reconnect()
            results["service_off"] = await service_phase(post, service, emulator.emulator, blocks["service_off"],
                                                         concurrency, "off", pool, ncpu)
            checks.append(await check_completed(pool, blocks["service_off"], "service webhooks, trigger off"))
            print(f"[bench] {row(results['service_off'])}", file=sys.stderr, flush=True)
            for c in RAW_CONCURRENCIES:
                results[f"raw_off_{c}"] = await raw_phase(database.dsn, blocks[f"raw_off_{c}"],
                                                          blocks[f"raw_off_{c}_warmup"], c, "off", pool, ncpu)
                checks.append(await check_completed(pool, blocks[f"raw_off_{c}"], f"raw C={c}, trigger off"))
                print(f"[bench] {row(results[f'raw_off_{c}'])}", file=sys.stderr, flush=True)
            await set_trigger(pool, enabled=True)
            trigger_disabled = False

        await service.stop()
        if service.process.returncode not in (0, -signal.SIGINT):
            print(f"[bench] warning: the service exited with {service.process.returncode}", file=sys.stderr)
        service = None
    finally:
        if trigger_disabled:
            with contextlib.suppress(Exception):
                await set_trigger(pool, enabled=True)
        if service is not None:
            await service.stop()
        if emulator is not None:
            await emulator.stop()
        await pool.close()

    # ---- the table ----
    best_on = max((results[f"raw_on_{c}"] for c in RAW_CONCURRENCIES), key=lambda r: r.rate)
    best_off = max((results[f"raw_off_{c}"] for c in RAW_CONCURRENCIES), key=lambda r: r.rate)
    best_off_c = best_off.label.split("C=")[1].rstrip(")")
    ratio = results["service_on"].rate / best_on.rate
    ack_p99 = results["service_on"].p99_ms
    print()
    print(f"fal-jobs webhook benchmark: N={n}, concurrency={concurrency}, Postgres {version}, {ncpu} cores "
          f"(synchronous_commit={pg_settings['synchronous_commit']}, fsync={pg_settings['fsync']}, "
          f"{'embedded pgserver' if database.embedded else 'server from URL'}, client {args.client})")
    print(f"{'path':<38} {'trigger':<8} {'tx or webhooks/s':>16}  {'p50 ms':>6}  {'p99 ms':>6}")
    print(row(results["service_on"]))
    for c in RAW_CONCURRENCIES:
        print(row(results[f"raw_on_{c}"]))
    print(row(results["intake_on"]))
    print(row(results["service_off"]))
    print(row(best_off, f"raw asyncpg UPDATE+INSERT (best C={best_off_c})"))
    print(f"ratio service/floor (trigger on): {ratio:.2f}   target >= 0.50 ({'met' if ratio >= 0.5 else 'MISSED'});  "
          f"ACK p99 target < 50 ms ({ack_p99:.1f} ms, {'met' if ack_p99 < 50 else 'MISSED'})")
    print(f"ratio service/floor (trigger off): {results['service_off'].rate / best_off.rate:.2f};  "
          f"NOTIFY cost: service {results['service_off'].rate / results['service_on'].rate:.2f}x, "
          f"raw floor {best_off.rate / best_on.rate:.2f}x faster without the trigger")
    print("raw floor trigger off, each C: " + ", ".join(
        f"C={c} {results[f'raw_off_{c}'].rate:.0f}/s (p50 {results[f'raw_off_{c}'].p50_ms:.2f}, "
        f"p99 {results[f'raw_off_{c}'].p99_ms:.2f} ms)" for c in RAW_CONCURRENCIES))
    on = results["service_on"].cpu
    assert on is not None
    print(f"cpu: bench process {on.bench:.1f} s, service process {on.service:.1f} s, wall {on.wall:.1f} s "
          f"(service phase, trigger on)")
    print(cpu_line(results["service_on"], ncpu))
    print(cpu_line(results["service_off"], ncpu))
    for key in ("intake_on", f"raw_on_{best_on.label.split('C=')[1].rstrip(')')}"):
        cpu = results[key].cpu
        assert cpu is not None
        pg = f", postgres {cpu.postgres:.1f} s" if cpu.postgres is not None else ""
        print(f"cpu ({results[key].label}, trigger on): bench process {cpu.bench:.1f} s{pg}, other processes "
              f"{cpu.others:.1f} s, wall {cpu.wall:.1f} s; machine busy {cpu.machine_busy_cores:.2f} of {ncpu} cores")
    for line in checks:
        print(line)
    if args.profile_service:
        print("NOTE: the service ran under cProfile; its rows are slowed by the profiler.")
        print_profile(args.profile_service)


async def main_async(args: argparse.Namespace) -> int:
    server_dsn, embedded = await asyncio.to_thread(open_server, args.database_url or os.environ.get("DATABASE_URL"))
    name = f"fal_jobs_bench_{uuid.uuid4().hex[:12]}"
    database = Database(server_dsn, with_database(server_dsn, name), name, embedded)
    created = False
    try:
        await admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
        created = True
        await asyncio.to_thread(apply_migrations, database.dsn)
        with tempfile.TemporaryDirectory(prefix="fal-jobs-bench-") as log_dir:
            await bench(args, database, Path(log_dir))
        return 0
    except BenchFailure as failure:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if created:
            try:
                await admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as error:  # noqa: BLE001 - report, and still stop the embedded server
                print(f"[bench] could not drop database {name}: {error}", file=sys.stderr)
        if embedded is not None:
            await asyncio.to_thread(embedded.cleanup)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="webhooks (and raw transactions) per measured phase")
    parser.add_argument("--concurrency", type=int, default=16, help="webhooks in flight at once")
    parser.add_argument("--database-url", default=None,
                        help="a Postgres server to create the bench database on (default: DATABASE_URL, "
                             "else an embedded pgserver)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up webhooks before measuring")
    parser.add_argument("--client", choices=("httpx", "raw"), default="raw",
                        help="load generator: a minimal raw HTTP/1.1 keep-alive client (default; it costs the 2 cores "
                             "far less than the service), or one httpx.AsyncClient")
    parser.add_argument("--profile-service", metavar="FILE", default=None,
                        help="run the service under cProfile during the trigger-on webhook phase; stats to FILE")
    parser.add_argument("--service-only", action="store_true",
                        help="only the service's trigger-on phase (its rate, latency and CPU per webhook): a quick "
                             "before/after of a change to the webhook path")
    add_processes_argument(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 100_000 or not 1 <= args.concurrency <= 256 or not 1 <= args.warmup <= 10_000:
        parser.error("--n must be 1..100000, --concurrency 1..256, --warmup 1..10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
