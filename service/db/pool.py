"""The asyncpg pool: JSON codecs that keep integers exact (fal seeds exceed 2^53), and bounded waits.

Nothing waits on Postgres without a limit: connecting, acquiring a connection and every statement
have a time-out. A connection that broke under a call (a terminated backend, a time-out mid-query,
a protocol left in the middle of an operation) is terminated instead of going back to the pool,
and the failure leaves as `DatabaseUnavailable`, which callers answer with a 503. A query that is
merely wrong (a constraint, a syntax error) keeps its own exception.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import asyncpg
import asyncpg.pool
import msgspec

from service.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_encode = msgspec.json.encode
_decode = msgspec.json.decode

# SQLSTATE classes that mean "the database cannot serve us right now", not "this query is wrong":
# connection exceptions, insufficient resources, operator intervention (shutdown, restart, a
# cancelled statement), and a database that is gone.
UNAVAILABLE_SQLSTATES = ("08", "53", "57", "3D000")


CONNECT_TIMEOUT_S = 1.5
ACQUIRE_TIMEOUT_S = 1.5
STATEMENT_TIMEOUT_S = 2.0
"""The defaults of DB_CONNECT_TIMEOUT_S, DB_ACQUIRE_TIMEOUT_S and DB_STATEMENT_TIMEOUT_S (the service
passes its settings; the CLI and the tests take these). Acquire and statement together, 3.5 s: a
request that waits for a connection, then meets a database that stopped answering, gets its 503
within 5 s (fal's webhook waits 15 s)."""


def is_unavailable(error: BaseException) -> bool:
    """True for a failure of the database or of the connection to it, not of the query."""
    if isinstance(error, asyncpg.PostgresError):
        return (error.sqlstate or "").startswith(UNAVAILABLE_SQLSTATES)
    # InternalClientError: asyncpg's protocol is in a state it cannot continue from ("cannot switch
    # to state 12; another operation is in progress" after a backend was killed mid-statement).
    return isinstance(error, (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError))


def _encode_jsonb(value: Any) -> bytes:
    # jsonb's binary form is a version byte, then the JSON text: msgspec's bytes go as they are,
    # never decoded to str and encoded again (a job's JSON is written twice per change).
    return b"\x01" + _encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return _decode(memoryview(data)[1:])


async def init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb,
                                    format="binary")
    await connection.set_type_codec("json", schema="pg_catalog", encoder=_encode, decoder=_decode, format="binary")


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): one
    round trip per release that our code never needs. Pool connections take no session state (the
    sweep's advisory lock lives on a connection of its own, LISTEN too), and asyncpg still rolls
    back a transaction left open."""


class DatabasePool(asyncpg.pool.Pool):
    """asyncpg's pool whose `acquire` (and so `fetch`, `fetchval`, … too) waits at most
    `acquire_timeout_s`, discards broken connections and raises `DatabaseUnavailable`."""

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> _Lease:  # type: ignore[override]
        return _Lease(self, self.acquire_timeout_s if timeout is None else timeout)


class _Lease:
    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, pool: DatabasePool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: Any = None

    async def __aenter__(self) -> Any:
        pool = self._pool
        # asyncpg enforces an acquire's time-out by running it in a task of its own; when a
        # connection is free nothing waits, so none is needed (a holder not yet connected still
        # connects within the connect time-out).
        timeout = None if pool._queue.qsize() else self._timeout
        try:
            self._connection = await asyncpg.pool.Pool.acquire(pool, timeout=timeout)
        except Exception as error:
            if is_unavailable(error):
                raise DatabaseUnavailable(f"the database is unavailable ({_name(error)}); retry later") from error
            raise
        return self._connection

    def __await__(self) -> Any:
        # `connection = await pool.acquire()` (then `pool.release(connection)`), as asyncpg allows.
        return asyncpg.pool.Pool.acquire(self._pool, timeout=self._timeout).__await__()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        connection, self._connection = self._connection, None
        broken = error is not None and (is_unavailable(error) or isinstance(error, asyncio.CancelledError))
        if broken and connection._con is not None:
            # Interrupted mid-call, its protocol state is unknown: never hand it to the next caller.
            connection._con.terminate()
        try:
            await _release(connection)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as failed:
            # release terminates a connection it cannot reset; the pool makes a new one
            log.debug("connection discarded on release", extra={"action": "db_release", "error": _name(failed)})
        if error is not None and not isinstance(error, asyncio.CancelledError) and is_unavailable(error):
            raise DatabaseUnavailable(f"the database is unavailable ({_name(error)}); retry later") from error


async def _release(connection: Any) -> None:
    """`Pool.release` without its `asyncio.shield`, which costs a task per release.

    The shield keeps a cancelled caller from leaving a connection half-released. Here the
    release has nothing to wait for unless a transaction was left open (its ROLLBACK is bounded
    by the statement time-out), and a cancellation that lands there makes asyncpg terminate the
    connection, which hands its slot back to the pool: nothing leaks either way."""
    con = connection._con
    if con is None:
        return  # already released
    con._on_release()
    await connection._holder.release(None)
    # The release above woke the first waiter, but the connection only goes to it when it runs: a
    # caller that acquires again at once (a loop of queries) would take it back every time and
    # starve the waiters into their time-out. One turn of the loop lets the waiter go first, as
    # asyncpg's release in a task of its own did.
    await asyncio.sleep(0)


def _name(error: BaseException) -> str:
    return type(error).__name__


async def create_pool(
    dsn: str, *, min_size: int = 0, max_size: int = 10,
    connect_timeout_s: float = CONNECT_TIMEOUT_S, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> DatabasePool:
    """A pool that opens its connections on first use (none at creation), so the service starts with
    Postgres down. `min_size` is accepted for the callers' sake and ignored: asyncpg would connect
    that many at creation; an idle connection stays open 300 s, which keeps a busy pool warm."""
    del min_size
    pool = DatabasePool(
        dsn, init_size=0, min_size=0, max_size=max_size, init=init_connection, reset=_keep_session,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record,
        max_queries=50000, max_inactive_connection_lifetime=300.0, connect=None, setup=None, loop=None,
        acquire_timeout_s=acquire_timeout_s, timeout=connect_timeout_s, command_timeout=statement_timeout_s,
        server_settings={"application_name": "fal-jobs"},
    )
    try:
        await pool
    except Exception as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(f"the database is unavailable ({_name(error)})") from error
        raise
    return pool
