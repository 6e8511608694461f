"""The database every command works on (DATABASE_URL, or the embedded one), migrated first; and
the `migrate` command."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    import asyncpg

    from service.settings import Settings


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from service.db.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.embedded_pgdata)


def migrated_database_url(settings: Settings, *, dsn: str | None = None, wait_s: float | None = None) -> str:
    """The database's DSN (`dsn` when the caller has it already) once it answers (within
    MIGRATE_WAIT_S) and has every migration."""
    from service.db.migrations import apply_migrations, wait_for_database

    wait_s = settings.migrate_wait_s if wait_s is None else wait_s
    dsn = dsn or database_url(settings)
    wait_for_database(dsn, wait_s=wait_s, on_wait=lambda: print(
        f"fal-jobs: waiting up to {wait_s:g} s for the database to answer", file=sys.stderr, flush=True))
    apply_migrations(dsn)
    return dsn


def with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    """Run `work` on a one-connection pool of the (migrated) database; a domain error is a message
    and exit code 1, never a traceback."""
    from service.db.pool import create_pool
    from service.errors import DomainError

    dsn = migrated_database_url(settings)

    async def run() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            return await work(pool)
        except DomainError as exc:
            print(f"fal-jobs: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()

    return asyncio.run(run())


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    migrated_database_url(settings)
    print("fal-jobs: migrations applied", file=sys.stderr)
    return 0
