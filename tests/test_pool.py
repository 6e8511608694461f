"""The asyncpg pool as the service leases it (service/db/pool.py): cheap leases, and fair ones."""

from __future__ import annotations

import asyncio

from service.db.pool import create_pool


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
