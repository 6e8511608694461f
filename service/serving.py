"""Serving: how many processes, how big each one's pool, and the one uvicorn invocation that both
`run` and the Procfile use (`python -m service serve`).

Each process is a whole service: its own pool, its one LISTEN connection, its own hub, and while it
sweeps one more connection holding the sweep's lock. Postgres is the only thing they share, so N
processes need N x (pool + 2) of Postgres's `max_connections`; `pool_size_for` shrinks the pools to
fit when that is too many.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_DEFAULT_PROCESSES = 8
"""Past this, more processes of one machine mostly add Postgres connections and NOTIFY readers;
set WEB_CONCURRENCY to go further."""
CONNECTIONS_KEPT_FREE = 10
"""Left to migrations, the CLI, psql and the superuser slots."""
CONNECTIONS_BESIDE_POOL = 2
"""Each process's LISTEN connection, and the one holding its sweep's lock while it sweeps."""
LISTEN_BACKLOG = 2048
"""uvicorn's default: connections the kernel queues for the workers to accept."""


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


class CannotListen(Exception):
    """The port cannot be had; the message is one sentence naming the setting to change."""


def bind_listener(settings: Settings) -> socket.socket:
    """The service's listening socket, bound before anything else starts (the database, the emulator,
    a sign-in link), so that a busy port ends the command at once; uvicorn serves on this very socket
    (no second bind that another server could win in between)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
        # Listening at once: from here a second server's bind fails (two SO_REUSEADDR sockets may
        # share a port until one listens). Connections made before the workers start wait in the queue.
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        raise CannotListen(_cannot_listen(settings, error)) from None
    return listener


def _cannot_listen(settings: Settings, error: OSError) -> str:
    host, port = settings.host, settings.port
    if error.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another fal-jobs?); "
                f"{_set_port(settings)} (or in .env) to use another")
    if error.errno == errno.EACCES:
        return f"port {port} on {host} is not open to this user (below 1024 needs root); {_set_port(settings)} (or in .env)"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return (f"HOST={host} is not an address of this machine; set HOST=127.0.0.1 (or 0.0.0.0 for every "
                "interface; or in .env)")
    return f"cannot listen on {host}:{port} ({error.strerror or error}); set HOST or PORT (or in .env)"


def _set_port(settings: Settings) -> str:
    """`set PORT=<the next free port>`: the sentence names one that works now."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for port in range(settings.port + 1, min(settings.port + 50, 65536)):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((settings.host, port))
            except OSError:
                continue
            return f"set PORT={port}"
    return "set PORT to a free port"


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


def serve(settings: Settings, *, processes: int, listener: socket.socket,
          on_started: Callable[[], None] | None = None) -> int:
    """Serve the app factory under uvicorn with `processes` worker processes on `listener` (see
    `bind_listener`); blocks, and returns the exit code. `on_started` runs once, in this process,
    when every worker has finished its start-up: nothing a worker logs at start comes after it."""
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
    config = uvicorn.Config(
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
    try:
        return _run_uvicorn(config, listener, on_started)
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _run_uvicorn(config: uvicorn.Config, listener: socket.socket, on_started: Callable[[], None] | None) -> int:
    """What `uvicorn.run` does, on our socket: one server in this process, or a supervisor of
    `config.workers` processes. A server that never finished starting is uvicorn's exit code 3."""
    if config.workers == 1:
        server = _AnnouncingServer(config, on_started)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn shuts down, then raises it again
            server.run(sockets=[listener])
        return 0 if server.started else STARTUP_FAILURE
    listener.set_inheritable(True)  # as uvicorn's own bind does: each worker serves on it
    supervisor = _AnnouncingMultiprocess(config, [listener], on_started)
    supervisor.run()
    return 0 if supervisor.announced else STARTUP_FAILURE


class _AnnouncingServer(uvicorn.Server):
    """One process: `on_started` runs once its server has started (after uvicorn's start-up lines)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()


class _AnnouncingMultiprocess(Multiprocess):
    """Several processes: the supervisor asks each worker, over uvicorn's own health-check pipe,
    whether its server has started; once all have, `on_started` runs here, in the parent, once.
    (A worker cannot know it is the last to start, nor print after uvicorn's own start-up lines.)"""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket],
                 on_started: Callable[[], None] | None) -> None:
        super().__init__(config, sockets=sockets)
        self._on_started = on_started
        self.announced = False

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()  # every half second, in the supervisor's one thread
        if self.announced or self.should_exit.is_set():
            return
        if all(process.is_ready(timeout=self.config.timeout_worker_healthcheck) for process in self.processes):
            self.announced = True
            if self._on_started is not None:
                self._on_started()
