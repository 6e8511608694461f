"""Raw SQL: what each job costs at fal, and budgets in money per user.

`fal_jobs.cost` is the job's `JobCost` (estimate at submit, final cost at its end), null when fal
gave no price for its model; the event trigger copies it into every event, as it does every column.
`fal_jobs_final_cost` computes the final cost in the statement that ends a job, from the units its
output shows (`service/jobs/costs.py`: `units_of_output`) and the unit price the job was estimated
with: failed jobs cost 0 (fal bills successful outputs only), cancelled ones keep their estimate.
A reservation carries its job's estimate while the job is being submitted, so that two processes
together keep within a budget; `fal_users.max_spend_per_day` overrides MAX_SPEND_PER_DAY.

The events written before this migration are given `"cost": null` (as the tags migration gives
them `tags` and `metadata`), so that a stream replaying or snapshotting an older job sends every
field a later one has. The trigger needs no change: it copies the whole row, cost included.
"""

from service.db.raw_migrations import raw_sql_migration

ID = "2026-12-05T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Job costs from fal's prices; per-user budgets in money"

FORWARDS_SQL = """
ALTER TABLE fal_jobs ADD COLUMN cost jsonb;
ALTER TABLE fal_job_reservations ADD COLUMN estimated_cost numeric;
ALTER TABLE fal_users ADD COLUMN max_spend_per_day numeric CHECK (max_spend_per_day > 0);

CREATE FUNCTION fal_jobs_final_cost(cost jsonb, status text, units jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN cost IS NULL OR status NOT IN ('completed', 'failed') THEN cost
        WHEN status = 'failed' THEN cost || '{"quantity": 0, "final": 0}'::jsonb
        ELSE cost || jsonb_build_object(
            'quantity', coalesce(units -> (cost ->> 'unit'), cost -> 'quantity'),
            'final', coalesce((units ->> (cost ->> 'unit'))::numeric, (cost ->> 'quantity')::numeric)
                     * (cost ->> 'unit_price')::numeric)
    END
$$;

UPDATE fal_job_events SET data = data || '{"cost": null}'::jsonb WHERE NOT data ? 'cost';
"""

BACKWARDS_SQL = """
DROP FUNCTION IF EXISTS fal_jobs_final_cost(jsonb, text, jsonb);
ALTER TABLE fal_users DROP COLUMN IF EXISTS max_spend_per_day;
ALTER TABLE fal_job_reservations DROP COLUMN IF EXISTS estimated_cost;
ALTER TABLE fal_jobs DROP COLUMN IF EXISTS cost;
"""


forwards = raw_sql_migration(ID, DESCRIPTION, FORWARDS_SQL, BACKWARDS_SQL)
