"""`run` (the demo and development server) and `serve` (the Procfile's web process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

from service.cli.address import recorded_address
from service.cli.database import database_url, migrated_database_url
from service.cli.local_fal import standalone_emulator
from service.serving import CannotListen, bind_listener, check_can_serve, pool_size_for, process_count, serve
from service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import argparse

DEMO_USER = "demo"
SIGN_IN_LINE = "open this one-time link to sign in: "


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The demo and the development server: the port, the database (embedded when DATABASE_URL is
    unset), migrations and a sign-in link, the fal emulator when FAL_KEY is unset, the service; and,
    once every process serves, one block on the terminal saying where it is and how to sign in."""
    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:  # first: a busy port ends the command before anything starts or any link is made
        listener = bind_listener(settings)
    except CannotListen as refusal:
        print(f"fal-jobs: {refusal}", file=sys.stderr, flush=True)
        return 1
    from service.db.migrations import database_reachable

    dsn = database_url(settings)
    if asyncio.run(database_reachable(dsn)):
        migrated_database_url(settings, dsn=dsn)
        sign_in = asyncio.run(_welcome(settings, dsn))
    else:
        print("fal-jobs: the database does not answer: serving anyway (not ready); migrations run once it does",
              file=sys.stderr, flush=True)
        _migrate_in_background(settings, dsn)
        sign_in = "the sign-in link follows once the database answers"
    # The app factory reads its settings from the environment; hand it the server we resolved.
    os.environ["DATABASE_URL"] = dsn
    where = "embedded PostgreSQL in " + settings.embedded_pgdata if not settings.database_url else "DATABASE_URL"
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        served = settings
        if settings.uses_emulator:
            stack.enter_context(standalone_emulator(settings))
            served = load_settings()
        processes = _fit_processes(served, dsn)
        stack.enter_context(recorded_address(settings, served.app_url or served.local_url))
        block = _ready_block(served, processes=processes, database=where, sign_in=sign_in,
                             emulator=settings.uses_emulator)
        return serve(served, processes=processes, listener=listener,
                     on_started=lambda: print(block, file=sys.stderr, flush=True))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """What the Procfile runs: the service alone, WEB_CONCURRENCY processes behind one port."""
    import logging

    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    check_can_serve(settings)  # before any worker starts: a refusal must end the command, not loop
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL: not set; 'serve' needs the database (use 'run' for the embedded one)")
    try:
        listener = bind_listener(settings)
    except CannotListen as refusal:
        print(f"fal-jobs: {refusal}", file=sys.stderr, flush=True)
        return 1
    with listener:
        processes = _fit_processes(settings, settings.database_url)
        url = settings.app_url or settings.local_url

        def started() -> None:
            logging.getLogger("service.serve").info(
                "serving", extra={"action": "serving", "url": settings.local_url, "processes": processes})

        with recorded_address(settings, url):
            return serve(settings, processes=processes, listener=listener, on_started=started)


def _ready_block(settings: Settings, *, processes: int, database: str, sign_in: str, emulator: bool) -> str:
    """What `run` prints last, once every process serves: where, how to sign in, which fal."""
    public = f"; public address {settings.app_url}" if settings.app_url not in (None, settings.local_url) else ""
    lines = [
        f"ready at {settings.local_url} ({processes} process{'es' if processes > 1 else ''}; "
        f"database: {database}{public})",
        sign_in,
    ]
    if emulator:
        lines.append("FAL_KEY is not set: jobs go to the local fal emulator, which makes test images and videos "
                     "(nothing reaches fal.ai, nothing is paid); set FAL_KEY to your fal.ai key for real jobs")
    return "\n".join(f"fal-jobs: {line}" for line in lines)


def _migrate_in_background(settings: Settings, dsn: str) -> None:
    """`run` with its database down: serve at once (not ready, /readyz names the database), and
    apply the migrations, then print the sign-in link, the moment the database answers."""
    import threading

    from service.db.migrations import MigrationError

    def work() -> None:
        while True:
            try:
                migrated_database_url(settings, dsn=dsn, wait_s=365 * 24 * 3600)
                print(f"fal-jobs: {asyncio.run(_welcome(settings, dsn))}", file=sys.stderr, flush=True)
                return
            except MigrationError as error:
                print(f"fal-jobs: {error}; trying again", file=sys.stderr, flush=True)
                time.sleep(1)

    threading.Thread(target=work, name="migrate-when-reachable", daemon=True).start()


def _fit_processes(settings: Settings, dsn: str) -> int:
    """The process count, with each process's pool shrunk (DATABASE_POOL_MAX) so that all of them
    fit under Postgres's max_connections."""
    from service.db.pool import is_unavailable

    processes = process_count(settings)
    try:
        pool_max = asyncio.run(pool_size_for(dsn, processes, settings.database_pool_max))
    except Exception as error:
        if not is_unavailable(error):
            raise
        # Postgres is down: serve anyway (not ready until it answers) with the configured pools.
        print(f"fal-jobs: the database does not answer ({type(error).__name__}); each pool may hold "
              f"{settings.database_pool_max} connections", file=sys.stderr, flush=True)
        pool_max = settings.database_pool_max
    if pool_max < settings.database_pool_max:
        print(f"fal-jobs: {processes} processes: each pool holds at most {pool_max} connections "
              "to stay under Postgres's max_connections", file=sys.stderr)
    os.environ["DATABASE_POOL_MAX"] = str(pool_max)
    return processes


async def _welcome(settings: Settings, dsn: str) -> str:
    """With no user yet, create the local demo user (without an API key: the browser needs none, and
    `keys create demo` makes one); the line that signs it in, a one-time link for the terminal (like
    Jupyter's ?token= link; never through the logger)."""
    from service.auth.api_keys import add_user
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        demo_id = await pool.fetchval("SELECT id FROM fal_users WHERE lower(name) = lower($1)", DEMO_USER)
        if demo_id is None:
            if await pool.fetchval("SELECT count(*) FROM fal_users"):
                return "sign in with the one-time link that 'python3 -m service users sign-in NAME' prints"
            demo_id = await add_user(pool, DEMO_USER)
            print(f"fal-jobs: created the local user '{DEMO_USER}'", file=sys.stderr)
        token = await issue_sign_in_token(pool, demo_id)
    finally:
        await pool.close()
    return f"{SIGN_IN_LINE}{settings.app_url or settings.local_url}/?token={token}"
