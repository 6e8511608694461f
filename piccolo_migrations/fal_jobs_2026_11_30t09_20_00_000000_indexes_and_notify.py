"""Raw SQL where Piccolo has no word for it: composite indexes, checks, the NOTIFY trigger."""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-11-30T09:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Indexes for the list query and the sweep, status checks, NOTIFY trigger on events"

FORWARDS_SQL = """
ALTER TABLE fal_jobs
    ADD CONSTRAINT fal_jobs_status_check
        CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    ADD CONSTRAINT fal_jobs_type_check CHECK (type IN ('image', 'video')),
    ADD CONSTRAINT fal_jobs_mode_check CHECK (mode IN ('webhook', 'polling'));

-- The list query: a user's jobs newest first, keyset-paginated on (created_at, request_id).
CREATE INDEX fal_jobs_user_created ON fal_jobs (user_id, created_at DESC, request_id DESC);
-- The reconciliation sweep: jobs not yet terminal, oldest first.
CREATE INDEX fal_jobs_open_by_age ON fal_jobs (updated_at)
    WHERE status IN ('pending', 'in_progress');

-- Resuming a stream reads one job's (or one user's) events after a given id.
CREATE INDEX fal_job_events_request ON fal_job_events (request_id, id);
CREATE INDEX fal_job_events_user ON fal_job_events (user_id, id);
ALTER TABLE fal_job_events ADD CONSTRAINT fal_job_events_request_version UNIQUE (request_id, version);

-- Ids only: a NOTIFY payload is capped at 8,000 bytes and listeners read the row itself.
CREATE FUNCTION fal_job_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fal_job_events', NEW.id::text || ' ' || NEW.request_id || ' ' || NEW.user_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER fal_job_events_notify AFTER INSERT ON fal_job_events
    FOR EACH ROW EXECUTE FUNCTION fal_job_events_notify();
"""

BACKWARDS_SQL = """
DROP TRIGGER IF EXISTS fal_job_events_notify ON fal_job_events;
DROP FUNCTION IF EXISTS fal_job_events_notify();
ALTER TABLE fal_job_events DROP CONSTRAINT IF EXISTS fal_job_events_request_version;
DROP INDEX IF EXISTS fal_job_events_user;
DROP INDEX IF EXISTS fal_job_events_request;
DROP INDEX IF EXISTS fal_jobs_open_by_age;
DROP INDEX IF EXISTS fal_jobs_user_created;
ALTER TABLE fal_jobs
    DROP CONSTRAINT IF EXISTS fal_jobs_mode_check,
    DROP CONSTRAINT IF EXISTS fal_jobs_type_check,
    DROP CONSTRAINT IF EXISTS fal_jobs_status_check;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
