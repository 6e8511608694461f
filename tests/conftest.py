"""The test suite's shared ground: a database of its own on a real Postgres, and the service under
uvicorn on a free port over real HTTP.

Postgres is the server DATABASE_URL names, or else an embedded one in a temporary folder. Each run
creates its own database there and drops it at the end, so two runs at once do not clash.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio
import uvicorn

from service.auth.api_keys import NewUser, create_user
from service.db.migrations import apply_migrations
from service.db.pool import create_pool
from service.settings import Settings, load_settings

NO_DOTENV = Path("/nonexistent/.env")


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


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
    name = f"fal_jobs_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(server_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    dsn = _with_database(server_dsn, name)
    apply_migrations(dsn)
    try:
        yield dsn
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=20)
    yield pool
    await pool.close()


def service_settings(database_url: str, **overrides: str) -> Settings:
    return load_settings({"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **overrides}, dotenv=NO_DOTENV)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer(msgspec.Struct):
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, timeout=15)


async def serve(app: object) -> RunningServer:
    """Run an ASGI app under uvicorn on a free loopback port, in this event loop."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    host, port = sock.getsockname()
    return RunningServer(url=f"http://{host}:{port}", server=server, task=task)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_url(database_url: str) -> AsyncIterator[str]:
    from service.app import create_app

    running = await serve(create_app(service_settings(database_url)))
    yield running.url
    await running.stop()


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


def bearer(user: NewUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"}
