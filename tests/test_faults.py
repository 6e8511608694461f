"""The fault suite: real Postgres, real HTTP, real processes, and the faults a deployment meets.

- a partition (a TCP proxy in front of Postgres stops forwarding): reads, creates, webhooks and
  /readyz answer 503 instead of hanging, and everything works again once it forwards;
- Postgres down at start-up: the service starts, says not-ready naming the database, and becomes
  ready once it answers; `migrate` waits for it;
- a storm of pg_terminate_backend on every service backend while 100 jobs run: every job ends,
  a reader resuming by Last-Event-ID sees every job's end and no state twice, and no answer is a
  5xx but 503;
- a transaction holding an event id past the gap time-out, then committing: its event still
  reaches the open streams and a resume;
- the sweep with one poisoned job (Postgres rejects its change) among 300 overdue ones.

Each test runs on a database of its own (`fault_db`), so killing backends or poisoning a table
touches no other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from service.auth.api_keys import create_user
from service.db.pool import create_pool, init_connection
from service.emulator import FalEmulator
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import apply_change, create_job
from service.realtime.hub import Hub, ResumePoint
from service.realtime.listener import EventListener
from service.realtime.streams import open_job_stream, open_user_stream
from service.settings import PROJECT_ROOT
from tests.conftest import FAL_KEY, bearer, fal_settings, migrated_database, serve
from tests.proxy import TcpProxy
from tests.test_webhook_endpoint import signed, webhook

SERVICE_APPLICATIONS = ("fal-jobs", "fal-jobs-listener", "fal-jobs-sweep")


@pytest.fixture
def fault_db(server_dsn: str) -> Iterator[str]:
    """A migrated database of this test's own, dropped afterwards."""
    with migrated_database(server_dsn, "fal_jobs_fault") as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def direct(fault_db: str) -> AsyncIterator[asyncpg.Pool]:
    """The test's own connections to the fault database (not named like the service's)."""
    pool = await asyncpg.create_pool(fault_db, min_size=1, max_size=4, init=init_connection,
                                     server_settings={"application_name": "fault-test"})
    yield pool
    await pool.close()


def proxy_for(dsn: str) -> TcpProxy:
    return TcpProxy.for_dsn(dsn)


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float, what: str) -> None:
    """Wait for `check` to hold, asking every 50 ms; fail naming `what` after `within_s`."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(0.05)


async def new_job(pool: asyncpg.Pool, user_id: str, request_id: str | None = None) -> str:
    request_id = request_id or str(uuid.uuid4())
    await pool.execute("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", user_id)  # jobs reference a user
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user_id, model_id="fal-ai/flux/dev",
                                            type="image", input={"prompt": "p"}, mode="webhook"))
    return request_id


async def test_a_partitioned_database_answers_503_and_recovers(
    fault_db: str, direct: asyncpg.Pool, fal: FalEmulator,
) -> None:
    proxy = proxy_for(fault_db)
    await proxy.start()
    user = await create_user(direct, f"partition-{uuid.uuid4().hex[:8]}")
    request_id = await new_job(direct, user.user_id)
    service = await serve(lambda url: create_app_for(proxy.url_for(fault_db), fal, url))
    # A hang fails the test: every answer must come back, well inside fal's 15 s webhook time-out.
    async with httpx.AsyncClient(timeout=httpx.Timeout(12)) as http:
        try:
            assert (await http.get(f"{service.url}/readyz")).status_code == 200
            assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 200
            proxy.partition()
            body = webhook(request_id)
            answers = await asyncio.gather(
                http.get(f"{service.url}/api/jobs", headers=bearer(user)),
                http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user)),
                http.post(f"{service.url}/api/jobs", headers=bearer(user),
                          json={"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "partitioned"}}),
                http.post(f"{service.url}/api/webhooks/fal", content=body,
                          headers={**signed(fal.keyset.current, request_id, body), "content-type": "application/json"}),
                http.get(f"{service.url}/readyz"),
            )
            for answer in answers:
                assert answer.status_code == 503, (answer.request.url, answer.status_code, answer.text)
            for answer in answers[:4]:
                assert answer.json()["error"] == "unavailable" and answer.headers["retry-after"], answer.text
            assert "database" in answers[4].json()["checks"] and answers[4].json()["checks"]["database"] != "ok"
            proxy.heal()

            async def ready() -> bool:
                return (await http.get(f"{service.url}/readyz")).status_code == 200

            await eventually(ready, within_s=10, what="ready again after the partition healed")
            assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 200
            again = await http.post(f"{service.url}/api/webhooks/fal", content=body,
                                    headers={**signed(fal.keyset.current, request_id, body), "content-type": "application/json"})
            assert again.status_code == 200, again.text
        finally:
            proxy.heal()
            await service.stop()
            await proxy.stop()


def create_app_for(dsn: str, fal: FalEmulator, url: str, **overrides: str) -> Any:
    from service.app import create_app

    return create_app(fal_settings(dsn, fal, url, **overrides))


async def test_postgres_down_at_start_then_up(fault_db: str, direct: asyncpg.Pool, fal: FalEmulator) -> None:
    proxy = proxy_for(fault_db)  # not started: nobody listens on its port yet
    user = await create_user(direct, f"down-{uuid.uuid4().hex[:8]}")
    service = await serve(lambda url: create_app_for(proxy.url_for(fault_db), fal, url))
    async with httpx.AsyncClient(timeout=httpx.Timeout(12)) as http:
        try:
            down = await http.get(f"{service.url}/readyz")
            assert down.status_code == 503
            checks = down.json()["checks"]
            assert checks["database"].startswith("unreachable") and checks["listener"] != "ok", checks
            listed = await http.get(f"{service.url}/api/jobs", headers=bearer(user))
            assert listed.status_code == 503 and listed.headers["retry-after"]
            await proxy.start()  # the database comes back

            async def ready() -> bool:
                return (await http.get(f"{service.url}/readyz")).status_code == 200

            await eventually(ready, within_s=10, what="ready once the database answers")
            assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 200
        finally:
            await service.stop()
            await proxy.stop()


async def test_the_procfile_command_starts_with_postgres_down(fault_db: str, fal: FalEmulator) -> None:
    """`python -m service serve` as its own process, its database not listening yet."""
    proxy = proxy_for(fault_db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": proxy.url_for(fault_db), "FAL_JOBS_NO_VENV": "1", "WEB_CONCURRENCY": "1",
           "HOST": "127.0.0.1", "PORT": str(port), "FAL_KEY": FAL_KEY, "FAL_QUEUE_URL": fal.base_url, "FAL_SCHEMA_URL": fal.schema_url, "FAL_API_URL": fal.base_url,
           "FAL_JWKS_URL": fal.jwks_url, "APP_URL": url, "LOG_LEVEL": "WARNING"}
    env.pop("LISTEN_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=PROJECT_ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5)) as http:

        async def readyz(status: int) -> bool:
            assert process.poll() is None, "the service exited"
            try:
                return (await http.get(f"{url}/readyz")).status_code == status
            except httpx.TransportError:
                return False  # not listening yet

        try:
            await eventually(lambda: readyz(503), within_s=30, what="serving, not ready, with the database down")
            checks = (await http.get(f"{url}/readyz")).json()["checks"]
            assert checks["database"].startswith("unreachable"), checks
            await proxy.start()
            await eventually(lambda: readyz(200), within_s=10, what="ready once the database answers")
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 20)
            await proxy.stop()


async def test_migrate_waits_for_a_database_that_is_down(fault_db: str) -> None:
    proxy = proxy_for(fault_db)
    env = {**os.environ, "DATABASE_URL": proxy.url_for(fault_db), "FAL_JOBS_NO_VENV": "1"}
    migrate = subprocess.Popen([sys.executable, "-m", "service", "migrate"], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert migrate.stderr is not None
        line = await asyncio.to_thread(migrate.stderr.readline)
        assert "waiting" in line, line
        await proxy.start()
        returncode = await asyncio.to_thread(migrate.wait, 60)
        rest = migrate.stderr.read()
        assert returncode == 0, rest
        assert "migrations applied" in rest
    finally:
        if migrate.poll() is None:
            migrate.kill()
        await proxy.stop()


async def _terminate_service_backends(direct: asyncpg.Pool, storming: asyncio.Event) -> int:
    """Every 150 ms while `storming` is set, terminate every service backend; answers how many."""
    kills = 0
    while storming.is_set():
        kills += await direct.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = ANY($1::text[])",
            list(SERVICE_APPLICATIONS),
        )
        await asyncio.sleep(0.15)
    return kills


class _ResumingReader:
    """One user stream, dropped on purpose every 20 messages and resumed by Last-Event-ID."""

    def __init__(self, url: str, headers: dict[str, str], statuses: list[int]) -> None:
        self.url = url
        self.headers = headers
        self.statuses = statuses
        self.terminal_seen: set[str] = set()
        self.seen_versions: dict[str, list[int]] = {}  # a completed job may change again (its outputs stored)
        self.done = asyncio.Event()
        self.last_id: str | None = None

    async def run(self, http: httpx.AsyncClient) -> None:
        while not self.done.is_set():
            headers = {**self.headers, **({"Last-Event-ID": self.last_id} if self.last_id else {})}
            try:
                async with http.stream("GET", self.url, headers=headers,
                                       timeout=httpx.Timeout(10, read=2)) as response:
                    self.statuses.append(response.status_code)
                    if response.status_code != 200:
                        await asyncio.sleep(0.1)
                        continue
                    await self._take(response)
            except httpx.ReadTimeout:
                continue  # quiet for 2 s: reconnect with the same Last-Event-ID

    async def _take(self, response: httpx.Response) -> None:
        """Read the stream's messages until 20 jobs came (or the test is done)."""
        taken = 0
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                field, _, value = line.partition(": ")
                event[field] = value
                continue
            if event.get("id"):
                self.last_id = event["id"]
            if event.get("event") == "job":
                job = msgspec.json.decode(event["data"])
                self.seen_versions.setdefault(job["request_id"], []).append(job["version"])
                if job["status"] in ("completed", "failed", "cancelled"):
                    self.terminal_seen.add(job["request_id"])
                taken += 1
            event = {}
            if taken >= 20 or self.done.is_set():
                break


async def _create_storm_job(http: httpx.AsyncClient, base: str, headers: dict[str, str], n: int,
                            statuses: list[int]) -> None:
    body = {"type": "image", "model_id": "fal-ai/flux/dev",
            "input": {"prompt": f"storm {n}", "fal_emulator": {"queue_ms": 100, "run_ms": 300}}}
    # Retried like a client honouring Retry-After, for a while rather than a number of tries:
    # on a busy machine a create can take longer than the 150 ms between kills, many times over.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await http.post(f"{base}/api/jobs", headers=headers, json=body)
        statuses.append(response.status_code)
        if response.status_code != 503:
            assert response.status_code == 202, response.text
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a job could not be created in 60 s of tries")


async def test_a_terminate_storm_while_100_jobs_run_loses_nothing(
    fault_db: str, direct: asyncpg.Pool, fal: FalEmulator,
) -> None:
    user = await create_user(direct, f"storm-{uuid.uuid4().hex[:8]}")
    # The sweep is the backstop for webhooks fal gave up on (the emulator's retries are compressed).
    service = await serve(lambda url: create_app_for(fault_db, fal, url, RECONCILE_INTERVAL_S="1", RECONCILE_AFTER_S="2",
                                                    MAX_OPEN_JOBS_PER_USER="1000", MAX_JOBS_PER_MINUTE="100000"))
    statuses: list[int] = []
    storming = asyncio.Event()
    storming.set()
    events = _ResumingReader(f"{service.url}/api/events", bearer(user), statuses)

    async with httpx.AsyncClient(timeout=httpx.Timeout(15)) as http:
        reader = asyncio.create_task(events.run(http))
        stormer = asyncio.create_task(_terminate_service_backends(direct, storming))
        try:
            gate = asyncio.Semaphore(8)

            async def gated(n: int) -> None:
                async with gate:
                    await _create_storm_job(http, service.url, bearer(user), n, statuses)

            await asyncio.gather(*(gated(n) for n in range(100)))
            await asyncio.sleep(1)  # keep killing while the jobs run
            storming.clear()
            kills = await stormer

            async def all_terminal() -> bool:
                return not await direct.fetchval(
                    "SELECT count(*) FROM fal_jobs WHERE user_id = $1 AND status IN ('pending', 'in_progress')",
                    user.user_id)

            await eventually(all_terminal, within_s=60, what="every job terminal")
            jobs = {row["request_id"] for row in await direct.fetch(
                "SELECT request_id FROM fal_jobs WHERE user_id = $1", user.user_id)}

            async def all_seen() -> bool:
                return jobs <= set(events.terminal_seen)

            await eventually(all_seen, within_s=30, what="the reader saw every job's end")
        finally:
            storming.clear()
            events.done.set()
            await asyncio.gather(stormer, return_exceptions=True)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await service.stop()
    assert len(jobs) >= 100
    assert kills > 0
    repeated = {request_id: versions for request_id, versions in events.seen_versions.items()
                if len(versions) != len(set(versions))}
    assert not repeated, repeated  # no state delivered twice across the resumes
    assert set(statuses) <= {200, 202, 503}, sorted(set(statuses))


async def test_an_event_committed_after_its_gap_was_skipped_still_reaches_streams(
    fault_db: str, direct: asyncpg.Pool,
) -> None:
    hub = Hub()
    listener = EventListener(fault_db, hub, gap_timeout_s=0.3)
    pool = await create_pool(fault_db, max_size=4)
    await listener.start()
    holder = await asyncpg.connect(fault_db, server_settings={"application_name": "fault-test"})
    await init_connection(holder)
    try:
        await listener.wait_connected(timeout=10)
        user_id = f"gap-{uuid.uuid4().hex[:8]}"
        slow, quick = await new_job(direct, user_id), await new_job(direct, user_id)

        async def caught_up() -> bool:
            return hub.position >= await direct.fetchval("SELECT max(id) FROM fal_job_events")

        await eventually(caught_up, within_s=10, what="the listener caught up")
        job_stream = await open_job_stream(hub, pool, user_id=user_id, request_id=slow, last_event_id=None)
        user_stream = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None, last_event_id=None)
        job_messages, user_messages = aiter(job_stream), aiter(user_stream)
        assert (await anext(job_messages)).event == "job"  # the snapshot
        ready = await anext(user_messages)
        assert ready.event == "ready"

        # A transaction takes an event id for `slow` and holds it open past the gap time-out...
        transaction = holder.transaction()
        await transaction.start()
        await apply_change(holder, slow, JobChange(status="completed", result={"late": True}))
        held_id = await holder.fetchval("SELECT max(id) FROM fal_job_events")
        async with pool.acquire() as connection:  # ...while a later id commits at once.
            await apply_change(connection, quick, JobChange(status="completed"))
        quick_message = await asyncio.wait_for(anext(user_messages), 10)
        assert msgspec.json.decode(quick_message.data)["request_id"] == quick  # released past the skipped gap
        assert listener._cursor is not None and listener._cursor.skipped_by_timeout >= 1
        assert held_id in listener._cursor.skipped_ids
        await transaction.commit()  # the late commit

        late_on_user_stream = await asyncio.wait_for(anext(user_messages), 10)
        late_job = msgspec.json.decode(late_on_user_stream.data)
        assert (late_job["request_id"], late_job["status"]) == (slow, "completed")
        # Its id on a user stream is a resume token, `<position>.<seq>`, placing it after everything
        # the stream had sent: a resume from it neither misses nor repeats anything.
        position, _, seq = str(late_on_user_stream.id).partition(".")
        assert int(position) >= int(quick_message.id) and seq.isdigit(), late_on_user_stream.id
        late_on_job_stream = await asyncio.wait_for(anext(job_messages), 10)
        assert msgspec.json.decode(late_on_job_stream.data)["status"] == "completed"
        assert late_on_job_stream.id == held_id
        with pytest.raises(StopAsyncIteration):  # the job's stream ends after its terminal event
            await asyncio.wait_for(anext(job_messages), 10)

        # A client that had reached `quick`'s event when the late commit came resumes from there:
        # it still gets the late event, which sits below its position.
        resumed = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None,
                                         last_event_id=quick_message.id)
        first = await asyncio.wait_for(anext(aiter(resumed)), 10)
        assert msgspec.json.decode(first.data)["request_id"] == slow and "." in str(first.id)
        resumed.close()
        # A client that had the late event resumes from its token: nothing is sent again.
        position, _, seq = str(late_on_user_stream.id).partition(".")
        after_late = await open_user_stream(hub, pool, user_id=user_id, statuses=None, types=None,
                                            last_event_id=ResumePoint(int(position), int(seq)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(aiter(after_late)), 0.5)
        after_late.close()
        user_stream.close()
    finally:
        await holder.close()
        await listener.aclose()
        await pool.close()


async def test_the_sweep_survives_a_poisoned_job_among_300_overdue(
    fault_db: str, direct: asyncpg.Pool, fal: FalEmulator,
) -> None:
    # Postgres rejects any change of the poisoned job, as it rejected fal's NUL bytes before.
    await direct.execute("""
        CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'poisoned row %', NEW.request_id; END $$;
        CREATE TRIGGER poison BEFORE UPDATE ON fal_jobs FOR EACH ROW
            WHEN (NEW.request_id LIKE 'poison-%' AND NEW.status IS DISTINCT FROM OLD.status) EXECUTE FUNCTION poison();
    """)
    service = await serve(lambda url: create_app_for(fault_db, fal, url))
    try:
        reconciler = service.app.state.reconciler

        async def swept() -> bool:  # the start-up sweep (on an empty table) has ended
            return (await reconciler.sweep_once()).ran

        await eventually(swept, within_s=10, what="a sweep of our own")
        poisoned = await new_job(direct, "sweep", f"poison-{uuid.uuid4()}")
        others = [await new_job(direct, "sweep") for _ in range(300)]
        await direct.execute("UPDATE fal_jobs SET updated_at = now() - interval '1 hour' WHERE user_id = 'sweep'")
        await direct.execute("UPDATE fal_jobs SET updated_at = now() - interval '2 hours' WHERE request_id = $1", poisoned)
        report = await reconciler.sweep_once()
        assert report.ran and report.failed == 1 and report.checked == 301, report
        assert report.unknown_to_fal == 301 and report.changed == 300, report
        statuses = await direct.fetch("SELECT status, count(*) FROM fal_jobs WHERE user_id = 'sweep' GROUP BY status")
        assert {row["status"]: row["count"] for row in statuses} == {"failed": 300, "pending": 1}
        assert await direct.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", poisoned) == "pending"
        again = await reconciler.sweep_once()  # the poisoned job does not wedge later sweeps either
        assert again.ran and again.checked == 1 and again.failed == 1, again
    finally:
        await service.stop()
    assert len(others) == 300


async def test_wait_answers_503_at_once_without_a_listener_and_rereads_at_its_deadline(
    fault_db: str, direct: asyncpg.Pool, fal: FalEmulator,
) -> None:
    listen = proxy_for(fault_db)  # only the LISTEN connection goes through it
    await listen.start()
    user = await create_user(direct, f"wait-{uuid.uuid4().hex[:8]}")
    request_id = await new_job(direct, user.user_id)
    service = await serve(lambda url: create_app_for(fault_db, fal, url, LISTEN_DATABASE_URL=listen.url_for(fault_db)))
    url = f"{service.url}/api/jobs/{request_id}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(12)) as http:

        async def listener(state: str) -> bool:
            return (await http.get(f"{service.url}/readyz")).json()["checks"]["listener"].startswith(state)

        try:
            await eventually(lambda: listener("ok"), within_s=10, what="the listener connected")
            await listen.stop()  # the LISTEN connection drops and cannot come back
            await eventually(lambda: listener("disconnected"), within_s=10, what="the listener noticed")
            # Nothing would wake a wait: 503 at once, not after 30 s (the client gives up at 12).
            waited = await http.get(f"{url}?wait=30", headers=bearer(user))
            assert waited.status_code == 503 and waited.headers["retry-after"], waited.text
            await listen.start()
            await eventually(lambda: listener("ok"), within_s=10, what="the listener reconnected")
            listen.partition()  # connected, yet it hears nothing: the wait must not answer stale
            hub = service.app.state.hub
            waiting = asyncio.create_task(http.get(f"{url}?wait=3", headers=bearer(user)))

            async def subscribed() -> bool:
                return hub.subscriber_count > 0

            await eventually(subscribed, within_s=10, what="the wait subscribed")
            await asyncio.sleep(0.5)  # its one read of the job follows the subscription at once
            async with direct.acquire() as connection:
                await apply_change(connection, request_id, JobChange(status="in_progress"))
            answer = await waiting
            assert answer.status_code == 200 and answer.json()["status"] == "in_progress", answer.text
        finally:
            listen.heal()
            await service.stop()
            await listen.stop()


async def test_a_stream_opened_while_the_process_shuts_down_ends_at_once(
    fault_db: str, direct: asyncpg.Pool, fal: FalEmulator,
) -> None:
    user = await create_user(direct, f"shutdown-{uuid.uuid4().hex[:8]}")
    service = await serve(lambda url: create_app_for(fault_db, fal, url))
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10)) as http:
            async with http.stream("GET", f"{service.url}/api/events", headers=bearer(user)) as before:
                assert before.status_code == 200
                # What SIGTERM does first: uvicorn then waits for open responses, and a browser may
                # reconnect here meanwhile; that stream must end too, or shutdown waits on it.
                service.app.state.hub.shut_down()
                assert [line async for line in before.aiter_lines() if line.startswith("event:")] == ["event: ready"]
            async with http.stream("GET", f"{service.url}/api/events", headers=bearer(user)) as during:
                assert during.status_code == 200
                async with asyncio.timeout(10):  # heartbeats would keep a stream that never ends alive
                    lines = [line async for line in during.aiter_lines()]
                assert "event: ready" in lines
    finally:
        await service.stop()
