"""Serving: how many processes, how big each one's pool, and the one uvicorn invocation that both
`run` and the Procfile use (`python -m service serve`).

Each process is a whole service: its own pool, its one LISTEN connection, its own hub, and while it
sweeps one more connection holding the sweep's lock. Postgres is the only thing they share, so N
processes need N x (pool + 2) of Postgres's `max_connections`; `pool_size_for` shrinks the pools to
fit when that is too many.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from service.settings import Settings, SettingsError

MAX_DEFAULT_PROCESSES = 8
"""Past this, more processes of one machine mostly add Postgres connections and NOTIFY readers;
set WEB_CONCURRENCY to go further."""
CONNECTIONS_KEPT_FREE = 10
"""Left to migrations, the CLI, psql and the superuser slots."""
CONNECTIONS_BESIDE_POOL = 2
"""Each process's LISTEN connection, and the one holding its sweep's lock while it sweeps."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def database_is_local(settings: Settings) -> bool:
    """The embedded server, or one on this machine: it competes with the service for the cores."""
    if settings.database_url is None:
        return True
    host = urlsplit(settings.database_url).hostname or ""
    return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def process_count(settings: Settings) -> int:
    """WEB_CONCURRENCY, else one process per usable core (at most 8), or per two cores when
    Postgres runs on the same machine: there more processes take CPU from Postgres, and fewer
    webhooks go through (docs/benchmarks.md, the scale-out table)."""
    if settings.web_concurrency:
        return settings.web_concurrency
    cores = usable_cores()
    return min(max(1, cores // 2) if database_is_local(settings) else cores, MAX_DEFAULT_PROCESSES)


def check_can_serve(settings: Settings) -> None:
    """A deploy that forgot its key must not "complete" paid-for jobs with test images, and a public
    one (an https APP_URL) must not hand its business figures to anyone who asks /metrics."""
    if settings.uses_emulator and not settings.fal_emulator:
        raise SettingsError(
            "FAL_KEY: not set. Set FAL_KEY to your fal.ai key, or FAL_EMULATOR=1 to serve the local fal "
            "emulator instead (development only: no job reaches fal)"
        )
    if settings.is_https and not settings.metrics_token:
        raise SettingsError(
            "METRICS_TOKEN: not set, and APP_URL is https (a public deploy), where /metrics would answer "
            "anyone. Set METRICS_TOKEN to a long random secret and give your Prometheus scrape "
            "'Authorization: Bearer <METRICS_TOKEN>'"
        )


async def pool_size_for(dsn: str, processes: int, wanted: int) -> int:
    """The largest pool, up to `wanted`, with which `processes` processes (each also holding its
    LISTEN connection and, while it sweeps, the sweep's) stay under the server's max_connections."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        max_connections = int(await connection.fetchval("SHOW max_connections", timeout=10))
    finally:
        await connection.close()
    fits = (max_connections - CONNECTIONS_KEPT_FREE) // processes - CONNECTIONS_BESIDE_POOL
    if fits < 2:
        raise SettingsError(
            f"WEB_CONCURRENCY: {processes} processes need at least "
            f"{processes * (2 + CONNECTIONS_BESIDE_POOL) + CONNECTIONS_KEPT_FREE} "
            f"of Postgres's max_connections ({max_connections}); run fewer, or put PgBouncer in front"
        )
    return min(wanted, fits)


def serve(settings: Settings, *, processes: int) -> None:
    """Serve the app factory under uvicorn with `processes` worker processes (blocks)."""
    import shutil
    import tempfile

    import uvicorn

    # Metrics: the workers write their values to one folder and /metrics sums them (prometheus-client's
    # multiprocess mode). Set before the workers start (each is a fresh interpreter that reads it when
    # it imports prometheus-client); a folder of our own is removed at the end. One process serving
    # in this interpreter keeps its own registry.
    own_metrics_dir = None
    if processes == 1:
        pass
    elif not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="fal-jobs-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    else:  # an operator's folder: values of an earlier server must not add up with ours
        for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
            stale.unlink(missing_ok=True)

    # Stream tokens are HMACs: the processes behind one port must share the secret, or a token
    # minted by one is refused by the next. Unset, one is made for this server's lifetime.
    os.environ.setdefault("STREAM_TOKEN_SECRET", secrets.token_urlsafe(32))
    try:
        uvicorn.run(
            "service.app:create_app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=processes,  # explicit: uvicorn would otherwise read WEB_CONCURRENCY itself
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            # A backstop under the per-credential limits: past it each process answers 503 at once.
            limit_concurrency=settings.max_connections,
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)

