"""Raw SQL: a job's event row is written by a trigger on `fal_jobs`, from the row itself.

Every write that gives a job a new version (its creation included) gets exactly one event, built
in one place: no code path can change a job and forget its event or spell its JSON differently.
The event's `data` is the row as the API's `Job` (msgspec) writes it: every column but the
bookkeeping `counts_open_until`, with the timestamps in msgspec's form (`...T01:02:03.123456Z`,
no fraction when it is zero), so the text readers get is the text a Python encoder would give.
An UPDATE that leaves `version` alone (the open-jobs bookkeeping) writes none.

The trigger runs after the row's write, in the same transaction: the transaction holds its id
before the event draws its own from the sequence, which the event cursor's gap rule relies on
(`service/realtime/cursor.py`).
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-04T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Job events written by a trigger on fal_jobs"

FORWARDS_SQL = """
CREATE FUNCTION fal_jobs_event_time(moment timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM moment)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(moment AT TIME ZONE 'UTC', '.US') END
        || 'Z'
$$;

CREATE FUNCTION fal_jobs_write_event() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER fal_jobs_write_event AFTER INSERT OR UPDATE OF version ON fal_jobs
    FOR EACH ROW EXECUTE FUNCTION fal_jobs_write_event();
"""

BACKWARDS_SQL = """
DROP TRIGGER IF EXISTS fal_jobs_write_event ON fal_jobs;
DROP FUNCTION IF EXISTS fal_jobs_write_event();
DROP FUNCTION IF EXISTS fal_jobs_event_time(timestamptz);
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
