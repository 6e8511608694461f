"""What the test suite and the benchmarks both need, in one place: a loopback listening socket and a
migrated database of a run's own on a Postgres server. Never imported by the service itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.db.migrations import apply_migrations

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


def loopback_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1, for uvicorn to serve on (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn sets TCP_NODELAY only on sockets it binds itself; without it keep-alive requests
    # stall ~40 ms on Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` on the same server, everything else kept."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


ADMIN_TIMEOUT_S = 60.0
"""Bounds connecting and one admin statement: a stuck server fails the run instead of hanging it."""


async def admin_execute(server_dsn: str, sql: str) -> None:
    """One statement on a connection of its own (CREATE/DROP DATABASE cannot run in a transaction)."""
    connection = await asyncpg.connect(server_dsn, timeout=ADMIN_TIMEOUT_S)
    try:
        await connection.execute(sql, timeout=ADMIN_TIMEOUT_S)
    finally:
        await connection.close()


def _silent(message: str) -> None:
    pass


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, prefix: str,
                           log: Callable[[str], None] = _silent) -> AsyncIterator[tuple[str, str]]:
    """(name, DSN) of a migrated database of the caller's own, `<prefix>_<random>` on the server, so
    that runs side by side do not clash; dropped at the end, also on errors and Ctrl-C. A drop that
    fails is told to `log` when one is given (a bench reports it and goes on), else raised."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(server_dsn, name)
        log(f"database {name}: applying migrations")
        await asyncio.to_thread(apply_migrations, dsn)
        yield name, dsn
    finally:
        try:
            await admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"database {name} dropped")
        except Exception as error:
            log(f"could not drop database {name}: {error!r}")
            if log is _silent:
                raise


@contextlib.contextmanager
def migrated_database(server_dsn: str, prefix: str) -> Iterator[str]:
    """The DSN of a scratch database, outside a running event loop (a sync pytest fixture)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_execute(server_dsn, f'CREATE DATABASE "{name}"'))
    try:
        dsn = with_database(server_dsn, name)
        apply_migrations(dsn)
        yield dsn
    finally:
        asyncio.run(admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
