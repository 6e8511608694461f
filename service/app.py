"""create_app(): wiring only. Settings in, a Litestar app out; the lifespan owns every resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from litestar import Litestar, asgi
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import Receive, Scope, Send

from service.db.embedded import start_embedded_postgres
from service import metrics
from service.db.pool import create_pool
from service.emulator import FalEmulator, create_emulator_app
from service.fal.follower import JobFollower
from service.fal.gateway import FalGateway
from service.fal.reconcile import Reconciler
from service.fal.signatures import JwksKeyring, WebhookVerifier
from service.fal.webhooks import WebhookIntake, WebhookReceiver
from service.auth.callers import revoked_among
from service.auth.stream_tokens import StreamTokens
from service.http.dependencies import provide_caller, provide_pool, provide_settings, provide_user_id
from service.http.errors import EXCEPTION_HANDLERS
from service.http.events import EventsController
from service.http.health import healthz, readyz
from service.http.jobs import JobsController
from service.http.outputs import OutputsController
from service.http.metrics import metrics_endpoint
from service.http.openapi import tell_the_truth
from service.http.options import options_allow_middleware
from service.http.pages import current_session, models, page, sign_out, static_files
from service.http.request_log import request_log_middleware
from service.http.security_headers import security_headers
from service.http.webhooks import WEBHOOK_PATH, fal_webhook
from service.jobs.commands import JobCommands
from service.jobs.reservations import Limits
from service.logging import configure_logging
from service.realtime.admission import Admission
from service.outputs.access import MediaAccess
from service.outputs.copier import Copier
from service.outputs.sources import SourcePolicy
from service.outputs.store import MediaStore
from service.outputs.workers import OutputWorkers
from service.realtime.hub import Hub
from service.realtime.listener import EventListener
from service.realtime.shutdown import close_streams_on_exit_signal
from service.serving import check_can_serve
from service.settings import FAL_JWKS_URL_DEFAULT, FAL_QUEUE_URL_DEFAULT, Settings, load_settings

log = logging.getLogger(__name__)

EMULATOR_PATH = "/fal-emulator"
CREDENTIAL_CHECK_S = 2.0
"""How often each process looks for revoked keys, ended sessions and disabled users among those
holding streams open: a revocation closes them everywhere within this."""


LISTENER_START_WAIT_S = 3.0
"""Start-up waits this long for the LISTEN connection, then serves without it (not ready)."""


def _from_state(name: str) -> Provide:
    def provide(state: State) -> object:
        return state[name]

    # Lifetime singletons: resolved once, not on every request.
    return Provide(provide, sync_to_thread=False, use_cache=True)


def create_app(settings: Settings) -> Litestar:
    route_handlers: list[object] = [
        healthz, readyz, JobsController, OutputsController, EventsController, fal_webhook,
        page, current_session, sign_out, models, static_files, metrics_endpoint,
    ]

    emulator: FalEmulator | None = None
    if settings.uses_emulator:
        # The local fal: it answers on our own port, and a fresh key per process stands in for FAL_KEY.
        emulator = FalEmulator(f"{settings.local_url}{EMULATOR_PATH}", secrets.token_urlsafe(24),
                               pace=settings.emulator_pace)
        emulator_app = create_emulator_app(emulator)

        @asgi(EMULATOR_PATH, is_mount=True, copy_scope=True, include_in_schema=False)
        async def fal_emulator(scope: Scope, receive: Receive, send: Send) -> None:
            await emulator_app(scope, receive, send)

        route_handlers.append(fal_emulator)

    fal_key = settings.fal_key or next(iter(emulator.accepted_keys))  # type: ignore[union-attr]
    # Set URLs win, emulator or not (a standalone emulator, a proxy in front of fal).
    queue_url = settings.fal_queue_url or (emulator.base_url if emulator else FAL_QUEUE_URL_DEFAULT)
    jwks_url = settings.fal_jwks_url or (emulator.jwks_url if emulator else FAL_JWKS_URL_DEFAULT)
    # The mounted emulator is its own fal account; real fal needs FAL_WEBHOOK_USER_ID to pin ours.
    webhook_user_id = settings.fal_webhook_user_id or (
        emulator.user_id if emulator and settings.fal_jwks_url is None else None
    )
    public_url = settings.app_url or (settings.local_url if emulator else None)
    webhook_url = f"{public_url}{WEBHOOK_PATH}" if public_url else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        dsn = settings.database_url or start_embedded_postgres(settings.embedded_pgdata)
        pool = await create_pool(
            dsn, min_size=min(2, settings.database_pool_max), max_size=settings.database_pool_max,
            connect_timeout_s=settings.db_connect_timeout_s, acquire_timeout_s=settings.db_acquire_timeout_s,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        metrics.watch_pool(pool)
        hub = Hub()
        hub.start_heartbeats(settings.sse_heartbeat_s)
        admission = Admission(max_per_credential=settings.max_streams_per_user,
                              max_downloads=settings.max_downloads_per_user)
        listener = EventListener(settings.listen_database_url or dsn, hub, connect_timeout_s=settings.db_connect_timeout_s,
                                 gap_timeout_s=settings.gap_timeout_s)
        await listener.start()
        with contextlib.suppress(TimeoutError):
            # Postgres may be down: serve anyway (/readyz says what is missing) and keep trying.
            await listener.wait_connected(timeout=LISTENER_START_WAIT_S)
        restore_signals = close_streams_on_exit_signal(hub)
        http = httpx.AsyncClient(timeout=10)
        gateway = FalGateway(key=fal_key, queue_url=queue_url, media_expiry_s=settings.fal_media_expiry_s,
                             call_timeout_s=settings.fal_call_timeout_s)
        store = MediaStore.open(settings.media_store_url, settings.media_dir)
        media_policy = SourcePolicy(settings.media_hosts,
                                    emulator_media_base=emulator.media_base if emulator else settings.emulator_media_url)
        media_http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=settings.output_workers * 2))
        output_workers = OutputWorkers(
            pool, store, Copier(media_http, store, media_policy, max_bytes=settings.max_output_bytes),
            concurrency=settings.output_workers,
        )
        intake = WebhookIntake(pool, gateway)
        follower = JobFollower(pool, gateway, max_followers=settings.max_followers)
        reconciler = Reconciler(
            pool, gateway, follower, intake,
            connect_lock=lambda: asyncpg.connect(dsn, timeout=settings.db_connect_timeout_s,
                                                 server_settings={"application_name": "fal-jobs-sweep"}),
            overdue_after_s=settings.reconcile_after_s, interval_s=settings.reconcile_interval_s,
            event_retention_days=settings.event_retention_days,
        )
        app.state.update(
            pool=pool,
            intake=intake,
            webhooks=WebhookReceiver(
                WebhookVerifier(JwksKeyring(jwks_url, http), expected_user_id=webhook_user_id), intake
            ),
            commands=JobCommands(
                pool, gateway, intake, follower, allowed_models=settings.allowed_models, webhook_url=webhook_url,
                limits=Limits(max_open_jobs=settings.max_open_jobs_per_user,
                              max_jobs_per_minute=settings.max_jobs_per_minute),
            ),
            admission=admission,
            reconciler=reconciler,
            follower=follower,
            emulator=emulator,
            hub=hub,
            listener=listener,
            tokens=StreamTokens(settings.stream_token_secret, ttl_s=settings.stream_token_ttl_s),
            media=MediaAccess(pool, store),
            media_policy=media_policy,
        )
        sweeping = asyncio.create_task(reconciler.run_forever(), name="reconcile")
        revalidating = asyncio.create_task(
            admission.revalidate_forever(lambda credentials: revoked_among(pool, credentials), every_s=CREDENTIAL_CHECK_S),
            name="revalidate-credentials",
        )
        sampling = asyncio.create_task(metrics.sample_pools_forever(), name="metrics-pool")
        if emulator is not None:
            log.warning(
                "serving the LOCAL fal emulator: jobs never reach fal.ai and make test images; set FAL_KEY for fal",
                extra={"action": "emulator_mounted", "path": EMULATOR_PATH},
            )
        hub.observe(output_workers.on_event)
        copying = asyncio.create_task(output_workers.run_forever(), name="outputs")
        log.info("fal-jobs started", extra={"fal": "emulator" if emulator else "fal.ai", "webhooks": bool(webhook_url)})
        try:
            yield
        finally:
            restore_signals()
            hub.shut_down()
            hub.stop_heartbeats()
            metrics.process_exiting()
            for task in (sweeping, revalidating, sampling):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            copying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await copying
            await output_workers.aclose()
            await media_http.aclose()
            store.close()
            await follower.aclose()
            if emulator is not None:
                await emulator.aclose()
            await gateway.aclose()
            await http.aclose()
            await listener.aclose()
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                pool.terminate()
                raise

    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        state=State({"settings": settings}),
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False, use_cache=True),
            "settings": Provide(provide_settings, sync_to_thread=False, use_cache=True),
            "caller": Provide(provide_caller),
            "user_id": Provide(provide_user_id, sync_to_thread=False),
            "admission": _from_state("admission"),
            "commands": _from_state("commands"),
            "webhooks": _from_state("webhooks"),
            "hub": _from_state("hub"),
            "tokens": _from_state("tokens"),
            "listener": _from_state("listener"),
            "media": _from_state("media"),
            "media_policy": _from_state("media_policy"),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[options_allow_middleware],
        openapi_config=OpenAPIConfig(title="fal-jobs", version="0.1.0", path="/schema"),
        logging_config=None,
    )
    # Around the router and its exception handlers, not on the routes: a path no route matches (404)
    # and a method a route lacks (405) are answered by the router, and must be logged, counted and
    # given their request id and security headers like every other answer.
    app.asgi_handler = request_log_middleware(app.asgi_handler, security_headers(settings))
    tell_the_truth(app.openapi_schema, allowed_models=settings.allowed_models)
    return app


def create_app_from_environment() -> Litestar:
    """The factory uvicorn runs (`uvicorn --factory service.app:create_app_from_environment`)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    check_can_serve(settings)
    return create_app(settings)
