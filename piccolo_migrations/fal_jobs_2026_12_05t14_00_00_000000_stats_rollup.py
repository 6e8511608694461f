"""Raw SQL: a rollup of the operator's figures per hour, day and 30 days, and what marks it stale.

A stats call over a week or a month cannot read every job of the window in 200 ms (a million jobs
took 5.6 s through `fal_jobs_stats`). `service/jobs/stats_rollup.py` sums each settled hour once:
per model (jobs, completed, failed, spend), per user (jobs, spend), per model a histogram of queue
and run times in log buckets (`fal_stats_bucket`: 8 per doubling, so the bucket's midpoint is
within 4.5 % of any time in it) and per model the failures by message; a day's rows are the sum of
its 24 hours, and 30 days' rows (from the Unix epoch, 720 hours: a year's window reads 12 of them
rather than 365 days of a row per active user) the sum of their days. `fal_stats_periods` lists the
periods rolled up (`hours` 1, 24 or 720); their rows go with them (ON DELETE CASCADE). `service/jobs/admin_stats.py` reads the clean periods inside a window
and the rest of the window (its edges, the recent hours, stale hours) live from `fal_jobs`.

Staleness: a job of an hour older than an hour that is inserted, deleted or changes in a way the
figures see (a late webhook, the sweep, a backdated insert) appends that hour to
`fal_stats_changes`. The triggers' WHEN clauses keep this off the hot path: a job's changes in its
first hour (almost all of them) do not call the function at all. An hour with a change, and the day
holding it, is not clean: readers take it live until the next pass recomputes it. The log is
append-only (no upsert, no row lock): two writers never wait on each other, and a recompute that
deletes an hour's changes before it reads the hour's jobs (a later statement, a later snapshot)
cannot lose a change committed in between (`stats_rollup.py`). Rollups only cover hours that ended
two hours ago or more, so the one-hour margin here leaves an hour of slack for a clock read early
in a long transaction.

`fal_jobs_stats`, the covering index the figures read before, goes: no query reads it any more (the
live stretches read `error` too, through `fal_jobs_created`), and every job's status change paid for it.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Per-hour, per-day and per-30-day rollup of the operator's figures"

FORWARDS_SQL = """
DROP INDEX IF EXISTS fal_jobs_stats;
CREATE TABLE fal_stats_periods (
    hours smallint NOT NULL CHECK (hours IN (1, 24, 720)),
    start timestamptz NOT NULL,
    rolled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hours, start)
);
CREATE TABLE fal_stats_models (
    hours smallint NOT NULL, start timestamptz NOT NULL, model_id text NOT NULL,
    jobs integer NOT NULL, completed integer NOT NULL, failed integer NOT NULL, spend numeric,
    PRIMARY KEY (hours, start, model_id),
    FOREIGN KEY (hours, start) REFERENCES fal_stats_periods ON DELETE CASCADE
);
CREATE TABLE fal_stats_users (
    hours smallint NOT NULL, start timestamptz NOT NULL, user_id text NOT NULL,
    jobs integer NOT NULL, spend numeric,
    PRIMARY KEY (hours, start, user_id),
    FOREIGN KEY (hours, start) REFERENCES fal_stats_periods ON DELETE CASCADE
);
CREATE TABLE fal_stats_durations (
    hours smallint NOT NULL, start timestamptz NOT NULL, model_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('queue', 'run')), bucket smallint NOT NULL, jobs integer NOT NULL,
    PRIMARY KEY (hours, start, model_id, kind, bucket),
    FOREIGN KEY (hours, start) REFERENCES fal_stats_periods ON DELETE CASCADE
);
CREATE TABLE fal_stats_failures (
    hours smallint NOT NULL, start timestamptz NOT NULL, model_id text NOT NULL,
    error text NOT NULL, jobs integer NOT NULL,
    FOREIGN KEY (hours, start) REFERENCES fal_stats_periods ON DELETE CASCADE
);
CREATE INDEX fal_stats_failures_period ON fal_stats_failures (hours, start);
CREATE TABLE fal_stats_changes (hour timestamptz NOT NULL, noted_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX fal_stats_changes_hour ON fal_stats_changes (hour);

CREATE FUNCTION fal_stats_bucket(seconds float8) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN seconds < 0.0009765625 THEN -81 ELSE floor(8 * ln(seconds) / ln(2))::smallint END
$$;

CREATE FUNCTION fal_stats_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO fal_stats_changes (hour) VALUES (date_trunc('hour', OLD.created_at, 'UTC'));
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.created_at IS DISTINCT FROM OLD.created_at) THEN
        INSERT INTO fal_stats_changes (hour) VALUES (date_trunc('hour', NEW.created_at, 'UTC'));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER fal_stats_old_insert AFTER INSERT ON fal_jobs FOR EACH ROW
    WHEN (NEW.created_at < now() - interval '1 hour')
    EXECUTE FUNCTION fal_stats_note_change();
CREATE TRIGGER fal_stats_old_update AFTER UPDATE ON fal_jobs FOR EACH ROW
    WHEN ((OLD.created_at < now() - interval '1 hour' OR NEW.created_at < now() - interval '1 hour')
          AND (OLD.created_at, OLD.model_id, OLD.user_id, OLD.status, OLD.error, OLD.started_at, OLD.completed_at,
               OLD.spend)
              IS DISTINCT FROM (NEW.created_at, NEW.model_id, NEW.user_id, NEW.status, NEW.error, NEW.started_at,
                                NEW.completed_at, NEW.spend))
    EXECUTE FUNCTION fal_stats_note_change();
CREATE TRIGGER fal_stats_old_delete AFTER DELETE ON fal_jobs FOR EACH ROW
    WHEN (OLD.created_at < now() - interval '1 hour')
    EXECUTE FUNCTION fal_stats_note_change();
"""

BACKWARDS_SQL = """
DROP TRIGGER IF EXISTS fal_stats_old_delete ON fal_jobs;
DROP TRIGGER IF EXISTS fal_stats_old_update ON fal_jobs;
DROP TRIGGER IF EXISTS fal_stats_old_insert ON fal_jobs;
DROP FUNCTION IF EXISTS fal_stats_note_change();
DROP FUNCTION IF EXISTS fal_stats_bucket(float8);
DROP TABLE IF EXISTS fal_stats_changes, fal_stats_failures, fal_stats_durations, fal_stats_users, fal_stats_models,
    fal_stats_periods;
CREATE INDEX IF NOT EXISTS fal_jobs_stats ON fal_jobs (created_at)
    INCLUDE (model_id, user_id, status, started_at, completed_at, spend);
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
