"""Retention: what the database may forget, deleted by the sweep in small batches.

Job rows are never deleted: they are the history. Their events are, once older than the retention
period, except each job's latest (the one a resume or a snapshot needs); expired sessions and
sign-in links, delivery-log rows older than their own retention, parked webhooks no job claimed within a day, and create reservations (with their
idempotency keys) older than a day go too. Each batch is one short statement of its own (no long transaction, no long lock), and a
sweep runs at most `max_batches` of each, so a large backlog drains over several sweeps. The
sweep's advisory lock makes this one process at a time.

A resume from an event id that retention deleted still works: every job keeps its latest event,
so the replay after that id carries each changed job's current state (changes older than the
retention period are skipped, not lost: the job row and its latest event hold their result).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from service import metrics

if TYPE_CHECKING:
    import asyncpg

BATCH = 1000
MAX_BATCHES = 20


class Rule(msgspec.Struct, frozen=True):
    table: str
    expired: str
    """SQL selecting up to $1 expired rows of `table` by `ctid` (one statement, so the ids stay
    valid); $2, where used, is the retention in days named by `days`."""
    days: str = "events"


# Each rule names its table; a rule whose table does not exist (yet) is skipped, so a table added
# by a later migration only needs its rule here.
RULES: tuple[Rule, ...] = (
    Rule("fal_job_events",
         "SELECT e.ctid FROM fal_job_events e WHERE e.created_at < now() - make_interval(days => $2) "
         "AND EXISTS (SELECT 1 FROM fal_job_events newer WHERE newer.request_id = e.request_id AND newer.id > e.id) "
         "ORDER BY e.id LIMIT $1"),
    Rule("fal_browser_sessions",
         "SELECT ctid FROM fal_browser_sessions WHERE expires_at < now() LIMIT $1"),
    Rule("fal_sign_in_tokens",
         "SELECT ctid FROM fal_sign_in_tokens WHERE expires_at < now() LIMIT $1"),
    # Create reservations carry the Idempotency-Keys, which protect a retried POST for a day; the
    # limits look back a minute (jobs per minute) or less (creates still submitting).
    Rule("fal_job_reservations",
         "SELECT ctid FROM fal_job_reservations WHERE created_at < now() - interval '24 hours' LIMIT $1"),
    # A parked webhook whose job never appeared within a day will not be claimed (fal gave up long before).
    Rule("fal_early_webhooks",
         "SELECT w.ctid FROM fal_early_webhooks w WHERE w.received_at < now() - interval '1 day' "
         "AND NOT EXISTS (SELECT 1 FROM fal_jobs j WHERE j.request_id = w.request_id) LIMIT $1"),
    # The delivery log is a record of what fal sent: kept DELIVERY_LOG_RETENTION_DAYS, walking its time index.
    Rule("fal_deliveries",
         "SELECT ctid FROM fal_deliveries WHERE received_at < now() - make_interval(days => $2) "
         "ORDER BY received_at LIMIT $1", days="deliveries"),
    # Stream-token records (revocations, if a table for them is added) belong here, by their expiry.
)


async def apply_retention(connection: asyncpg.Connection, *, event_retention_days: int,
                          delivery_log_retention_days: int = 30, batch: int = BATCH,
                          max_batches: int = MAX_BATCHES) -> dict[str, int]:
    """Delete what has expired, rule by rule; returns the rows deleted per table."""
    deleted: dict[str, int] = {}
    for rule in RULES:
        if await connection.fetchval("SELECT to_regclass($1)::text", rule.table) is None:
            continue
        total = 0
        for _ in range(max_batches):
            days = event_retention_days if rule.days == "events" else delivery_log_retention_days
            args = (batch, days) if "$2" in rule.expired else (batch,)
            status = await connection.execute(f"DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY({rule.expired}))", *args)
            rows = int(status.rpartition(" ")[2])
            total += rows
            if rows < batch:
                break
        metrics.retention_deleted(rule.table, total)
        if total:
            deleted[rule.table] = total
    return deleted
