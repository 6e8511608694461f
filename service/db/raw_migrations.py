"""The one shape of our raw-SQL migrations: a block of SQL forwards, a block backwards.

Piccolo's auto migrations cannot express partial indexes, checks, triggers or foreign keys added
over existing data, so those migrations are SQL; this builds their `forwards()` so that each
migration file holds only its SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder
from piccolo.engine.postgres import PostgresEngine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

APP_NAME = "fal_jobs"


async def run_sql(sql: str) -> None:
    """Several statements need asyncpg's simple-query protocol (`execute` without arguments), on a
    connection of its own."""
    engine = engine_finder()
    if engine is None:
        raise RuntimeError("piccolo_conf.py defines no database engine")
    if not isinstance(engine, PostgresEngine):
        raise RuntimeError(f"piccolo_conf.py's DB must be a PostgresEngine, not {type(engine).__name__}: "
                           "the raw SQL migrations are PostgreSQL's")
    connection = await engine.get_new_connection()
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def raw_sql_migration(
    migration_id: str, description: str, forwards_sql: str, backwards_sql: str
) -> Callable[[], Awaitable[MigrationManager]]:
    """The module-level `forwards` Piccolo calls for a migration made of SQL."""

    async def forwards() -> MigrationManager:
        manager = MigrationManager(migration_id=migration_id, app_name=APP_NAME, description=description)

        async def run_forwards() -> None:
            await run_sql(forwards_sql)

        async def run_backwards() -> None:
            await run_sql(backwards_sql)

        manager.add_raw(run_forwards)
        manager.add_raw_backwards(run_backwards)
        return manager

    return forwards
