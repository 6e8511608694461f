"""Raw SQL: tags and metadata on jobs, and the index that finds a user's jobs by tag.

`tags` and `metadata` are columns of the job (fixed at creation), so every read of a job and every
event the `fal_jobs_write_event` trigger writes from the row carries them. Adding them with a
constant default rewrites no row. The events written before this migration are given the same
defaults (`[]`, `{}`), so that a stream replaying or snapshotting an older job sends them too.

`fal_job_tags` holds one row per (job, tag), written in the job's INSERT statement. Its primary
key (user_id, tag, created_at, request_id) is what a list by tag walks, newest first and keyset
paginated like the plain list (`fal_jobs_user_created`): a page reads its rows and no other job of
the user. Job rows are never deleted (they are the history); the key to `fal_jobs` cascades all
the same, so that a tag row never outlives its job.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Tags and metadata on jobs; jobs by tag"

FORWARDS_SQL = """
ALTER TABLE fal_jobs
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

CREATE TABLE fal_job_tags (
    user_id varchar(36) NOT NULL,
    tag text NOT NULL,
    created_at timestamptz NOT NULL,
    request_id text NOT NULL REFERENCES fal_jobs (request_id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, tag, created_at, request_id)
);

UPDATE fal_job_events SET data = data || '{"tags": [], "metadata": {}}'::jsonb WHERE NOT data ? 'tags';
"""

BACKWARDS_SQL = """
DROP TABLE IF EXISTS fal_job_tags;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS tags, DROP COLUMN IF EXISTS metadata;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
