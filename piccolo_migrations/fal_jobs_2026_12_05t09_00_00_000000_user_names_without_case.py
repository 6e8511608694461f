"""Raw SQL: user names compare without case: `alice` and `ALICE` are one user.

A unique index on lower(name) refuses a second spelling, and every lookup by name compares
lower(name) (which this index serves). Users made before it whose names differ only in case keep
everything they have (keys, sessions, jobs hang on the id, not the name): the earliest made keeps
its name, each later one is renamed `<name>-<its id>` (at most 100 characters, still unique), which
`users list` shows, so an operator can rename or disable it.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "User names unique without case"

FORWARDS_SQL = """
UPDATE fal_users AS later SET name = left(later.name, 63) || '-' || later.id
WHERE EXISTS (
    SELECT 1 FROM fal_users AS earlier
    WHERE lower(earlier.name) = lower(later.name) AND (earlier.created_at, earlier.id) < (later.created_at, later.id)
);
CREATE UNIQUE INDEX fal_users_name_lower ON fal_users (lower(name));
"""

BACKWARDS_SQL = """
DROP INDEX IF EXISTS fal_users_name_lower;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
