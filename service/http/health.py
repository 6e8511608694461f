"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import os

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from service.db.migrations import missing_migrations
from service.errors import DatabaseUnavailable
from service.http.dependencies import PoolDependency
from service.realtime.listener import EventListener

READY_TIMEOUT_S = 1.5


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)
    process: int | None = None
    """Which of the service's processes answered (several serve one port)."""


@get("/healthz", tags=["health"], summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok", process=os.getpid())


@get("/readyz", tags=["health"], summary="The database is reachable, its migrations are current, the listener is connected")
async def readyz(pool: PoolDependency, listener: NamedDependency[EventListener]) -> Response[Health]:
    checks: dict[str, str] = {"listener": "ok" if listener.connected else "disconnected; reconnecting"}
    try:
        # Whatever the database does (down, partitioned, every connection busy), the answer comes
        # within READY_TIMEOUT_S: a load balancer must be able to take this process out.
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with pool.acquire(timeout=READY_TIMEOUT_S) as connection:
                missing = await missing_migrations(connection)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not missing else f"{len(missing)} not applied; run 'python -m service migrate'"
    except DatabaseUnavailable as exc:
        checks["database"] = f"unreachable ({type(exc.__cause__ or exc).__name__})"
    except TimeoutError:
        checks["database"] = f"no answer within {READY_TIMEOUT_S} s"
    ready = all(value == "ok" for value in checks.values()) and "migrations" in checks
    return Response(Health(status="ready" if ready else "not_ready", checks=checks), status_code=200 if ready else 503)
