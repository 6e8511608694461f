"""create_app(): wiring only. Settings in, a Litestar app out; the lifespan owns every resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from service.db.embedded import start_embedded_postgres
from service.db.pool import create_pool
from service.http.dependencies import provide_pool, provide_settings, provide_user_id
from service.http.errors import EXCEPTION_HANDLERS
from service.http.health import healthz, readyz
from service.http.jobs import JobsController
from service.http.request_log import request_log_middleware
from service.logging import configure_logging
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        dsn = settings.database_url or start_embedded_postgres(settings.embedded_pgdata)
        pool = await create_pool(dsn)
        app.state.pool = pool
        try:
            yield
        finally:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                pool.terminate()
                raise

    return Litestar(
        route_handlers=[healthz, readyz, JobsController],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "user_id": Provide(provide_user_id),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[request_log_middleware],
        openapi_config=OpenAPIConfig(title="fal-jobs", version="0.1.0", path="/schema"),
        logging_config=None,
    )


def create_app_from_environment() -> Litestar:
    """The factory uvicorn runs (`uvicorn --factory service.app:create_app_from_environment`)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
