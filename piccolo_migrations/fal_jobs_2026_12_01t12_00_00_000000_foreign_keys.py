"""Raw SQL: foreign keys from the tables that name a user or a job, with the data kept.

Each constraint is added NOT VALID (checked for every new row from now on, without a full scan
under lock) and then validated when no existing row breaks it; a database holding such rows keeps
them, gets a notice naming the constraint, and can be validated once they are dealt with
(`ALTER TABLE ... VALIDATE CONSTRAINT ...`). Deleting a user removes its keys, sign-in links and
sessions and is refused while it owns jobs (they are the history); deleting a job removes its
events. Parked webhooks name a request id before its job exists, so they get no key.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-01T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Foreign keys to fal_users and fal_jobs"

CONSTRAINTS = (
    ("fal_api_keys", "fal_api_keys_user_fk", "user_id", "fal_users (id) ON DELETE CASCADE"),
    ("fal_sign_in_tokens", "fal_sign_in_tokens_user_fk", "user_id", "fal_users (id) ON DELETE CASCADE"),
    ("fal_browser_sessions", "fal_browser_sessions_user_fk", "user_id", "fal_users (id) ON DELETE CASCADE"),
    ("fal_jobs", "fal_jobs_user_fk", "user_id", "fal_users (id) ON DELETE RESTRICT"),
    ("fal_job_events", "fal_job_events_job_fk", "request_id", "fal_jobs (request_id) ON DELETE CASCADE"),
)

FORWARDS_SQL = "\n".join(
    f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({column}) REFERENCES {target} NOT VALID;\n"
    f"DO $$ BEGIN ALTER TABLE {table} VALIDATE CONSTRAINT {name}; "
    f"EXCEPTION WHEN foreign_key_violation THEN "
    f"RAISE NOTICE '{name}: existing rows break it; it holds for new rows; validate it once they are fixed'; END $$;"
    for table, name, column, target in CONSTRAINTS
)

BACKWARDS_SQL = "\n".join(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name};" for table, name, _, _ in CONSTRAINTS)


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
