"""What both benchmarks need: a Postgres server, a scratch database on it, loopback sockets, and
nearest-rank percentiles. Scripts, not tests: nothing here asserts."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


class BenchFailure(RuntimeError):
    pass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn sets TCP_NODELAY only on sockets it binds itself; keep-alive requests would stall on Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def admin_execute(server_dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def open_server(database_url: str | None) -> tuple[str, Any]:
    """(server DSN, pgserver handle or None): --database-url, else DATABASE_URL, else embedded."""
    dsn = database_url or os.environ.get("DATABASE_URL")
    if dsn:
        return dsn, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
        import pgserver

        print("[bench] no --database-url or DATABASE_URL: an embedded pgserver in a temporary folder", file=sys.stderr)
        server = pgserver.get_server(tempfile.mkdtemp(prefix="fal-jobs-bench-pg-"), cleanup_mode="delete")
    return server.get_uri(), server
