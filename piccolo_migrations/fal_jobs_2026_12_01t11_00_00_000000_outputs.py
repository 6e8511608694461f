"""Raw SQL: durable copies of a job's media (the outputs work queue) and the `deleted` job status."""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-01T11:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Outputs: one row per media file of a completed job, copied into our object store"

FORWARDS_SQL = """
ALTER TABLE fal_jobs DROP CONSTRAINT fal_jobs_status_check;
ALTER TABLE fal_jobs ADD CONSTRAINT fal_jobs_status_check
    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled', 'deleted'));
-- The job's view of its outputs (what the API and every event carry); fal_job_outputs is the
-- work queue and the record of each copy. The status machine writes both in one statement.
ALTER TABLE fal_jobs ADD COLUMN outputs jsonb NOT NULL DEFAULT '[]'::jsonb;

CREATE TABLE fal_job_outputs (
    request_id text NOT NULL,
    index integer NOT NULL,
    user_id varchar(36) NOT NULL,
    kind varchar(8) NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'other')),
    source_url text NOT NULL,
    status varchar(8) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'stored', 'failed', 'deleted')),
    content_type text,
    size bigint,
    sha256 varchar(64),
    store_key text,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A worker's claim: its random id and until when it holds the row. A claim that is not
    -- renewed (the process died) lapses, and any process takes the row again.
    claim varchar(32),
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, index)
);
-- Workers look for due rows: pending copies, and deleted rows whose bytes are still in the store.
CREATE INDEX fal_job_outputs_due ON fal_job_outputs (next_attempt_at)
    WHERE status = 'pending' OR (status = 'deleted' AND store_key IS NOT NULL);
"""

BACKWARDS_SQL = """
DROP TABLE IF EXISTS fal_job_outputs;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS outputs;
ALTER TABLE fal_jobs DROP CONSTRAINT fal_jobs_status_check;
ALTER TABLE fal_jobs ADD CONSTRAINT fal_jobs_status_check
    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled'));
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
