"""Raw SQL: a job cancelled while fal ran it keeps its open-jobs slot until fal reports its end.

fal's cancel of a running request only signals the runner: the work (and its bill) may go on until
it ends by itself. `counts_open_until` is set, with the `cancelled` status, when that may be so:
the open-jobs limit counts the job until then, or until the webhook, a follower or the sweep sees
fal's end (it is then set to NULL). NULL for every other job, so the index holds only such jobs.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-03T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Jobs cancelled while running count against the open-jobs limit until fal ends them"

FORWARDS_SQL = """
ALTER TABLE fal_jobs ADD COLUMN counts_open_until timestamptz;
CREATE INDEX fal_jobs_counts_open ON fal_jobs (user_id, counts_open_until) WHERE counts_open_until IS NOT NULL;
"""

BACKWARDS_SQL = """
DROP INDEX IF EXISTS fal_jobs_counts_open;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS counts_open_until;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
