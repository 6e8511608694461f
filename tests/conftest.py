"""The test suite's shared ground: a database of its own on a real Postgres, and the service under
uvicorn on a free port over real HTTP.

Postgres is the server DATABASE_URL names, or else an embedded one in a temporary folder. Each run
creates its own database there and drops it at the end, so two runs at once do not clash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio
import uvicorn

from service.auth.api_keys import NewUser, create_user
from service.db.pool import create_pool
from service.emulator import FalEmulator, create_emulator_app
from service.settings import Settings, load_settings
from service.testing import loopback_socket as free_socket
from service.testing import migrated_database
from service.testing import scratch_database as shared_scratch_database
from service.testing import with_database as _with_database  # noqa: F401 - tests import it from here

NO_DOTENV = Path("/nonexistent/.env")


def _with_user(dsn: str, user: str) -> str:
    """`dsn` connecting as `user` (no password), everything else kept: a TCP host and port, or none
    at all when the server is reached over a Unix socket (`?host=/dir`, the embedded server)."""
    parts = urlsplit(dsn)
    where = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{where}"))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A Postgres server: DATABASE_URL's, or an embedded one that lives as long as the run."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="fal-jobs-pg-"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(server_dsn: str) -> Iterator[str]:
    with migrated_database(server_dsn, "fal_jobs_test") as dsn:
        yield dsn


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=20)
    yield pool
    await pool.close()


def service_settings(database_url: str, **overrides: str) -> Settings:
    return load_settings({"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **overrides}, dotenv=NO_DOTENV)


class RunningServer(msgspec.Struct):
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    app: Any

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, timeout=15)


async def start_uvicorn(app: object, sock: socket.socket, *, lifespan: str = "on") -> RunningServer:
    """Run `app` under uvicorn on an already bound socket, in this event loop."""
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan,  # type: ignore[arg-type]
                                           timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(30):  # start-up waits up to 10 s for the listener
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
    return RunningServer(url=f"http://{host}:{port}", server=server, task=task, app=app)


async def serve(build: Callable[[str], object]) -> RunningServer:
    """Run the ASGI app `build(url)` under uvicorn on a free loopback port, in this event loop.

    The socket is bound first, so that the app knows its own URL (a webhook URL, say)."""
    sock = free_socket()
    host, port = sock.getsockname()
    return await start_uvicorn(build(f"http://{host}:{port}"), sock)


FAL_KEY = "test-fal-key:secret"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fal() -> AsyncIterator[FalEmulator]:
    """The local fal, standalone on its own port, with fal's retry schedule compressed."""
    holder: dict[str, FalEmulator] = {}

    def build(url: str) -> object:
        holder["emulator"] = FalEmulator(url, FAL_KEY, retry_schedule_s=(0.05, 0.1, 0.2, 0.4), webhook_timeout_s=5)
        return create_emulator_app(holder["emulator"])

    running = await serve(build)
    yield holder["emulator"]
    await running.stop()


def fal_settings(database_url: str, fal: FalEmulator, url: str | None, **overrides: str) -> Settings:
    """The service pointed at the emulator; `url` is its APP_URL (None: no webhooks, it follows jobs)."""
    values = {"FAL_KEY": FAL_KEY, "FAL_QUEUE_URL": fal.base_url, "FAL_API_URL": fal.base_url, "FAL_JWKS_URL": fal.jwks_url,
              "FAL_REST_URL": fal.base_url, "FAL_CDN_URL": fal.base_url,
              "FAL_SCHEMA_URL": fal.schema_url, "RECONCILE_INTERVAL_S": "3600", "SSE_HEARTBEAT_S": "0.5", **({"APP_URL": url} if url else {})}
    return service_settings(database_url, **{**values, **overrides})


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service(database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    """The service with webhooks (APP_URL is its own URL), talking to the emulator."""
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, url)))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def polling_service(database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    """The service without APP_URL: it submits without a webhook and follows jobs itself."""
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, None)))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_url(service: RunningServer) -> str:
    return service.url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def user(pool: asyncpg.Pool) -> NewUser:
    return await create_user(pool, f"user-{uuid.uuid4().hex[:10]}")


@pytest_asyncio.fixture(loop_scope="session")
async def other_user(pool: asyncpg.Pool) -> NewUser:
    return await create_user(pool, f"other-{uuid.uuid4().hex[:10]}")


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """A migrated database of the caller's own, dropped at the end: for a test whose service must see
    no other test's jobs (a sweep would fail them) or whose counts must be its own."""
    async with shared_scratch_database(server_dsn, "fal_jobs_scratch") as (_, dsn):
        yield dsn


@contextlib.asynccontextmanager
async def scratch_role(dsn: str, *, create: bool = True) -> AsyncIterator[tuple[str, str]]:
    """A login role of the caller's own on a scratch database: (role, a dsn that connects as it).
    Its connections are told apart from the test's own in pg_stat_activity by `usename`. With
    create=False the role does not exist yet: `CREATE ROLE` it when the test wants it to work."""
    role = f"fal_jobs_role_{uuid.uuid4().hex[:10]}"
    role_dsn = _with_user(dsn, role)
    admin = await asyncpg.connect(dsn)
    try:
        if create:
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        # Granted to PUBLIC (a scratch database has no other users), so the role owns nothing and
        # holds no grant of its own, and DROP ROLE needs nothing else.
        await admin.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC; "
                            "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC")
        yield role, role_dsn
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def bearer(user: NewUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"}
