"""Raw SQL: the delivery log, admin users, and what an operator's figures read.

`fal_deliveries` keeps every webhook delivery we received (accepted, duplicate, parked, rejected
with its reason; a rejected one may name no job we have) and every sweep decision, with how long
it took; retention deletes rows older than DELIVERY_LOG_RETENTION_DAYS (`service/db/retention.py`).
It has no foreign key to `fal_jobs`: a forged or early delivery names a job that is not (yet) there.

`fal_users.is_admin` marks the operators who may read every job (`/api/admin/...`).

`fal_jobs.started_at` is when we first saw the job running (fal's queue said IN_PROGRESS), set by a
trigger so that no writer of status has to think of it: the queue time is `started_at - created_at`
and the run time `completed_at - started_at` (unknown, NULL, when fal ended the job before we saw
it running). The event trigger leaves it out of the event data, as it leaves `counts_open_until`,
so the API's `Job` is unchanged. `fal_jobs_created` serves the cross-user list (keyset on
`created_at, request_id`).

`fal_jobs.spend` (generated from `cost`: the final cost, else the estimate) and `fal_jobs_stats`
let the operator's figures read a window of jobs from the index alone (an index-only scan: the
window's rows hold cost and input, which the figures do not need; bench/admin_stats.py). Adding a
stored generated column rewrites fal_jobs once, under its ACCESS EXCLUSIVE lock: on a large table,
run this migration in a quiet moment (docs/operating.md). The event trigger leaves `spend` out too.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Delivery log, admin users, started_at and the cross-user job index"

FORWARDS_SQL = """
CREATE TABLE fal_deliveries (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    request_id text,
    source text NOT NULL CHECK (source IN ('webhook', 'sweep')),
    outcome text NOT NULL,
    reason text,
    status text,
    duration_us integer NOT NULL DEFAULT 0
);
CREATE INDEX fal_deliveries_request ON fal_deliveries (request_id, id);
CREATE INDEX fal_deliveries_received ON fal_deliveries (received_at);

ALTER TABLE fal_users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;

ALTER TABLE fal_jobs ADD COLUMN started_at timestamptz;
CREATE INDEX fal_jobs_created ON fal_jobs (created_at DESC, request_id DESC);
ALTER TABLE fal_jobs ADD COLUMN spend float8
    GENERATED ALWAYS AS (coalesce((cost ->> 'final')::float8, (cost ->> 'estimated')::float8)) STORED;
CREATE INDEX fal_jobs_stats ON fal_jobs (created_at)
    INCLUDE (model_id, user_id, status, started_at, completed_at, spend);

CREATE FUNCTION fal_jobs_note_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'in_progress' AND NEW.started_at IS NULL THEN
        NEW.started_at := now();
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER fal_jobs_note_start BEFORE UPDATE OF status ON fal_jobs
    FOR EACH ROW EXECUTE FUNCTION fal_jobs_note_start();

CREATE OR REPLACE FUNCTION fal_jobs_write_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
        RETURN NULL;
    END IF;
    INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at)
    VALUES (NEW.request_id, NEW.user_id, NEW.version, NEW.status,
            (to_jsonb(NEW) - 'counts_open_until' - 'started_at' - 'spend') || jsonb_build_object(
                'created_at', fal_jobs_event_time(NEW.created_at),
                'updated_at', fal_jobs_event_time(NEW.updated_at),
                'completed_at', fal_jobs_event_time(NEW.completed_at)),
            NEW.updated_at);
    RETURN NULL;
END;
$$;
"""

BACKWARDS_SQL = """
CREATE OR REPLACE FUNCTION fal_jobs_write_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
        RETURN NULL;
    END IF;
    INSERT INTO fal_job_events (request_id, user_id, version, status, data, created_at)
    VALUES (NEW.request_id, NEW.user_id, NEW.version, NEW.status,
            (to_jsonb(NEW) - 'counts_open_until') || jsonb_build_object(
                'created_at', fal_jobs_event_time(NEW.created_at),
                'updated_at', fal_jobs_event_time(NEW.updated_at),
                'completed_at', fal_jobs_event_time(NEW.completed_at)),
            NEW.updated_at);
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS fal_jobs_note_start ON fal_jobs;
DROP FUNCTION IF EXISTS fal_jobs_note_start();
DROP INDEX IF EXISTS fal_jobs_stats;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS spend;
DROP INDEX IF EXISTS fal_jobs_created;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS started_at;
ALTER TABLE fal_users DROP COLUMN IF EXISTS is_admin;
DROP TABLE IF EXISTS fal_deliveries;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
