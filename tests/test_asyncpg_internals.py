"""The private parts of asyncpg (and of asyncio.Queue) that service/db/pool.py builds on, pinned.

pool.py replaces the pool's queue of connection holders with a fair one, releases a lease without
`Pool.release`'s shield, and waits for asyncpg's cancel request before it drops an interrupted
connection: each of those reads or calls members that asyncpg does not promise to keep. An asyncpg
(or Python) upgrade that renames, removes or reshapes one fails here, with a message naming the
member, before it fails somewhere far from the cause.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from typing import Any

import asyncpg
import asyncpg.pool

from service.db.pool import _FairQueue, create_pool

POOL_PY = "service/db/pool.py"


def _member(owner: object, name: str) -> Any:
    label = owner.__name__ if isinstance(owner, type) else type(owner).__name__
    assert hasattr(owner, name), f"asyncpg's {label}.{name} is gone: {POOL_PY} uses it"
    return getattr(owner, name)


def _parameters(function: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_pool_takes_every_argument_create_pool_passes() -> None:
    parameters = _parameters(asyncpg.pool.Pool.__init__)
    # Unknown ones would not fail here: Pool passes them on to connect() as connection settings.
    for name in ("init_size", "min_size", "max_size", "max_queries", "max_inactive_connection_lifetime",
                 "connect", "setup", "init", "reset", "loop", "connection_class", "record_class"):
        assert name in parameters, f"asyncpg.pool.Pool() no longer takes {name}=: {POOL_PY}'s create_pool passes it"


def test_pool_acquire_and_initialize_keep_the_shape_database_pool_overrides() -> None:
    acquire = _parameters(_member(asyncpg.pool.Pool, "acquire"))
    assert list(acquire) == ["self", "timeout"], f"asyncpg's Pool.acquire{list(acquire)}: DatabasePool.acquire overrides it"
    assert acquire["timeout"].kind is inspect.Parameter.KEYWORD_ONLY and acquire["timeout"].default is None, (
        "asyncpg's Pool.acquire(*, timeout=None) changed: DatabasePool.acquire and _Lease call it so")
    initialize = _member(asyncpg.pool.Pool, "_initialize")
    assert inspect.iscoroutinefunction(initialize) and list(_parameters(initialize)) == ["self"], (
        "asyncpg's Pool._initialize is no longer `async def _initialize(self)`: DatabasePool._initialize extends it")


def test_pool_takes_holders_with_its_queues_get() -> None:
    """_FairQueue.get is what hands a released holder to the longest waiter; a pool that took
    holders another way would skip it and leave the queue unfair."""
    source = inspect.getsource(asyncpg.pool.Pool._acquire)
    assert "self._queue.get()" in source, "asyncpg's Pool._acquire no longer awaits self._queue.get(): _FairQueue.get is bypassed"
    assert "self._queue.put_nowait(" in source, "asyncpg's Pool._acquire no longer gives holders back with put_nowait"


def test_pool_release_does_what_release_without_the_shield_repeats() -> None:
    """pool.py's `_release` is `Pool.release` without its asyncio.shield: the same steps, in order."""
    source = inspect.getsource(asyncpg.pool.Pool.release)
    steps = ["if connection._con is None:", "connection._con._on_release()", "ch = connection._holder", "ch.release(timeout)"]
    where = [source.find(step) for step in steps]
    assert -1 not in where and where == sorted(where), (
        f"asyncpg's Pool.release changed ({[s for s, at in zip(steps, where, strict=True) if at == -1]} missing or "
        f"reordered): re-read it and update _release in {POOL_PY}")


def test_holder_queue_is_an_asyncio_queue_with_its_waiters() -> None:
    holder_queue = _member(asyncpg.pool, "_PoolConnectionHolderQueue")
    assert issubclass(holder_queue, asyncio.Queue), "asyncpg's _PoolConnectionHolderQueue is no longer an asyncio.Queue"
    assert issubclass(_FairQueue, holder_queue)


async def test_queue_members_the_fair_queue_uses() -> None:
    queue = _FairQueue(maxsize=1)
    assert isinstance(_member(queue, "_getters"), collections.deque), "asyncio.Queue._getters is no longer a deque"
    assert _member(queue, "_get_loop")() is asyncio.get_running_loop(), "asyncio.Queue._get_loop() no longer answers the loop"
    assert queue.empty() and queue.maxsize == 1


async def test_a_live_pool_and_lease_have_the_members_pool_py_reads(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        # Awaiting the pool ran asyncpg's _async__init__, hence DatabasePool._initialize.
        assert isinstance(_member(pool, "_queue"), _FairQueue), "the pool's _queue is not the fair one after `await pool`"
        assert _member(pool, "_maxsize") == 2 and pool._queue.maxsize == 2 and pool._queue.qsize() == 2
        async with pool.acquire() as connection:
            assert isinstance(connection, asyncpg.pool.PoolConnectionProxy)
            con = _member(connection, "_con")
            assert isinstance(con, asyncpg.Connection), f"a lease's _con is a {type(con).__name__}, not the Connection"
            holder = _member(connection, "_holder")
            assert isinstance(holder, asyncpg.pool.PoolConnectionHolder)
            release = _member(holder, "release")
            assert inspect.iscoroutinefunction(release) and list(_parameters(release)) == ["timeout"], (
                "asyncpg's PoolConnectionHolder.release(timeout) changed: pool.py's _release calls release(None)")
            on_release = _member(con, "_on_release")
            required = [p for p in _parameters(on_release).values() if p.default is inspect.Parameter.empty]
            assert not required, f"asyncpg's Connection._on_release() now needs {[p.name for p in required]}"
            protocol = _member(con, "_protocol")
            assert protocol is not None
            assert _member(protocol, "_is_cancelling")() is False
            # Not cancelling: it answers the time-out it was given at once.
            assert await _member(protocol, "_wait_for_cancellation")(0.25) == 0.25
            assert pool._queue.qsize() == 1
        assert connection._con is None, f"a released lease's _con is not None: {POOL_PY} reads None as 'released'"
        assert pool._queue.qsize() == 2, "the holder did not come back to the fair queue through holder.release"
    finally:
        await pool.close()

