"""The service's long-lived resources, each an async context manager: what one opens, it closes.

`service/app.py` enters them through one `AsyncExitStack`, so a failure at start closes what had
opened, in reverse order, and a close that raises does not skip the closes after it. A resource
made of several parts closes them through a stack of its own, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from litestar import asgi
from litestar.plugins import InitPlugin

from service import metrics
from service.db.pool import DatabasePool, create_pool
from service.emulator import FalEmulator, create_emulator_app
from service.fal.gateway import FalGateway
from service.fal.signatures import JwksKeyring
from service.outputs.copier import Copier
from service.outputs.store import MediaStore
from service.outputs.workers import OutputWorkers
from service.realtime.hub import Hub
from service.realtime.listener import EventListener
from service.realtime.shutdown import close_streams_on_exit_signal
from service.usecases.follow_jobs import JobFollower

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine
    from types import TracebackType

    from litestar.config.app import AppConfig
    from litestar.types import Receive, Scope, Send

    from service.fal.pricing import PriceBook
    from service.outputs.sources import SourcePolicy
    from service.settings import Settings

log = logging.getLogger(__name__)

LISTENER_START_WAIT_S = 3.0
"""Start-up waits this long for the LISTEN connection, then serves without it (not ready)."""
POOL_CLOSE_S = 5.0
"""A pool close waits this long for its connections to come back, then terminates them."""
JWKS_HTTP_TIMEOUT_S = 10.0
MEDIA_HTTP_TIMEOUT_S = 30.0


def _log_early_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    log.error("a background task ended on its own: %s", task.get_name(), exc_info=error,
              extra={"action": "background_task_ended", "task": task.get_name()})


@asynccontextmanager
async def running(work: Coroutine[Any, Any, None], *, name: str) -> AsyncIterator[asyncio.Task[None]]:
    """`work` as a task for as long as the block lasts; cancelled and awaited at its end. A task that
    ends on its own before then (it should not) is logged at once, not only at shutdown."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_log_early_end)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def open_pool(settings: Settings, dsn: str) -> AsyncIterator[DatabasePool]:
    """The process's pool (it connects on first use, so this opens with Postgres down)."""
    pool = await create_pool(
        dsn, min_size=min(2, settings.database_pool_max), max_size=settings.database_pool_max,
        connect_timeout_s=settings.db_connect_timeout_s, acquire_timeout_s=settings.db_acquire_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s, lock_timeout_s=settings.db_lock_timeout_s,
        idle_in_transaction_timeout_s=settings.db_idle_in_transaction_timeout_s,
    )
    metrics.watch_pool(pool)
    try:
        yield pool
    finally:
        await close_pool(pool)


async def close_pool(pool: DatabasePool) -> None:
    """Close within POOL_CLOSE_S: a connection still held (a request that never ends) must not keep
    the process from exiting; past that, every connection is terminated."""
    try:
        await asyncio.wait_for(pool.close(), timeout=POOL_CLOSE_S)
    except (TimeoutError, asyncio.CancelledError):
        pool.terminate()
        raise


@asynccontextmanager
async def open_realtime(settings: Settings, dsn: str) -> AsyncIterator[tuple[Hub, EventListener]]:
    """The hub with its heartbeats, the one LISTEN connection that feeds it, and the exit-signal
    handler that ends its streams (uvicorn waits for open responses before the lifespan ends)."""
    hub = Hub()
    listener = EventListener(dsn, hub, connect_timeout_s=settings.db_connect_timeout_s,
                             gap_timeout_s=settings.gap_timeout_s)
    async with AsyncExitStack() as stack:
        hub.start_heartbeats(settings.sse_heartbeat_s)
        stack.callback(hub.stop_heartbeats)
        stack.push_async_callback(listener.aclose)
        await listener.start()
        with contextlib.suppress(TimeoutError):
            # Postgres may be down: serve anyway (/readyz says what is missing) and keep trying.
            await listener.wait_connected(timeout=LISTENER_START_WAIT_S)
        stack.callback(hub.shut_down)
        stack.callback(close_streams_on_exit_signal(hub))
        yield hub, listener


@asynccontextmanager
async def open_fal(settings: Settings, *, key: str, queue_url: str, jwks_url: str, api_url: str,
                   schema_url: str | None = None
                   ) -> AsyncIterator[tuple[FalGateway, JwksKeyring]]:
    """fal's queue (fal-client's HTTP client) and the keyring that checks its webhooks' signatures."""
    async with AsyncExitStack() as stack:
        http = httpx.AsyncClient(timeout=JWKS_HTTP_TIMEOUT_S)
        stack.push_async_callback(http.aclose)
        gateway = FalGateway(key=key, queue_url=queue_url, media_expiry_s=settings.fal_media_expiry_s,
                             call_timeout_s=settings.fal_call_timeout_s, schema_url=schema_url, api_url=api_url)
        stack.push_async_callback(gateway.aclose)
        yield gateway, JwksKeyring(jwks_url, http)


@asynccontextmanager
async def open_outputs(settings: Settings, pool: DatabasePool, hub: Hub, policy: SourcePolicy
                       ) -> AsyncIterator[MediaStore]:
    """The store of output copies, and the workers (with their HTTP client) that fill it; they
    wake on the hub's completions. At the end, their claims go back for another process."""
    async with AsyncExitStack() as stack:
        store = MediaStore.open(settings.media_store_url, settings.media_dir)
        stack.callback(store.close)
        media_http = httpx.AsyncClient(timeout=MEDIA_HTTP_TIMEOUT_S,
                                       limits=httpx.Limits(max_connections=settings.output_workers * 2))
        stack.push_async_callback(media_http.aclose)
        workers = OutputWorkers(pool, store, Copier(media_http, store, policy, max_bytes=settings.max_output_bytes),
                                concurrency=settings.output_workers,
                                fal_copy_lifetime_s=settings.fal_copy_lifetime_s,
                                store_retry_max_s=settings.output_store_retry_max_s)
        stack.push_async_callback(workers.aclose)
        hub.observe(workers.on_event)
        await stack.enter_async_context(running(workers.run_forever(), name="outputs"))
        yield store


@asynccontextmanager
async def open_follower(settings: Settings, pool: DatabasePool, gateway: FalGateway) -> AsyncIterator[JobFollower]:
    """The followers of jobs submitted without a webhook; at the end, each one stops."""
    follower = JobFollower(pool, gateway, max_followers=settings.max_followers)
    try:
        yield follower
    finally:
        await follower.aclose()


@asynccontextmanager
async def warming(prices: PriceBook) -> AsyncIterator[None]:
    """fal's prices read once in the background at start (a failure is logged by the book and
    retried by the next submit); the read is cancelled if the service stops first."""
    task = asyncio.create_task(prices.warm(), name="pricing-warm")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def sampling_pool_metrics() -> AsyncIterator[None]:
    """The pool gauge, kept fresh for scrapes another process answers; at the end this process's
    gauges leave the sum over the processes."""
    try:
        async with running(metrics.sample_pools_forever(), name="metrics-pool"):
            yield
    finally:
        metrics.process_exiting()


class MountedEmulator(InitPlugin, contextlib.AbstractAsyncContextManager["MountedEmulator"]):
    """The local fal, answering on the service's own port under `path`, with a fresh key per
    process standing in for FAL_KEY. As a Litestar plugin it mounts itself, sets `state.emulator`
    and joins the lifespan first, so it is up before the service and stops after it."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.path = path
        self.emulator = FalEmulator(f"{settings.local_url}{path}", secrets.token_urlsafe(24),
                                    pace=settings.emulator_pace)
        self.key = next(iter(self.emulator.accepted_keys))

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        emulator_app = create_emulator_app(self.emulator)

        @asgi(self.path, is_mount=True, copy_scope=True, include_in_schema=False)
        async def fal_emulator(scope: Scope, receive: Receive, send: Send) -> None:
            await emulator_app(scope, receive, send)

        app_config.route_handlers.append(fal_emulator)
        app_config.state["emulator"] = self.emulator
        app_config.lifespan.insert(0, self)
        return app_config

    async def __aenter__(self) -> MountedEmulator:
        log.warning(
            "serving the LOCAL fal emulator: jobs never reach fal.ai and make test images; set FAL_KEY for fal",
            extra={"action": "emulator_mounted", "path": self.path},
        )
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.emulator.aclose()
