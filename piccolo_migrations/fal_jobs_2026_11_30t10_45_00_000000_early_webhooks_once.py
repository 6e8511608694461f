"""Raw SQL: a parked webhook is kept once per distinct body (repeats and replays add no rows)."""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-11-30T10:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Parked early webhooks: unique per request id and body"

FORWARDS_SQL = """
DELETE FROM fal_early_webhooks a USING fal_early_webhooks b
    WHERE a.id > b.id AND a.request_id = b.request_id AND a.body = b.body;
CREATE UNIQUE INDEX fal_early_webhooks_once ON fal_early_webhooks (request_id, md5(body::text));
"""

BACKWARDS_SQL = "DROP INDEX IF EXISTS fal_early_webhooks_once;"


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
