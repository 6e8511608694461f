"""The asyncpg pool as the service leases it (service/db/pool.py): cheap leases, fair ones, time-outs
the server enforces, and what a call interrupted on our side leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import asyncpg
import pytest
import pytest_asyncio

from service.db.pool import create_pool, is_lock_timeout
from service.errors import DatabaseUnavailable


async def test_callers_that_query_in_a_loop_do_not_starve_the_waiters(database_url: str) -> None:
    """A lease is released without a task of its own, so the releasing caller could take its
    connection straight back on its next acquire, again and again, while the callers waiting for
    one run into their time-out (this failed bench/webhooks.py's intake phase). Each caller counts
    how many leases others took while it waited: with a fair hand-over that stays near the number
    of callers; with the starvation it ran into the hundreds."""
    pool = await create_pool(database_url, max_size=3)
    callers, rounds = 9, 60
    taken = 0
    worst = 0

    async def caller() -> None:
        nonlocal taken, worst
        for _ in range(rounds):
            before = taken
            async with pool.acquire() as connection:
                worst = max(worst, taken - before)
                taken += 1
                await connection.fetchval("SELECT 1")

    try:
        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(callers))), timeout=60)
    finally:
        await pool.close()
    assert taken == callers * rounds
    # Fair: ~2-3 x callers here (connections are made while the first ones wait); starved: ~400.
    assert worst <= 5 * callers, f"a waiter saw {worst} leases go to others before its own"


# ---- time-outs the server enforces, and what an interrupted call leaves behind -----------------

class Rows(NamedTuple):
    table: str
    holder: asyncpg.Connection
    """Holds rows in a transaction of its own (not named like the pool's, no time-outs)."""
    observer: asyncpg.Connection
    """Reads pg_stat_activity, outside any transaction: within one, it is a snapshot taken at its start."""


@pytest_asyncio.fixture(loop_scope="session")
async def rows(database_url: str) -> AsyncIterator[Rows]:
    """A table of its own (rows 1 and 2, v = 0) and two connections of the test's own."""
    table = f"pool_rows_{uuid.uuid4().hex[:8]}"
    holder = await asyncpg.connect(database_url, server_settings={"application_name": "pool-test"})
    observer = await asyncpg.connect(database_url, server_settings={"application_name": "pool-test"})
    await holder.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL); "
                         f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    try:
        yield Rows(table, holder, observer)
    finally:
        await holder.close()
        await observer.execute(f"DROP TABLE IF EXISTS {table}")
        await observer.close()


async def running(rows: Rows) -> list[asyncpg.Record]:
    """The pool's backends (application_name fal-jobs) still running a statement on the table."""
    return await rows.observer.fetch(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'fal-jobs' AND state <> 'idle' AND query LIKE '%' || $1 || '%' "
        "AND pid <> pg_backend_pid()", rows.table)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within 10 s")


async def test_a_statement_answered_503_on_a_held_row_never_commits_later(
    database_url: str, rows: Rows,
) -> None:
    """A row held FOR UPDATE by a long transaction: the statement waiting for it ends on the server
    at the lock time-out, before its 503, and frees the row it had locked already. Checking only
    on the client left the backend waiting with that lock, and it committed once the holder ended."""
    table, holder, observer = rows
    pool = await create_pool(database_url, max_size=2)  # the service's time-outs: lock 1 s, statement 2 s
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(f"SELECT 1 FROM {table} WHERE id = 2 FOR UPDATE")
        with pytest.raises(DatabaseUnavailable) as refused:
            # Locks row 1, then waits for row 2.
            await pool.execute(f"UPDATE {table} SET v = v + 1 WHERE id = ANY($1::int[])", [1, 2])
        assert is_lock_timeout(refused.value) and "held by another transaction" in refused.value.message
        assert await running(rows) == []  # nothing of ours left running it on the server
        await pool.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1")  # row 1 is free again
        await transaction.commit()  # the holder ends
        assert await running(rows) == []
        assert dict(await observer.fetch(f"SELECT id, v FROM {table}")) == {1: 10, 2: 0}
    finally:
        await pool.close()


async def test_a_statement_past_its_time_out_is_ended_by_the_server_and_keeps_its_connection(
    database_url: str, rows: Rows,
) -> None:
    """The server's statement time-out answers 57014 (a 503), and the connection that carried that
    answer is healthy: it goes back to the pool (no reconnect per time-out)."""
    table, _holder, _observer = rows
    pool = await create_pool(database_url, max_size=1, statement_timeout_s=0.3)
    try:
        async with pool.acquire() as connection:
            pid = await connection.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(DatabaseUnavailable) as refused:
            await pool.execute(f"SELECT pg_sleep(30) FROM {table}")
        assert isinstance(refused.value.__cause__, asyncpg.QueryCanceledError), repr(refused.value.__cause__)
        assert await running(rows) == []
        assert await pool.fetchval("SELECT pg_backend_pid()") == pid
    finally:
        await pool.close()


@pytest.mark.parametrize("interruption", ["client time-out", "cancelled task"])
async def test_a_call_interrupted_on_our_side_is_cancelled_on_the_server_and_its_connection_replaced(
    database_url: str, rows: Rows, interruption: str,
) -> None:
    """The client stops waiting (asyncpg's time-out, the backstop) or the task is cancelled while
    the server still runs the statement: the lease waits for asyncpg's cancel request to reach the
    server before it closes the connection, so the backend neither goes on with the statement nor
    commits it later, and the next lease gets a new, working connection. The server's own limits
    are far away here and its client check is off: only the cancel can stop the statement."""
    table, holder, observer = rows
    pool = await create_pool(database_url, max_size=1, statement_timeout_s=60, lock_timeout_s=60,
                             client_check_interval_s=None)
    pids: list[int] = []

    async def write(timeout: float | None) -> None:
        async with pool.acquire() as connection:
            pids.append(await connection.fetchval("SELECT pg_backend_pid()"))
            await connection.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1", timeout=timeout)

    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(f"SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE")
        if interruption == "client time-out":
            with pytest.raises(DatabaseUnavailable):
                await write(timeout=0.3)
        else:
            task = asyncio.create_task(write(timeout=None))

            async def waiting_for_the_row() -> bool:
                return any(row["wait_event_type"] == "Lock" for row in await running(rows))

            await eventually(waiting_for_the_row, "the write waits for the held row")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # The cancel was answered before the lease ended: the backend no longer runs the statement.
        assert await running(rows) == []
        await transaction.commit()  # the holder ends: nothing of ours is left to write row 1

        async def gone() -> bool:
            return not await observer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pids[0])

        await eventually(gone, "the interrupted connection closed")
        assert await observer.fetchval(f"SELECT v FROM {table} WHERE id = 1") == 0
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") != pids[0]
            assert await connection.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_new_arrival_does_not_overtake_a_waiting_lease(database_url: str) -> None:
    """A release hands the connection to the longest waiter: a request that arrives while others
    wait (here: scheduled before the release, so it runs before the woken waiter) gets in line
    behind them instead of taking the connection that sits free until the waiter runs."""
    pool = await create_pool(database_url, max_size=1)
    order: list[str] = []

    async def lease(name: str) -> None:
        async with pool.acquire(timeout=30) as connection:
            order.append(name)
            await connection.fetchval("SELECT 1")

    try:
        async with pool.acquire() as connection:
            await connection.fetchval("SELECT 1")
            waiters = [asyncio.create_task(lease(f"waiter {n}")) for n in range(3)]
            await asyncio.sleep(0.1)  # each is waiting for the one connection
            arrivals = [asyncio.create_task(lease(f"arrival {n}")) for n in range(3)]
        await asyncio.gather(*waiters, *arrivals)
    finally:
        await pool.close()
    overtakes = sum(1 for n, name in enumerate(order) if name.startswith("arrival")
                    and any(later.startswith("waiter") for later in order[n + 1:]))
    assert overtakes == 0, order
