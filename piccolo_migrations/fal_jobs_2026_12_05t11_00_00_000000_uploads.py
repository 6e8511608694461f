"""Raw SQL: files users upload as job inputs, the jobs that use them, and each user's daily bytes.

One row per (user, sha256): the same file twice is one stored object. `fal_job_uploads` names the
uploads a job's input referenced, so retention keeps an upload an open job still needs. The daily
byte count lives in the database so that every process counts against the same quota.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T11:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Uploads: input files of a user's jobs, their use by jobs, and a daily byte quota"

FORWARDS_SQL = """
CREATE TABLE fal_uploads (
    upload_id varchar(36) PRIMARY KEY,
    user_id varchar(36) NOT NULL REFERENCES fal_users (id) ON DELETE CASCADE,
    sha256 varchar(64) NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    width integer,
    height integer,
    store_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- INPUT_DELIVERY=fal_cdn: the copy on fal's CDN, reused until it would expire.
    cdn_url text,
    cdn_expires_at timestamptz,
    UNIQUE (user_id, sha256)
);
CREATE INDEX fal_uploads_by_user ON fal_uploads (user_id, created_at DESC);
CREATE INDEX fal_uploads_expiry ON fal_uploads (expires_at);

CREATE TABLE fal_job_uploads (
    request_id text NOT NULL REFERENCES fal_jobs (request_id) ON DELETE CASCADE,
    upload_id varchar(36) NOT NULL,
    PRIMARY KEY (request_id, upload_id)
);
CREATE INDEX fal_job_uploads_by_upload ON fal_job_uploads (upload_id);

CREATE TABLE fal_upload_usage (
    user_id varchar(36) NOT NULL REFERENCES fal_users (id) ON DELETE CASCADE,
    day date NOT NULL,
    bytes bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
"""

BACKWARDS_SQL = """
DROP TABLE IF EXISTS fal_upload_usage;
DROP TABLE IF EXISTS fal_job_uploads;
DROP TABLE IF EXISTS fal_uploads;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
