"""The asyncpg pool: JSON codecs that keep integers exact (fal seeds exceed 2^53), and bounded waits.

Nothing waits on Postgres without a limit: connecting, acquiring a connection and every statement
have a time-out. The statement and lock time-outs are the server's own (`statement_timeout`,
`lock_timeout`, set on every pooled connection), so a statement the caller was answered 503 for
has ended on the server too and cannot commit later, and the row locks it took are free again.
asyncpg's client-side time-out stays as a backstop, a little longer, for a server or network that
does not answer at all; when it fires, the cancel request reaches the server before the connection
is closed. A connection interrupted on our side (that backstop, a cancelled task, a protocol left
in the middle of an operation) is never handed to the next caller; one that merely carried the
server's error back (a time-out, a lock time-out) is healthy and goes back to the pool. Either way
the failure leaves as `DatabaseUnavailable`, which callers answer with a 503. A query that is
merely wrong (a constraint, a syntax error) keeps its own exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncpg
import asyncpg.pool
import msgspec

from service.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger(__name__)

_encode = msgspec.json.encode
_decode = msgspec.json.decode

# SQLSTATE classes that mean "the database cannot serve us right now", not "this query is wrong":
# connection exceptions, insufficient resources, operator intervention (shutdown, restart, a
# statement cancelled by its time-out), a database that is gone, and a lock not granted within
# the lock time-out (a row held by a long transaction: retrying later is the remedy).
LOCK_NOT_AVAILABLE = "55P03"
UNAVAILABLE_SQLSTATES = ("08", "53", "57", "3D000", LOCK_NOT_AVAILABLE)


CONNECT_TIMEOUT_S = 1.5
ACQUIRE_TIMEOUT_S = 1.5
STATEMENT_TIMEOUT_S = 2.0
LOCK_TIMEOUT_S = 1.0
IDLE_IN_TRANSACTION_TIMEOUT_S = 5.0
"""The defaults of DB_CONNECT_TIMEOUT_S, DB_ACQUIRE_TIMEOUT_S, DB_STATEMENT_TIMEOUT_S,
DB_LOCK_TIMEOUT_S and DB_IDLE_IN_TRANSACTION_TIMEOUT_S (the service passes its settings; the CLI
and the tests take these). Acquire and statement together, 3.5 s: a request that waits for a
connection, then meets a slow database, gets its 503 within 5 s (fal's webhook waits 15 s). The
lock time-out is shorter than the statement's, so a statement stuck behind a held row fails (and
frees the rows it locked) before the statement time-out would end it."""
BACKSTOP_MARGIN_S = 0.5
"""How much longer than the server's statement time-out the client waits for an answer: enough for
the server's own error to arrive first, so the backstop fires only when nothing comes back."""
CANCEL_WAIT_S = 0.5
"""How long a lease interrupted on our side waits for asyncpg's cancel request to reach the server
and be answered before it closes the connection regardless (a partition answers nothing)."""
CLIENT_CHECK_INTERVAL_S = 1.0
"""PostgreSQL 14+: how often a backend running a statement checks that its client is still there,
so a statement whose connection is gone ends before its statement time-out."""


def is_unavailable(error: BaseException) -> bool:
    """True for a failure of the database or of the connection to it, not of the query."""
    if isinstance(error, asyncpg.PostgresError):
        return (error.sqlstate or "").startswith(UNAVAILABLE_SQLSTATES)
    # InternalClientError: asyncpg's protocol is in a state it cannot continue from ("cannot switch
    # to state 12; another operation is in progress" after a backend was killed mid-statement).
    return isinstance(error, (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError))


def is_lock_timeout(error: BaseException) -> bool:
    """True when the statement (or, for `DatabaseUnavailable`, its cause) waited past the lock
    time-out for a row or lock another transaction holds."""
    cause = error.__cause__ if isinstance(error, DatabaseUnavailable) else error
    return isinstance(cause, asyncpg.PostgresError) and cause.sqlstate == LOCK_NOT_AVAILABLE


def _interrupted(error: BaseException) -> bool:
    """The call was cut off on our side (the client's backstop time-out, a cancelled task, a broken
    protocol), so the server may still be running it; a Postgres error came from the server, which
    has ended the statement and left the connection in a known state."""
    if isinstance(error, asyncio.CancelledError):
        return True
    return is_unavailable(error) and not isinstance(error, asyncpg.PostgresError)


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


class _FairQueue(asyncpg.pool._PoolConnectionHolderQueue):
    """asyncpg's queue of connection holders, with a released holder handed straight to the caller
    that has waited longest. With asyncio.Queue's own hand-over the holder sits in the queue until
    the woken waiter runs, and any caller that runs first (the releasing one acquiring again, a new
    request) takes it; the waiter then joins the back of the line, and under a sustained load the
    oldest waiters are the ones that reach the acquire time-out."""

    def put_nowait(self, item: Any) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(item)
                return
        super().put_nowait(item)

    async def get(self) -> Any:
        if not self.empty():  # a holder waits in the queue only while nobody waits for one
            return self.get_nowait()
        getter = self._get_loop().create_future()
        self._getters.append(getter)
        try:
            return await getter
        except BaseException:
            if getter.done() and not getter.cancelled():
                self.put_nowait(getter.result())  # handed one, then cancelled: it goes to the next in line
            else:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise


class DatabasePool(asyncpg.pool.Pool):
    """asyncpg's pool whose `acquire` (and so `fetch`, `fetchval`, … too) waits at most
    `acquire_timeout_s`, in turn, discards interrupted connections and raises `DatabaseUnavailable`."""

    # asyncpg's own attributes (set in its __init__; asyncpg ships no types), declared for the checker.
    _queue: asyncpg.pool._PoolConnectionHolderQueue
    _maxsize: int

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    async def _initialize(self) -> None:
        await super()._initialize()
        # With no connection opened at creation (init_size 0) the holders are all alike: move them
        # to the fair queue before anyone acquires.
        holders, self._queue = self._queue, _FairQueue(maxsize=self._maxsize)
        while not holders.empty():
            self._queue.put_nowait(holders.get_nowait())

    def acquire(self, *, timeout: float | None = None) -> _Lease:
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
        if error is not None and _interrupted(error):
            await _drop(connection)
        try:
            await _release(connection)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as failed:
            # release terminates a connection it cannot reset; the pool makes a new one
            log.debug("connection discarded on release", extra={"action": "db_release", "error": _name(failed)})
        if error is not None and not isinstance(error, asyncio.CancelledError) and is_unavailable(error):
            if is_lock_timeout(error):
                raise DatabaseUnavailable("a row this needs is held by another transaction (lock time-out); "
                                          "retry later") from error
            raise DatabaseUnavailable(f"the database is unavailable ({_name(error)}); retry later") from error


async def _drop(connection: Any) -> None:
    """Close a connection whose call was interrupted on our side, once the server has stopped the
    statement. asyncpg sends the server a cancel request from a task of its own when a call times
    out or is cancelled; closing the connection at once would cancel that task before it sent
    anything, and the backend would go on with the statement, its row locks, and its commit."""
    con = connection._con
    if con is None:
        return  # already released
    try:
        if con._protocol is not None and con._protocol._is_cancelling():
            # Waits for the cancel to go out and for the server's answer to the cancelled call;
            # asyncpg closes the connection itself when that takes longer.
            await con._protocol._wait_for_cancellation(CANCEL_WAIT_S)
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError):
        pass
    finally:
        # Never reuse it: its protocol state after the interruption is asyncpg's guess.
        if not con.is_closed():
            con.terminate()


async def _release(connection: Any) -> None:
    """`Pool.release` without its `asyncio.shield`, which costs a task per release.

    The shield keeps a cancelled caller from leaving a connection half-released. Here the
    release has nothing to wait for unless a transaction was left open (its ROLLBACK is bounded
    by the statement time-out), and a cancellation that lands there makes asyncpg terminate the
    connection, which hands its slot back to the pool: nothing leaks either way. The fair queue
    hands the connection to the longest waiter at once, so a caller that acquires again right
    away (a loop of queries) waits its turn behind them."""
    con = connection._con
    if con is None:
        return  # already released
    con._on_release()
    await connection._holder.release(None)


def _name(error: BaseException) -> str:
    return type(error).__name__


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


async def create_pool(
    dsn: str, *, min_size: int = 0, max_size: int = 10,
    connect_timeout_s: float = CONNECT_TIMEOUT_S, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S, lock_timeout_s: float = LOCK_TIMEOUT_S,
    idle_in_transaction_timeout_s: float = IDLE_IN_TRANSACTION_TIMEOUT_S,
    client_check_interval_s: float | None = CLIENT_CHECK_INTERVAL_S,
) -> DatabasePool:
    """A pool that opens its connections on first use (none at creation), so the service starts with
    Postgres down. `min_size` is accepted for the callers' sake and ignored: asyncpg would connect
    that many at creation; an idle connection stays open 300 s, which keeps a busy pool warm.

    Every connection carries the time-outs as session settings of the server's. Only the pool's
    connections do: the LISTEN connection and the sweep's lock connection are opened apart and
    keep the server's defaults (both stay idle outside any transaction)."""
    del min_size
    server_settings = {
        "application_name": "fal-jobs",
        "statement_timeout": _ms(statement_timeout_s),
        "lock_timeout": _ms(lock_timeout_s),
        # A transaction left open by a process that stopped (frozen, or stuck in its own code) holds
        # its row locks; the server ends such a session and frees them.
        "idle_in_transaction_session_timeout": _ms(idle_in_transaction_timeout_s),
    }

    async def init(connection: asyncpg.Connection) -> None:
        await init_connection(connection)
        # Not a startup setting: a server before 14 refuses to connect with a parameter it does not know.
        if client_check_interval_s is not None and connection.get_server_version() >= (14,):
            await connection.execute(f"SET client_connection_check_interval = {_ms(client_check_interval_s)}")

    pool = DatabasePool(
        dsn, init_size=0, min_size=0, max_size=max_size, init=init, reset=_keep_session,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record,
        max_queries=50000, max_inactive_connection_lifetime=300.0, connect=None, setup=None, loop=None,
        acquire_timeout_s=acquire_timeout_s, timeout=connect_timeout_s,
        command_timeout=statement_timeout_s + BACKSTOP_MARGIN_S, server_settings=server_settings,
    )
    try:
        await pool
    except Exception as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(f"the database is unavailable ({_name(error)})") from error
        raise
    return pool
