"""Raw SQL: a copy's store failures counted apart from its source failures, and failures the sweep may re-drive.

`attempts` counts the tries that failed at fal's CDN (the source), from now on counted when a try
fails rather than when it is claimed. `store_failures` counts the tries that failed at our store;
they are retried for as long as fal keeps its copy. `retryable` marks a `failed` output whose
failure may pass (a budget of transient failures spent): the sweep and `outputs retry` set it
`pending` again while fal's copy lives. Outputs that failed on a spent budget before this
migration are marked so too.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-03T14:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Outputs: store failures apart from source failures; failed outputs that may be re-driven"

FORWARDS_SQL = """
ALTER TABLE fal_job_outputs ADD COLUMN store_failures integer NOT NULL DEFAULT 0;
ALTER TABLE fal_job_outputs ADD COLUMN retryable boolean NOT NULL DEFAULT false;
UPDATE fal_job_outputs SET retryable = true WHERE status = 'failed' AND last_error LIKE 'gave up after %';
CREATE INDEX fal_job_outputs_redrive ON fal_job_outputs (updated_at) WHERE status = 'failed' AND retryable;
"""

BACKWARDS_SQL = """
DROP INDEX IF EXISTS fal_job_outputs_redrive;
ALTER TABLE fal_job_outputs DROP COLUMN IF EXISTS retryable;
ALTER TABLE fal_job_outputs DROP COLUMN IF EXISTS store_failures;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
