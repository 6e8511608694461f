"""`run` (the demo and development server) and `serve` (the Procfile's web process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

from service.cli.database import database_url, migrated_database_url
from service.cli.local_fal import standalone_emulator
from service.serving import check_can_serve, pool_size_for, process_count, serve
from service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import argparse

DEMO_USER = "demo"


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The demo and the development server: the database (embedded when DATABASE_URL is unset),
    migrations, a sign-in link, the fal emulator when FAL_KEY is unset, then the service."""
    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from service.db.migrations import database_reachable

    dsn = database_url(settings)
    if asyncio.run(database_reachable(dsn)):
        migrated_database_url(settings)
        asyncio.run(_welcome(settings, dsn))
    else:
        print("fal-jobs: the database does not answer: serving anyway (not ready); migrations run once it does",
              file=sys.stderr, flush=True)
        _migrate_in_background(settings, dsn)
    # The app factory reads its settings from the environment; hand it the server we resolved.
    os.environ["DATABASE_URL"] = dsn
    where = "embedded PostgreSQL in " + settings.embedded_pgdata if not settings.database_url else "DATABASE_URL"
    with contextlib.ExitStack() as stack:
        if settings.uses_emulator:
            stack.enter_context(standalone_emulator(settings))
            settings = load_settings()
        processes = _fit_processes(settings, dsn)
        print(f"fal-jobs: serving on http://{settings.host}:{settings.port} with {processes} process(es) "
              f"(database: {where})", file=sys.stderr, flush=True)
        serve(settings, processes=processes)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """What the Procfile runs: the service alone, WEB_CONCURRENCY processes behind one port."""
    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    check_can_serve(settings)  # before any worker starts: a refusal must end the command, not loop
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL: not set; 'serve' needs the database (use 'run' for the embedded one)")
    serve(settings, processes=_fit_processes(settings, settings.database_url))
    return 0


def _migrate_in_background(settings: Settings, dsn: str) -> None:
    """`run` with its database down: serve at once (not ready, /readyz names the database), and
    apply the migrations, then print the sign-in link, the moment the database answers."""
    import threading

    from service.db.migrations import MigrationError

    def work() -> None:
        while True:
            try:
                migrated_database_url(settings, wait_s=365 * 24 * 3600)
                asyncio.run(_welcome(settings, dsn))
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


async def _welcome(settings: Settings, dsn: str) -> None:
    """With no user yet, create a local demo user; print a one-time sign-in link for it (on the
    terminal, like Jupyter's ?token= link; never through the logger)."""
    from service.auth.api_keys import create_user
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        demo_id = await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", DEMO_USER)
        if demo_id is None:
            if await pool.fetchval("SELECT count(*) FROM fal_users"):
                return
            demo = await create_user(pool, DEMO_USER)
            demo_id = demo.user_id
            # Its API key is not printed: the browser never needs one ('users create' makes keys).
            print(f"fal-jobs: created the local user '{DEMO_USER}'", file=sys.stderr)
        token = await issue_sign_in_token(pool, demo_id)
    finally:
        await pool.close()
    base = settings.app_url or settings.local_url
    print(f"fal-jobs: open this one-time link to sign in: {base}/?token={token}", file=sys.stderr, flush=True)
