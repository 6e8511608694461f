"""create_app(): wiring only. Settings in, a Litestar app out.

Each long-lived resource is an async context manager (service/resources.py), and the lifespan
(`lifespan`) enters them through one AsyncExitStack: a failure at start closes what had opened,
in reverse order, and a close that raises does not skip the others.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import asyncpg
import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from service.auth.callers import revoked_among
from service.auth.stream_tokens import StreamTokens
from service.db.embedded import start_embedded_postgres
from service.db.pool import DatabasePool
from service.fal.cdn import FalCdn
from service.fal.gateway import FalGateway
from service.fal.model_schemas import ModelSchemas
from service.fal.pricing import PriceBook
from service.fal.signatures import WebhookVerifier
from service.http.admin import AdminController
from service.http.api_docs import api_reference_config
from service.http.dependencies import provide_caller, provide_pool, provide_settings, provide_user_id
from service.http.errors import EXCEPTION_HANDLERS
from service.http.events import EventsController
from service.http.health import healthz, readyz
from service.http.jobs import JobsController
from service.http.metrics import metrics_endpoint
from service.http.openapi import tell_the_truth
from service.http.options import options_allow_middleware
from service.http.outputs import OutputsController
from service.http.pages import admin_page, current_session, models, page, sign_out, static_files
from service.http.request_log import request_log_middleware
from service.http.security_headers import security_headers
from service.http.uploads import UploadsController
from service.http.webhooks import WEBHOOK_PATH, fal_webhook
from service.jobs.admin import not_admins_among
from service.jobs.delivery_log import DeliveryLog
from service.jobs.reservations import Limits
from service.logging import configure_logging
from service.outputs.access import MediaAccess
from service.outputs.sources import SourcePolicy
from service.outputs.store import MediaStore
from service.outputs.upkeep import OutputUpkeep
from service.realtime.admission import Admission
from service.resources import (
    LISTENER_START_WAIT_S,
    MountedEmulator,
    open_fal,
    open_follower,
    open_outputs,
    open_pool,
    open_realtime,
    running,
    sampling_pool_metrics,
    warming,
)
from service.serving import check_can_serve
from service.settings import (
    FAL_API_URL_DEFAULT,
    FAL_CDN_URL_DEFAULT,
    FAL_JWKS_URL_DEFAULT,
    FAL_QUEUE_URL_DEFAULT,
    FAL_REST_URL_DEFAULT,
    FAL_SCHEMA_URL_DEFAULT,
    Settings,
    load_settings,
)
from service.uploads.intake import UploadLimits
from service.uploads.library import Uploads
from service.uploads.references import Delivery, FalCdnCopies, SignedLinks, UploadInputs
from service.usecases.cancel_job import CancelJob
from service.usecases.delete_job import DeleteJob
from service.usecases.follow_jobs import JobFollower
from service.usecases.receive_webhook import WebhookIntake, WebhookReceiver
from service.usecases.submit_job import SubmitJob
from service.usecases.sweep import Reconciler

__all__ = ["CREDENTIAL_CHECK_S", "EMULATOR_PATH", "LISTENER_START_WAIT_S", "create_app",
           "create_app_from_environment"]

log = logging.getLogger(__name__)

EMULATOR_PATH = "/fal-emulator"
CREDENTIAL_CHECK_S = 2.0
"""How often each process looks for revoked keys, ended sessions and disabled users among those
holding streams open: a revocation closes them everywhere within this."""


class FalTarget(msgspec.Struct, frozen=True):
    """Which fal the service talks to, and how fal's webhooks reach it."""

    key: str
    queue_url: str
    jwks_url: str
    api_url: str
    webhook_user_id: str | None
    webhook_url: str | None
    emulator_media_base: str | None
    public_url: str | None = None
    """Where fal reaches us: APP_URL, or this process when the emulator is mounted here."""
    rest_url: str = FAL_REST_URL_DEFAULT
    cdn_url: str = FAL_CDN_URL_DEFAULT
    schema_url: str = FAL_SCHEMA_URL_DEFAULT


def fal_target(settings: Settings, mounted: MountedEmulator | None) -> FalTarget:
    emulator = mounted.emulator if mounted else None
    public_url = settings.app_url or (settings.local_url if emulator else None)
    return FalTarget(
        key=settings.fal_key or (mounted.key if mounted else ""),
        # Set URLs win, emulator or not (a standalone emulator, a proxy in front of fal).
        queue_url=settings.fal_queue_url or (emulator.base_url if emulator else FAL_QUEUE_URL_DEFAULT),
        jwks_url=settings.fal_jwks_url or (emulator.jwks_url if emulator else FAL_JWKS_URL_DEFAULT),
        api_url=settings.fal_api_url or (emulator.base_url if emulator else FAL_API_URL_DEFAULT),
        # The mounted emulator is its own fal account; real fal needs FAL_WEBHOOK_USER_ID to pin ours.
        webhook_user_id=settings.fal_webhook_user_id or (
            emulator.user_id if emulator and settings.fal_jwks_url is None else None),
        webhook_url=f"{public_url}{WEBHOOK_PATH}" if public_url else None,
        emulator_media_base=emulator.media_base if emulator else settings.emulator_media_url,
        public_url=public_url,
        rest_url=settings.fal_rest_url or (emulator.base_url if emulator else FAL_REST_URL_DEFAULT),
        cdn_url=settings.fal_cdn_url or (emulator.base_url if emulator else FAL_CDN_URL_DEFAULT),
        schema_url=settings.fal_schema_url or (emulator.schema_url if emulator else FAL_SCHEMA_URL_DEFAULT),
    )


@asynccontextmanager
async def lifespan(app: Litestar, *, settings: Settings, fal: FalTarget) -> AsyncIterator[None]:
    """The lifespan: every resource, opened in order and closed in reverse (see module docstring)."""
    dsn = settings.database_url or start_embedded_postgres(settings.embedded_pgdata)
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        pool = await enter(open_pool(settings, dsn))
        hub, listener = await enter(open_realtime(settings, settings.listen_database_url or dsn))
        gateway, keyring = await enter(open_fal(settings, key=fal.key, queue_url=fal.queue_url, jwks_url=fal.jwks_url,
                                                schema_url=fal.schema_url, api_url=fal.api_url))
        model_schemas = ModelSchemas(gateway.model_openapi, ttl_s=settings.fal_schema_ttl_s)
        media_policy = SourcePolicy(settings.media_hosts, emulator_media_base=fal.emulator_media_base)
        store = await enter(open_outputs(settings, pool, hub, media_policy))
        follower = await enter(open_follower(settings, pool, gateway))
        intake = WebhookIntake(pool, gateway)
        deliveries = DeliveryLog(pool)
        stack.push_async_callback(deliveries.flush)  # after the requests, before the pool closes
        uploads = _uploads(settings, pool, store)
        input_tokens = StreamTokens(settings.stream_token_secret, ttl_s=settings.input_url_ttl_s)
        reconciler = Reconciler(
            pool, gateway, follower, intake,
            # Its lock's connection answers within the statement time-out too, or the sweep gives up.
            connect_lock=lambda: asyncpg.connect(dsn, timeout=settings.db_connect_timeout_s,
                                                 command_timeout=settings.db_statement_timeout_s,
                                                 server_settings={"application_name": "fal-jobs-sweep"}),
            overdue_after_s=settings.reconcile_after_s, interval_s=settings.reconcile_interval_s,
            event_retention_days=settings.event_retention_days,
            deliveries=deliveries, delivery_log_retention_days=settings.delivery_log_retention_days,
            outputs=OutputUpkeep(pool, store, fal_copy_lifetime_s=settings.fal_copy_lifetime_s,
                                 redrive_after_s=settings.output_redrive_after_s),
            uploads=uploads,
        )
        await enter(running(reconciler.run_forever(), name="reconcile"))
        admission = Admission(max_per_credential=settings.max_streams_per_user,
                              max_downloads=settings.max_downloads_per_user)
        await enter(running(admission.revalidate_forever(partial(revoked_among, pool), every_s=CREDENTIAL_CHECK_S,
                                                         not_admins_among=partial(not_admins_among, pool)),
                            name="revalidate-credentials"))
        await enter(sampling_pool_metrics())
        prices = PriceBook(gateway, settings.allowed_models, ttl_s=settings.pricing_ttl_s)
        await enter(warming(prices))
        app.state.update(
            pool=pool, intake=intake, admission=admission, reconciler=reconciler, follower=follower, hub=hub,
            listener=listener, media=MediaAccess(pool, store), media_policy=media_policy,
            webhooks=WebhookReceiver(WebhookVerifier(keyring, expected_user_id=fal.webhook_user_id), intake,
                                     deliveries),
            deliveries=deliveries,
            submissions=_submissions(settings, fal, pool, gateway, intake, follower,
                                     UploadInputs(uploads, await _input_delivery(settings, fal, uploads, input_tokens, stack)),
                                     model_schemas, prices),
            model_schemas=model_schemas,
            uploads=uploads, input_tokens=input_tokens,
            cancellations=CancelJob(pool, gateway, follower, cancel_hold_max_s=settings.cancel_hold_max_s),
            deletions=DeleteJob(pool, store),
            tokens=StreamTokens(settings.stream_token_secret, ttl_s=settings.stream_token_ttl_s),
        )
        log.info("fal-jobs started", extra={"action": "started", "fal": "emulator" if settings.local_emulator else "fal.ai",
                                            "webhooks": bool(fal.webhook_url)})
        yield


def _submissions(settings: Settings, fal: FalTarget, pool: DatabasePool, gateway: FalGateway,
                 intake: WebhookIntake, follower: JobFollower, inputs: UploadInputs,
                 model_schemas: ModelSchemas, prices: PriceBook) -> SubmitJob:
    return SubmitJob(
        pool, gateway, intake, follower, allowed_models=settings.allowed_models, webhook_url=fal.webhook_url,
        limits=Limits(max_open_jobs=settings.max_open_jobs_per_user, max_jobs_per_minute=settings.max_jobs_per_minute,
                      max_spend_per_day=settings.max_spend_per_day),
        inputs=inputs, schemas=model_schemas, prices=prices,
    )


async def _input_delivery(settings: Settings, fal: FalTarget, uploads: Uploads, input_tokens: StreamTokens,
                          stack: AsyncExitStack) -> Delivery:
    """How `upload:<id>` inputs reach fal (INPUT_DELIVERY)."""
    if settings.input_delivery == "signed_url":
        return SignedLinks(input_tokens, fal.public_url)
    cdn = FalCdn(key=fal.key, rest_url=fal.rest_url, cdn_url=fal.cdn_url, expiry_s=settings.fal_media_expiry_s)
    stack.push_async_callback(cdn.aclose)
    return FalCdnCopies(uploads, cdn, lifetime_s=settings.fal_copy_lifetime_s)


def _uploads(settings: Settings, pool: DatabasePool, store: MediaStore) -> Uploads:
    return Uploads(pool, store, UploadLimits(
        max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels,
        max_bytes_per_day=settings.max_upload_bytes_per_day, retention_days=settings.upload_retention_days))


def _from_state(name: str) -> Provide:
    def provide(state: State) -> object:
        return state[name]

    # Lifetime singletons: resolved once, not on every request.
    return Provide(provide, sync_to_thread=False, use_cache=True)


def create_app(settings: Settings) -> Litestar:
    # The local fal (when FAL_KEY is unset) mounts itself on our port and joins the lifespan.
    emulator = MountedEmulator(settings, EMULATOR_PATH) if settings.uses_emulator else None
    fal = fal_target(settings, emulator)
    app = Litestar(
        route_handlers=[
            healthz, readyz, JobsController, AdminController, OutputsController, UploadsController, EventsController, fal_webhook,
            page, admin_page, current_session, sign_out, models, static_files, metrics_endpoint,
        ],
        lifespan=[partial(lifespan, settings=settings, fal=fal)],
        plugins=[emulator] if emulator else [],
        state=State({"settings": settings, "emulator": None}),
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False, use_cache=True),
            "settings": Provide(provide_settings, sync_to_thread=False, use_cache=True),
            "caller": Provide(provide_caller),
            "user_id": Provide(provide_user_id, sync_to_thread=False),
            "admission": _from_state("admission"),
            "submissions": _from_state("submissions"),
            "cancellations": _from_state("cancellations"),
            "deletions": _from_state("deletions"),
            "webhooks": _from_state("webhooks"),
            "hub": _from_state("hub"),
            "tokens": _from_state("tokens"),
            "listener": _from_state("listener"),
            "media": _from_state("media"),
            "media_policy": _from_state("media_policy"),
            "uploads": _from_state("uploads"),
            "input_tokens": _from_state("input_tokens"),
            "model_schemas": _from_state("model_schemas"),
            "deliveries": _from_state("deliveries"),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[options_allow_middleware],
        openapi_config=api_reference_config(title="fal-jobs", version="0.1.0"),
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
