"""Raw SQL: spend limits decided in Postgres (reservations, per-user overrides), idempotent creates,
revocable keys and disabled users."""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-01T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Job reservations with idempotency keys; per-user limits; key revocation; disabled users"

FORWARDS_SQL = """
ALTER TABLE fal_users
    ADD COLUMN disabled_at timestamptz,
    ADD COLUMN max_open_jobs integer CHECK (max_open_jobs > 0),
    ADD COLUMN max_jobs_per_minute integer CHECK (max_jobs_per_minute > 0),
    ADD COLUMN max_streams integer CHECK (max_streams > 0);
ALTER TABLE fal_api_keys ADD COLUMN revoked_at timestamptz;

-- One row per accepted create, written before anything is sent to fal: the open-job and per-minute
-- limits count these, so two processes cannot together exceed them, and an Idempotency-Key finds
-- the job its first request made. request_id is filled in when the job row is written.
CREATE TABLE fal_job_reservations (
    id bigserial PRIMARY KEY,
    user_id varchar(36) NOT NULL,
    idempotency_key text,
    body_sha256 varchar(64) NOT NULL,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX fal_job_reservations_key ON fal_job_reservations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX fal_job_reservations_recent ON fal_job_reservations (user_id, created_at);
CREATE INDEX fal_jobs_open_by_user ON fal_jobs (user_id) WHERE status IN ('pending', 'in_progress');
"""

BACKWARDS_SQL = """
DROP INDEX IF EXISTS fal_jobs_open_by_user;
DROP TABLE IF EXISTS fal_job_reservations;
ALTER TABLE fal_api_keys DROP COLUMN IF EXISTS revoked_at;
ALTER TABLE fal_users DROP COLUMN IF EXISTS disabled_at, DROP COLUMN IF EXISTS max_open_jobs,
    DROP COLUMN IF EXISTS max_jobs_per_minute, DROP COLUMN IF EXISTS max_streams;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
