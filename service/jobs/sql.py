"""Every statement that writes a job, parks a webhook or works the output queue: one name each.

The status machine (`status_machine.py`), the webhook intake and the copy workers send these, so
a reader finds here what changes a job, parks a webhook or moves a row of `fal_job_outputs`. Left
with their readers: the API's reads (`jobs/queries.py`, `outputs/access.py`) and the open-jobs
bookkeeping (`jobs/reservations.py`, a column outside the job's view). A job's columns are
`rows.JOB_COLUMNS`; the output queue's insert is `_QUEUE_OUTPUTS`, shared by the statements that
end a job.

No statement writes `fal_job_events`: the `fal_jobs_write_event` trigger writes the event of every
new version of a row, from the row (`piccolo_migrations/…_events_by_trigger.py`).
"""

from __future__ import annotations

from service.jobs.models import TERMINAL_STATUSES
from service.jobs.rows import JOB_COLUMNS

# --- Jobs: creation, reads under lock, changes ---------------------------------------------------

LOCK_REQUEST = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
"""Serializes, until the transaction ends, a job's creation with a webhook that finds no row for
it (and parks itself): whoever comes second sees what the first did. $1: the request id."""

INSERT_JOB = """
WITH job AS (
    INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, mode, version, created_at, updated_at,
        tags, metadata, cost)
    VALUES ($1, $2, $3, $4, $5, 'pending', $6, 1, $7, $7, $8, $9, $10)
    RETURNING request_id, user_id, created_at, tags
)
INSERT INTO fal_job_tags (user_id, tag, created_at, request_id)
SELECT job.user_id, tag, job.created_at, job.request_id FROM job, unnest(job.tags) AS tag
"""
"""A new job, version 1, and the rows that find it by each of its tags, in one statement. $1-$6:
request id, user id, model id, type, input, mode; $7: now; $8: its tags; $9: its metadata; $10: its cost."""

SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1"
LOCK_JOB = f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1 FOR UPDATE"

_QUEUE_OUTPUTS = """queued AS (
    INSERT INTO fal_job_outputs (request_id, index, user_id, kind, source_url, created_at, updated_at, next_attempt_at)
    SELECT t.request_id, t.index, changed.user_id, t.kind, t.url, $2, $2, $2
    FROM jsonb_to_recordset($3::jsonb) AS t(request_id text, index int, kind text, url text)
    JOIN changed ON changed.request_id = t.request_id
    ON CONFLICT DO NOTHING
)"""
"""Each media file of a job that `changed` completed becomes a pending row of the copy queue, in
the statement that completes it: a completed job never lacks its copy work. $2: now; $3: the
files, as JSON rows (request_id, index, kind, url)."""

CHANGE_JOB = f"""
WITH changed AS (
    UPDATE fal_jobs SET status = $5::text, queue_position = $6, logs = $7, result = $8, error = $9, error_type = $10,
        completed_at = $11, outputs = $12, version = version + 1, updated_at = $2,
        cost = fal_jobs_final_cost(cost, $5::text, $13::jsonb)
    WHERE request_id = $1 AND version = $4
    RETURNING request_id, user_id, cost
), {_QUEUE_OUTPUTS}
SELECT true AS written, cost FROM changed
"""
"""Writes the job as decided, only if its version is still $4 (a compare-and-swap under the row
lock the UPDATE takes); a row (with the job's cost after it) when it did. $1: request id; $2: now;
$3: files to queue; $5-$12: the job's status, queue position, logs, result, error, error type,
completed at and outputs; $13: the units its output shows (`costs.units_of_output`), for its
final cost should this end it."""

_OPEN = "status NOT IN (" + ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES)) + ")"


def _finish(rows_wanted: str) -> str:
    return f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS i(request_id text, status text, result jsonb, error text, error_type text, outputs jsonb, units jsonb)
), changed AS (
    UPDATE fal_jobs j SET status = i.status, queue_position = NULL, result = i.result, error = i.error,
        error_type = i.error_type, completed_at = $2, updated_at = $2, version = j.version + 1,
        outputs = coalesce(i.outputs, j.outputs), cost = fal_jobs_final_cost(j.cost, i.status, i.units)
    FROM input i
    -- The ids again as $4: joined to a function's rows alone, the planner scans the table.
    WHERE {rows_wanted} AND j.request_id = i.request_id AND j.{_OPEN}
    RETURNING j.*
), {_QUEUE_OUTPUTS}
SELECT {JOB_COLUMNS} FROM changed
"""


FINISH_MANY = _finish("j.request_id = ANY($4::text[])")
"""Jobs' ends in one statement: each row is updated only while it is open (the row lock the UPDATE
takes re-checks that against a concurrent writer's commit), its outputs are queued, and its final
cost is computed from the units in its row. $1: the ends, as JSON rows; $2: now; $3: the files to queue; $4: the request ids."""
FINISH_ONE = _finish("j.request_id = $4::text")
"""The same for one job: its id as a scalar lets Postgres keep one generic plan for the statement,
where an array would have it plan each execution anew (a custom plan looks cheaper for a
one-element array than the generic one for any array)."""

SET_STATUS_AND_OUTPUTS = (
    "UPDATE fal_jobs SET status = $2, outputs = $3, version = version + 1, updated_at = $4 WHERE request_id = $1"
)
"""A job's new status and outputs view, as a new version (an output settled, or the job deleted)."""

# --- Outputs: one file's outcome, a deletion --------------------------------------------------

LOCK_OUTPUT = "SELECT status, claim FROM fal_job_outputs WHERE request_id = $1 AND index = $2 FOR UPDATE"

SETTLE_OUTPUT = (
    "UPDATE fal_job_outputs SET status = $3, content_type = $4, size = $5, sha256 = $6, store_key = $7, "
    "last_error = coalesce($8, last_error), claim = NULL, lease_until = NULL, updated_at = $9, retryable = $10 "
    "WHERE request_id = $1 AND index = $2"
)
"""One copy's outcome. $3-$8: status, content type, size, sha256, store key, error; $9: now; $10: whether
a failure may be re-driven."""

REOPEN_OUTPUTS = (
    "UPDATE fal_job_outputs SET status = 'pending', attempts = 0, store_failures = 0, retryable = false, "
    "claim = NULL, lease_until = NULL, next_attempt_at = $3, updated_at = $3 "
    "WHERE request_id = $1 AND index = ANY($2::int[]) AND status = 'failed' RETURNING index"
)
"""Failed outputs among $2 set pending with fresh budgets, due now ($3)."""

STOP_OUTPUTS = (
    "UPDATE fal_job_outputs SET status = 'deleted', claim = NULL, lease_until = NULL, next_attempt_at = $2, "
    "updated_at = $2 WHERE request_id = $1"
)
"""A deleted job's outputs: the copy queue stops, and rows whose bytes are in the store stay due,
so that a removal that fails after the deletion is retried by the workers. $2: now."""

# --- The output queue: claims, leases, retries (the copy workers) -------------------------------

_DUE = "status = 'pending' OR (status = 'deleted' AND store_key IS NOT NULL)"
"""Rows with work: a copy to make, or a deleted output's bytes still in the store."""

CLAIM_OUTPUTS = f"""
UPDATE fal_job_outputs o
SET claim = $1, lease_until = now() + make_interval(secs => $2), updated_at = now()
FROM (
    SELECT request_id, index FROM fal_job_outputs
    WHERE ({_DUE})
      AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
) due
WHERE o.request_id = due.request_id AND o.index = due.index
RETURNING o.request_id, o.index, o.kind, o.source_url, o.status, o.store_key, o.attempts, o.store_failures,
    o.created_at > now() - make_interval(secs => $4) AS fal_copy_alive
"""
"""Up to $3 due rows, stamped with the claim $1 and a lease of $2 seconds; whether fal still keeps
each one's copy, by its age against $4 seconds. Tries are counted on their outcome, not here."""

RELEASE_CLAIMS = (
    "UPDATE fal_job_outputs SET claim = NULL, lease_until = NULL "
    "WHERE (request_id, index, claim) IN (SELECT * FROM unnest($1::text[], $2::int[], $3::text[]))"
)
NEXT_OUTPUT_DUE_IN_S = (
    "SELECT extract(epoch FROM min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at))) - now()) "
    f"FROM fal_job_outputs WHERE {_DUE}"
)
RENEW_LEASE = (
    "UPDATE fal_job_outputs SET lease_until = now() + make_interval(secs => $4) "
    "WHERE request_id = $1 AND index = $2 AND claim = $3"
)
RETRY_OUTPUT_LATER = (
    "UPDATE fal_job_outputs SET claim = NULL, lease_until = NULL, last_error = $4, "
    "next_attempt_at = now() + $5::interval, attempts = coalesce($6, attempts), "
    "store_failures = coalesce($7, store_failures), updated_at = now() "
    "WHERE request_id = $1 AND index = $2 AND claim = $3"
)
"""The next try in $5; $6 / $7: the source / store failures so far (NULL: unchanged)."""
OUTPUT_STORE_KEY = "SELECT store_key FROM fal_job_outputs WHERE request_id = $1 AND index = $2"
FORGET_STORE_KEY = (
    "UPDATE fal_job_outputs SET store_key = NULL, claim = NULL, lease_until = NULL, updated_at = now() "
    "WHERE request_id = $1 AND index = $2 AND claim = $3"
)
"""A deleted output whose bytes the claim $3 removed from the store."""

# --- The webhook intake: parking a webhook that beat its job -------------------------------------

JOB_MODEL = "SELECT model_id FROM fal_jobs WHERE request_id = $1"
PARK_WEBHOOK = "INSERT INTO fal_early_webhooks (request_id, body) VALUES ($1, $2) ON CONFLICT DO NOTHING"
PARKED_WEBHOOKS = "SELECT id, body FROM fal_early_webhooks WHERE request_id = $1 ORDER BY id"
UNPARK_WEBHOOK = "DELETE FROM fal_early_webhooks WHERE id = $1"

# --- The webhooks' batches ------------------------------------------------------------------

HELD_JOBS = """
WITH free AS (SELECT request_id FROM fal_jobs WHERE request_id = ANY($1::text[]) FOR UPDATE SKIP LOCKED)
SELECT request_id FROM fal_jobs WHERE request_id = ANY($1::text[]) AND request_id NOT IN (SELECT request_id FROM free)
"""
"""The jobs among $1 whose rows another transaction holds now (a row that does not exist is not
held). The rows it finds free are locked only for this one statement."""
