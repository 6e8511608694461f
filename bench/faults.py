"""What the service does under the faults a deployment meets, in one table.

The service runs as its own process (`python -m service serve`, the Procfile's command, one
worker) in webhook mode against an in-process fal emulator, with Postgres behind a TCP proxy the
bench controls. A load of API clients (list, read, create) runs through every phase, and one SSE
reader follows the user's jobs on /api/events, dropping its connection every second and
resuming by Last-Event-ID. Phases, one after the other:

  baseline       no fault
  kill storm     pg_terminate_backend on every service backend every 150 ms
  partition      the proxy stops forwarding (connections stay open, nothing comes back)
  down at start  the service is restarted while nothing listens on the database's address,
                 then the database comes back
  late commit    a transaction takes a job's terminal event id and commits only after 35 s,
                 past the listener's 30 s gap time-out ("recovery": from its commit until the
                 reader has the job's end)
  held row       one job's row held FOR UPDATE for 30 s by a connection of the bench's, while
                 2,000 signed webhooks arrive for it and 99 other jobs (20 each, 64 in flight),
                 each refused one tried again as fal does ("recovery": from the release until
                 the held job is completed)

Per phase: requests sent, answers by status (`timeout` = no answer within 20 s), p99 time to
answer, and seconds from the end of the fault to /readyz answering 200. At the end, after every
job has had time to finish: jobs lost (a job answered 202 that never reached a terminal state),
jobs whose end the reader never saw, and job states (request id, version) it saw twice. For the
held row, its webhooks on lines of their own: answers by status and p99 per attempt, the service's
backends at their peak (pg_stat_activity by application_name, sampled every 50 ms), how many of the
99 other jobs were completed while the row was held, and how the held job ended.

    .venv/bin/python bench/faults.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/faults.py --faults "held row"    # only some faults (after the baseline)

A script that prints a table, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import msgspec  # noqa: E402
import uvicorn  # noqa: E402

from bench.harness import (  # noqa: E402
    BenchFailure,
    admin_execute,
    free_port,
    listening_socket,
    open_server,
    percentile,
    with_database,
)
from service.auth.api_keys import NewUser, create_user  # noqa: E402
from service.db.migrations import apply_migrations  # noqa: E402
from service.db.pool import init_connection  # noqa: E402
from service.emulator import FalEmulator, create_emulator_app  # noqa: E402
from service.emulator.signing import signed_headers  # noqa: E402
from service.jobs.models import JobChange, NewJob  # noqa: E402
from service.jobs.status_machine import apply_change, create_job  # noqa: E402
from tests.proxy import TcpProxy  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled")
REQUEST_TIMEOUT_S = 20.0
SERVICE_APPLICATIONS = ["fal-jobs", "fal-jobs-listener", "fal-jobs-sweep"]
MODEL = "fal-ai/flux/dev"
FAULTS = ("kill storm", "partition", "down at start", "late commit", "held row")
POOL_MAX = 10  # DATABASE_POOL_MAX, set for the service: its backends stay within it + LISTEN + sweep
FAL_RETRY_S = (0.5, 1, 2, 4, 8, 16, 30)  # fal's webhook retries, compressed (as the emulator's here)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Phase:
    name: str
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    recovery_s: float | None = None

    def record(self, status: str, seconds: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(seconds)


@dataclass
class HeldRow:
    attempts: list[tuple[bool, str, float]] = field(default_factory=list)
    """(for the held job, status, seconds) per webhook attempt."""
    peak: dict[str, int] = field(default_factory=dict)
    others: int = 0
    others_done_while_held: int = 0
    released_at: float | None = None
    held_job_done_s: float | None = None
    held_job_attempt: int | None = None
    took_s: float = 0.0


class Bench:
    def __init__(self, dsn: str, proxy: TcpProxy, emulator: FalEmulator, fal_key: str, user: NewUser, logs: Path) -> None:
        self.dsn = dsn
        self.proxy = proxy
        self.emulator = emulator
        self.fal_key = fal_key
        self.user = user
        self.logs = logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.phase = Phase("baseline")
        self.phases: list[Phase] = []
        self.created: set[str] = set()
        self.terminal_seen: dict[str, int] = collections.Counter()
        self.seen: collections.Counter[tuple[str, int]] = collections.Counter()
        self.running = True
        self.reading = True
        self.last_id: str | None = None
        self.newest_event_id = 0
        self.direct: Any = None
        self.held: HeldRow | None = None

    # ---- the service process -------------------------------------------------------------

    def start_service(self) -> None:
        env = {
            **os.environ, "DATABASE_URL": self.proxy.url_for(self.dsn), "FAL_KEY": self.fal_key,
            "FAL_QUEUE_URL": self.emulator.base_url, "FAL_SCHEMA_URL": self.emulator.schema_url, "FAL_API_URL": self.emulator.base_url, "FAL_JWKS_URL": self.emulator.jwks_url, "APP_URL": self.url,
            "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "WARNING", "WEB_CONCURRENCY": "1",
            "RECONCILE_INTERVAL_S": "2", "RECONCILE_AFTER_S": "5", "MAX_OPEN_JOBS_PER_USER": "100000",
            "MAX_JOBS_PER_MINUTE": "100000", "MAX_STREAMS_PER_USER": "1000", "FAL_JOBS_NO_VENV": "1",
            "STREAM_TOKEN_SECRET": secrets.token_urlsafe(32), "PYTHONUNBUFFERED": "1",
            "DATABASE_POOL_MAX": str(POOL_MAX),
        }
        env.pop("LISTEN_DATABASE_URL", None)
        with open(self.logs / "service.log", "ab") as log_file:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def stop_service(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()

    async def wait_ready(self, http: httpx.AsyncClient, within_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < within_s:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{self.url}/readyz", timeout=3)).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise BenchFailure(f"not ready within {within_s} s; see {self.logs / 'service.log'}")

    # ---- load ----------------------------------------------------------------------------

    async def client(self, http: httpx.AsyncClient, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.user.api_key}"}
        turn = 0
        while self.running:
            turn += 1
            started = time.monotonic()
            try:
                kind = ("create", "read", "list")[turn % 3]
                if turn % 3 == 0:
                    body = {"type": "image", "model_id": MODEL,
                            "input": {"prompt": f"fault {n}-{turn}", "fal_emulator": {"queue_ms": 200, "run_ms": 500}}}
                    response = await http.post(f"{self.url}/api/jobs", headers=headers, json=body)
                    if response.status_code == 202:
                        self.created.add(response.json()["request_id"])
                elif turn % 3 == 1 and self.created:
                    request_id = next(iter(self.created))
                    response = await http.get(f"{self.url}/api/jobs/{request_id}", headers=headers)
                else:
                    response = await http.get(f"{self.url}/api/jobs?limit=20", headers=headers)
                status = str(response.status_code)
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.TransportError:
                await asyncio.sleep(0.1)  # the process is restarting: nothing was answered
                continue
            took = time.monotonic() - started
            self.phase.record(status, took)  # the phase it was answered in
            if took > 3:
                log(f"{self.phase.name}: {kind} answered {status} after {took:.2f} s")
            await asyncio.sleep(0.02)

    async def reader(self, http: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {self.user.api_key}"}
        last_id: str | None = None
        while self.reading:
            try:
                async with http.stream("GET", f"{self.url}/api/events",
                                       headers={**headers, **({"Last-Event-ID": last_id} if last_id else {})},
                                       timeout=httpx.Timeout(10, read=3)) as response:
                    if response.status_code != 200:
                        await asyncio.sleep(0.1)
                        continue
                    opened = time.monotonic()
                    event: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line:
                            name, _, value = line.partition(": ")
                            event[name] = value
                            continue
                        if event.get("id"):
                            last_id = self.last_id = event["id"]
                        if event.get("event") == "job":
                            job = msgspec.json.decode(event["data"])
                            # A completed job may change again (its outputs stored): count states.
                            self.seen[(job["request_id"], job["version"])] += 1
                            if job["status"] in TERMINAL:
                                self.terminal_seen[job["request_id"]] += 1
                        event = {}
                        if time.monotonic() - opened > 1 or not self.reading:
                            break
            except (httpx.TimeoutException, httpx.TransportError):
                await asyncio.sleep(0.1)

    async def hold_then_commit(self, hold_s: float) -> str:
        """A job of the user completed in a transaction that stays open `hold_s`: its event id is
        taken at once and committed late. Returns the job's request id."""
        request_id = f"late-{uuid.uuid4()}"
        connection = await asyncpg.connect(self.dsn, server_settings={"application_name": "bench-late"})
        try:
            await init_connection(connection)
            await create_job(connection, NewJob(request_id=request_id, user_id=self.user.user_id, model_id=MODEL,
                                                type="image", input={"prompt": "late"}, mode="webhook"))
            self.created.add(request_id)
            async with connection.transaction():
                await apply_change(connection, request_id, JobChange(status="completed", result={"late": True}))
                await asyncio.sleep(hold_s)
        finally:
            await connection.close()
        return request_id

    async def held_row(self, hold_s: float, per_job: int, in_flight: int) -> HeldRow:
        """The held-row fault: 100 open jobs, the first one's row held `hold_s` by a connection of
        the bench's, `per_job` signed webhooks for each (interleaved, `in_flight` at once, on HTTP
        connections of their own), each refused one sent again on fal's schedule until it is
        answered 2xx."""
        held = HeldRow()
        http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=in_flight))
        watcher = await asyncpg.connect(self.dsn, server_settings={"application_name": "bench"})
        jobs = await self._held_row_jobs(http, 100)
        connection = await asyncpg.connect(self.dsn, server_settings={"application_name": "bench-holder"})
        held_job, others = jobs[0], jobs[1:]
        gate = asyncio.Semaphore(in_flight)
        sampling = asyncio.Event()
        sampling.set()

        async def open_others() -> int:
            return await self.direct.fetchval(
                "SELECT count(*) FROM fal_jobs WHERE request_id = ANY($1::text[]) AND status <> 'completed'", others)

        sampler = asyncio.create_task(self._sample_connections(watcher, held, sampling))
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT 1 FROM fal_jobs WHERE request_id = $1 FOR UPDATE", held_job)
        held_at = time.monotonic()
        order = [request_id for _ in range(per_job) for request_id in jobs]  # the held job's spread through it
        deliveries = asyncio.gather(*(self._deliver_until_answered(http, gate, held, request_id,
                                                                   is_held=request_id == held_job)
                                      for request_id in order))
        await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - held_at)))
        held.others_done_while_held = len(others) - await open_others()
        await transaction.rollback()
        held.released_at = time.monotonic()
        await connection.close()
        while time.monotonic() - held.released_at < 60:
            if await self.direct.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", held_job) == "completed":
                held.held_job_done_s = time.monotonic() - held.released_at
                break
            await asyncio.sleep(0.05)
        await deliveries
        held.took_s = time.monotonic() - held_at
        sampling.clear()
        await sampler
        await watcher.close()
        await http.aclose()
        held.others = len(others)
        return held

    async def _held_row_jobs(self, http: httpx.AsyncClient, count: int) -> list[str]:
        """Jobs submitted through the service, so that fal (the emulator) knows them as the sweep
        asks: each held at the end of its queue, so that the only webhooks are the bench's own."""
        headers = {"Authorization": f"Bearer {self.user.api_key}"}
        body = {"type": "image", "model_id": MODEL, "input": {"prompt": "held", "fal_emulator": {"hold": True}}}
        jobs = []
        for _ in range(count):
            response = await http.post(f"{self.url}/api/jobs", headers=headers, json=body)
            response.raise_for_status()
            jobs.append(response.json()["request_id"])
        return jobs

    async def _sample_connections(self, watcher: asyncpg.Connection, held: HeldRow, sampling: asyncio.Event) -> None:
        """While `sampling` is set: the service's connections by application name, at their peak."""
        while sampling.is_set():
            rows = await watcher.fetch(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = ANY($1::text[]) GROUP BY 1", SERVICE_APPLICATIONS)
            counts = {row["application_name"]: row["n"] for row in rows}
            if sum(counts.values()) > sum(held.peak.values()):
                held.peak = counts
            await asyncio.sleep(0.05)

    async def _deliver_until_answered(self, http: httpx.AsyncClient, gate: asyncio.Semaphore, held: HeldRow,
                                      request_id: str, *, is_held: bool) -> None:
        """One job's signed webhook, sent again on fal's schedule until it is answered 2xx."""
        body = msgspec.json.encode({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                                    "payload": {"images": [], "seed": 1}})
        for attempt, wait_s in enumerate((*FAL_RETRY_S, None), start=1):
            headers = signed_headers(self.emulator.keyset.current, request_id=request_id,
                                     user_id=self.emulator.user_id, timestamp=int(time.time()), body=body)
            async with gate:
                started = time.monotonic()
                try:
                    response = await http.post(f"{self.url}/api/webhooks/fal", content=body,
                                               headers={**headers, "content-type": "application/json"})
                    status = str(response.status_code)
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.TransportError:
                    status = "transport"
            held.attempts.append((is_held, status, time.monotonic() - started))
            if status.startswith("2"):
                if is_held and held.released_at is not None and held.held_job_attempt is None:
                    held.held_job_attempt = attempt  # the first delivery answered 2xx after the release
                return
            if wait_s is None:
                return  # fal gives up; the sweep would settle the job
            await asyncio.sleep(wait_s)

    def begin(self, name: str) -> Phase:
        self.phase = Phase(name)
        self.phases.append(self.phase)
        return self.phase


async def run(args: argparse.Namespace) -> None:
    server_dsn, embedded = open_server(args.database_url)
    name = f"fal_jobs_faults_{uuid.uuid4().hex[:10]}"
    await admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    logs = Path(tempfile.mkdtemp(prefix="fal-jobs-faults-"))
    try:
        apply_migrations(dsn)
        direct = await asyncpg.connect(dsn, server_settings={"application_name": "bench"})
        await init_connection(direct)
        users = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        user = await create_user(users, f"faults-{uuid.uuid4().hex[:6]}")
        await users.close()
        fal_key = "bench:" + secrets.token_urlsafe(16)
        sock = listening_socket()
        host, port = sock.getsockname()
        emulator = FalEmulator(f"http://{host}:{port}", fal_key, retry_schedule_s=(0.5, 1, 2, 4, 8, 16))
        fal_server = uvicorn.Server(uvicorn.Config(create_emulator_app(emulator), log_config=None, access_log=False))
        fal_task = asyncio.create_task(fal_server.serve(sockets=[sock]))
        proxy = TcpProxy.for_dsn(dsn)  # over TCP or, for the embedded server, its Unix socket
        await proxy.start()
        bench = Bench(dsn, proxy, emulator, fal_key, user, logs)
        bench.direct = direct
        chosen = set(args.faults)
        bench.start_service()
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=64)) as http:
            await bench.wait_ready(http, 60)
            bench.begin("baseline")
            workers = [asyncio.create_task(bench.client(http, n)) for n in range(args.clients)]
            reader = asyncio.create_task(bench.reader(http))
            await asyncio.sleep(args.phase_s)

            if "kill storm" in chosen:
                phase = bench.begin("kill storm")
                log(f"{phase.name}: pg_terminate_backend every 150 ms for {args.phase_s} s")
                kills = 0
                until = time.monotonic() + args.phase_s
                while time.monotonic() < until:
                    kills += await direct.fetchval(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = ANY($1::text[])",
                        SERVICE_APPLICATIONS)
                    await asyncio.sleep(0.15)
                phase.recovery_s = await bench.wait_ready(http, 60)
                log(f"{phase.name}: {kills} backends killed")

            if "partition" in chosen:
                phase = bench.begin("partition")
                log(f"{phase.name}: the proxy holds every byte for {args.phase_s} s")
                proxy.partition()
                await asyncio.sleep(args.phase_s)
                proxy.heal()
                phase.recovery_s = await bench.wait_ready(http, 60)

            if "down at start" in chosen:
                phase = bench.begin("down at start")
                log(f"{phase.name}: restart the service with nothing listening on the database's address")
                await bench.stop_service()
                await proxy.stop()
                bench.start_service()
                await asyncio.sleep(args.phase_s)  # the clients meet a service whose database is down
                await proxy.start()
                phase.recovery_s = await bench.wait_ready(http, 60)

            if "late commit" in chosen:
                phase = bench.begin("late commit")
                log(f"{phase.name}: a transaction holds a job's terminal event {args.hold_s:g} s (past the 30 s "
                    "gap time-out), then commits")
                held = await bench.hold_then_commit(args.hold_s)
                seen = time.monotonic()
                while held not in bench.terminal_seen and time.monotonic() - seen < 30:
                    await asyncio.sleep(0.02)
                phase.recovery_s = time.monotonic() - seen if held in bench.terminal_seen else None
                log(f"{phase.name}: the reader saw the late terminal event: {held in bench.terminal_seen}; it saw "
                    f"{sorted(version for (request_id, version) in bench.seen if request_id == held)} of its versions")

            if "held row" in chosen:
                phase = bench.begin("held row")
                log(f"{phase.name}: one job's row held {args.held_s:g} s while {args.per_job * 100} webhooks arrive "
                    "for it and 99 other jobs")
                bench.held = await bench.held_row(args.held_s, args.per_job, in_flight=64)
                phase.recovery_s = bench.held.held_job_done_s

            bench.begin("after")
            await asyncio.sleep(2)
            bench.running = False
            await asyncio.gather(*workers, return_exceptions=True)
            log("waiting for every job to end (the sweep settles what a given-up webhook left)")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                open_jobs = await direct.fetchval(
                    "SELECT count(*) FROM fal_jobs WHERE user_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')",
                    user.user_id)
                if not open_jobs:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(4)  # the reader catches up on the last ends
            bench.reading = False
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await bench.stop_service()
        rows = await direct.fetch("SELECT request_id, status FROM fal_jobs WHERE user_id = $1", user.user_id)
        bench.newest_event_id = await direct.fetchval("SELECT max(id) FROM fal_job_events")
        await direct.close()
        await proxy.stop()
        fal_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(fal_task, 10)
        with contextlib.suppress(Exception):
            await emulator.aclose()
        report(bench, rows, args)
    finally:
        with contextlib.suppress(Exception):
            await admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.cleanup()


def report(bench: Bench, rows: list[Any], args: argparse.Namespace) -> None:
    statuses = {row["request_id"]: row["status"] for row in rows}
    lost_jobs = sum(1 for request_id in bench.created if statuses.get(request_id) not in TERMINAL)
    terminal = {request_id for request_id, status in statuses.items() if status in TERMINAL}
    missed = sum(1 for request_id in terminal if bench.terminal_seen.get(request_id, 0) == 0)
    doubled = sum(1 for count in bench.seen.values() if count > 1)
    for (request_id, version), count in bench.seen.items():
        if count > 1:
            log(f"state seen {count} times: {request_id} version {version}"
                f"{' (the late event)' if request_id.startswith('late-') else ''}")
    print(f"{args.clients} API clients (list, read, create) + 1 SSE reader resuming by Last-Event-ID every second; "
          f"{args.phase_s:g} s per fault; service: 'python -m service serve', 1 process, webhooks from the emulator")
    print(f"{'fault':<15}{'requests':>9}  {'answers by status':<34}{'p99 s':>7}{'recovery s':>12}")
    for phase in bench.phases:
        if phase.name == "after":
            continue
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(phase.statuses.items()))
        p99 = percentile(sorted(phase.latencies), 99)
        recovery = "-" if phase.recovery_s is None else f"{phase.recovery_s:.2f}"
        print(f"{phase.name:<15}{sum(phase.statuses.values()):>9}  {answers:<34}{p99:>7.2f}{recovery:>12}")
    others = sum(count for phase in bench.phases for status, count in phase.statuses.items()
                 if not (status.startswith("2") or status == "503"))
    print(f"jobs answered 202: {len(bench.created)}; jobs lost: {lost_jobs}; jobs terminal: {len(terminal)} of {len(statuses)}")
    print(f"the reader's last id at the end: {bench.last_id}; newest event id: {bench.newest_event_id}")
    print(f"terminal events missed by the reader: {missed}; job states seen twice: {doubled}; "
          f"answers other than 2xx/503: {others}")
    if bench.held is not None:
        report_held_row(bench.held, args)


def report_held_row(held: HeldRow, args: argparse.Namespace) -> None:
    statuses = collections.Counter(status for _, status, _ in held.attempts)
    latencies = sorted(seconds for _, _, seconds in held.attempts)
    others = sorted(seconds for for_held, _, seconds in held.attempts if not for_held)
    limit = POOL_MAX + 2
    print(f"held row: one job's row held {args.held_s:g} s; {args.per_job * 100} webhooks for it and 99 others, "
          f"{len(held.attempts)} attempts with fal's retries, all answered {held.took_s:.1f} s after the hold began")
    print(f"  webhook answers by status: {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}; "
          f"p50 {percentile(latencies, 50):.2f} s, p99 {percentile(latencies, 99):.2f} s "
          f"(the other jobs' webhooks: p99 {percentile(others, 99):.2f} s)")
    peak = ", ".join(f"{name}: {n}" for name, n in sorted(held.peak.items()))
    print(f"  service backends at their peak: {sum(held.peak.values())} ({peak}); "
          f"limit: pool {POOL_MAX} + LISTEN 1 + sweep 1 = {limit}")
    print(f"  other jobs completed while the row was held: {held.others_done_while_held} of {held.others}")
    done = "not within 60 s of the release" if held.held_job_done_s is None else \
        f"{held.held_job_done_s:.2f} s after the release (the first 2xx after it: a delivery's attempt " \
        f"{held.held_job_attempt})"
    print(f"  the held job completed: {done}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a Postgres server (its 'postgres' database); else DATABASE_URL, else embedded")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--phase-s", type=float, default=5.0)
    parser.add_argument("--hold-s", type=float, default=35.0, help="how long the late transaction stays open")
    parser.add_argument("--held-s", type=float, default=30.0, help="how long the held row stays locked")
    parser.add_argument("--per-job", type=int, default=20, help="held row: webhooks per job (100 jobs)")
    parser.add_argument("--faults", type=lambda text: [f.strip() for f in text.split(",")], default=list(FAULTS),
                        help=f"comma-separated, from: {', '.join(FAULTS)} (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
