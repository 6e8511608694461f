"""The app's lifespan owns every long-lived resource: what opened is closed, in reverse order, when a
later resource fails to open, when a close raises, and on a plain shutdown.

Each test runs Litestar's own lifespan (`app.lifespan()`, what uvicorn's lifespan events drive) of an
app from `create_app`, on a real Postgres database of its own, with the fal emulator mounted (FAL_KEY
unset). What is left behind is read from the outside: the event loop's tasks, Postgres's
pg_stat_activity (by application_name), the threads, and the SIGTERM handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import pytest_asyncio

from service import metrics
from service.app import create_app
from tests.conftest import migrated_database, service_settings

SERVICE_APPLICATIONS = ["fal-jobs", "fal-jobs-listener", "fal-jobs-sweep"]
RUNNING_TASKS = {"event-listener", "sse-heartbeats", "outputs", "reconcile", "revalidate-credentials",
                 "metrics-pool"}
T = TypeVar("T")


@contextlib.contextmanager
def raises_within(kind: type[BaseException]) -> Iterator[list[BaseException]]:
    """Like pytest.raises, also when `kind` comes inside an exception group (Litestar's event
    emitter, entered around the lifespan managers, is an anyio task group)."""
    caught: list[BaseException] = []
    try:
        yield caught
    except* kind as group:
        caught.extend(group.exceptions)
    assert caught, f"{kind.__name__} was not raised"


class Closing(Exception):
    """What a close entered after the service's resources raises."""


@pytest.fixture
def life_db(server_dsn: str) -> Iterator[str]:
    with migrated_database(server_dsn, "fal_jobs_life") as dsn:
        yield dsn


# Each test in an event loop of its own: the session loop runs other tests' services (their output
# workers make tasks as they wait), which the leftover count below would take for this app's.
@pytest_asyncio.fixture(loop_scope="function")
async def admin(life_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(life_db)
    yield connection
    await connection.close()


class Leftovers:
    """What the service may leave behind, compared with what there was before it started."""

    def __init__(self, admin: asyncpg.Connection) -> None:
        self._admin = admin
        self._tasks = asyncio.all_tasks()
        self._threads = set(threading.enumerate())
        self.sigterm = signal.getsignal(signal.SIGTERM)
        self._pools = list(metrics._pools)

    def tasks(self) -> set[str]:
        return {f"{task.get_name()} {task.get_coro()!r}" if task.get_name().startswith("Task-") else task.get_name()
                for task in asyncio.all_tasks() - self._tasks if not task.done()}

    def threads(self) -> set[str]:
        # The loop's default executor (name lookups) lives as long as the loop, not the service.
        return {t.name for t in set(threading.enumerate()) - self._threads
                if t.is_alive() and not t.name.startswith("asyncio_")}

    async def connections(self) -> list[str]:
        rows = await self._admin.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = ANY($1::text[]) ORDER BY 1", SERVICE_APPLICATIONS)
        return [row["application_name"] for row in rows]

    def open_pools(self) -> int:
        return sum(1 for pool in metrics._pools if pool not in self._pools and not pool.is_closing())

    async def assert_none(self) -> None:
        # A closed connection's backend, a cancelled task and a stopped thread end a moment later.
        assert await eventually(self.tasks, set()) == set()
        assert await eventually(self.connections, []) == []
        assert await eventually(self.threads, set()) == set()
        assert self.open_pools() == 0
        assert signal.getsignal(signal.SIGTERM) is self.sigterm


async def eventually(read: Callable[[], T | Awaitable[T]], wanted: T, *, limit_s: float = 15.0) -> T:
    """`read()` once it equals `wanted`, or its last value after `limit_s` (for the assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        value = read()
        if asyncio.iscoroutine(value):
            value = await value
        if value == wanted or loop.time() > deadline:
            return value  # type: ignore[return-value]
        await asyncio.sleep(0.05)


def settings_for(dsn: str, media_dir: Path) -> Any:
    # FAL_KEY unset: the emulator is mounted and joins the lifespan too.
    return service_settings(dsn, MEDIA_DIR=str(media_dir), SSE_HEARTBEAT_S="0.5", RECONCILE_INTERVAL_S="3600")


@pytest.mark.asyncio(loop_scope="function")
async def test_a_resource_that_fails_to_open_closes_what_opened_before_it(
    life_db: str, admin: asyncpg.Connection, tmp_path: Path,
) -> None:
    # The media store opens after the pool, the listener (connected), the hub's heartbeats, the
    # exit-signal handler, fal's clients and the emulator; a folder beneath a file cannot be made.
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    app = create_app(settings_for(life_db, not_a_folder / "media"))
    leftovers = Leftovers(admin)
    with raises_within(OSError) as caught:
        async with app.lifespan():
            pytest.fail("the lifespan must not start with a media store it cannot open")
    assert "Not a directory" in str(caught[0])
    await leftovers.assert_none()
    assert app.state.emulator.closed


@pytest.mark.asyncio(loop_scope="function")
async def test_a_close_that_raises_does_not_skip_the_closes_after_it(
    life_db: str, admin: asyncpg.Connection, tmp_path: Path,
) -> None:
    app = create_app(settings_for(life_db, tmp_path / "media"))
    leftovers = Leftovers(admin)

    async def close_badly() -> None:
        raise Closing("a lifespan manager entered after the service's failed to close")

    with raises_within(Closing):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(app.lifespan())
            stack.push_async_callback(close_badly)
            # Everything is open: a pool connection, the listener's, every task, the store's threads.
            await app.state.pool.fetchval("SELECT 1")
            await app.state.media._store.keys("")
            assert await eventually(lambda: leftovers.tasks() >= RUNNING_TASKS, True)
            # The output workers wait for work (a wait of their own, which must not outlive them).
            assert await eventually(lambda: any("Event.wait" in task for task in leftovers.tasks()), True)
            assert "fal-jobs-listener" in await leftovers.connections()
            assert "fal-jobs" in await leftovers.connections()
            assert signal.getsignal(signal.SIGTERM) is not leftovers.sigterm
            assert leftovers.open_pools() == 1
    await leftovers.assert_none()
    assert app.state.hub.closing
    assert app.state.emulator.closed


@pytest.mark.asyncio(loop_scope="function")
async def test_a_service_close_that_raises_does_not_skip_the_others(
    life_db: str, admin: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The followers (in the middle of the order) close for real, then raise: the output workers,
    fal's clients, the listener, the pool and the emulator still close."""
    app = create_app(settings_for(life_db, tmp_path / "media"))
    leftovers = Leftovers(admin)
    with raises_within(Closing):
        async with app.lifespan():
            follower = app.state.follower
            close_for_real = follower.aclose

            async def close_then_raise() -> None:
                await close_for_real()
                raise Closing("the followers closed, then raised")

            monkeypatch.setattr(follower, "aclose", close_then_raise)
            await app.state.pool.fetchval("SELECT 1")
            assert "fal-jobs-listener" in await leftovers.connections()
    await leftovers.assert_none()
    assert app.state.emulator.closed


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.timeout(60)
async def test_a_pool_close_past_its_bound_terminates_and_the_emulator_still_closes(
    life_db: str, admin: asyncpg.Connection, tmp_path: Path,
) -> None:
    """A connection held across shutdown: the pool's close gives up after its bound, terminates the
    connection and raises; the emulator, entered before the services, still closes after it."""
    app = create_app(settings_for(life_db, tmp_path / "media"))
    leftovers = Leftovers(admin)
    with raises_within(TimeoutError):
        async with app.lifespan():
            held = await app.state.pool.acquire()
            await held.fetchval("SELECT 1")
    await leftovers.assert_none()  # the held connection too
    assert app.state.emulator.closed
