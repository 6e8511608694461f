"""Raw SQL: a parked webhook is kept once per distinct body (repeats and replays add no rows)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder

ID = "2026-11-30T10:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Parked early webhooks: unique per request id and body"

FORWARDS_SQL = """
DELETE FROM fal_early_webhooks a USING fal_early_webhooks b
    WHERE a.id > b.id AND a.request_id = b.request_id AND a.body = b.body;
CREATE UNIQUE INDEX fal_early_webhooks_once ON fal_early_webhooks (request_id, md5(body::text));
"""

BACKWARDS_SQL = "DROP INDEX IF EXISTS fal_early_webhooks_once;"


async def _run(sql: str) -> None:
    engine = engine_finder()
    assert engine is not None
    connection = await engine.get_new_connection()
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="fal_jobs", description=DESCRIPTION)

    async def run_forwards() -> None:
        await _run(FORWARDS_SQL)

    async def run_backwards() -> None:
        await _run(BACKWARDS_SQL)

    manager.add_raw(run_forwards)
    manager.add_raw_backwards(run_backwards)
    return manager
