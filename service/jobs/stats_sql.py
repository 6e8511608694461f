"""The operator's figures in SQL: rolling an hour or a day up, and the stats call's one statement.

The rollup (`fal_stats_*`, `piccolo_migrations/…_stats_rollup.py`) and the live read of the rest
of a window bucket and sum jobs with the same expressions (`_JOB` below), so that a figure is the
same whichever way a job was counted. Spend is summed as numeric (each float8 becomes its 15-digit
decimal first): numeric sums do not depend on the order they are added in, so the rollup's spend
equals the live sum to the last digit.
"""

from __future__ import annotations

_JOB = (
    "model_id, user_id, status, "
    "extract(epoch FROM started_at - created_at)::float8 AS queue_s, "
    "extract(epoch FROM completed_at - started_at)::float8 AS run_s, spend::numeric AS spend, "
    "CASE WHEN status = 'failed' THEN coalesce(error, '(no message)') END AS error"
)
"""What the figures read of a job; `error` only for the failed ones."""

_GROUPS = {
    "models": "SELECT model_id, count(*), count(*) FILTER (WHERE status = 'completed'), "
              "count(*) FILTER (WHERE status = 'failed'), sum(spend) FROM {jobs} GROUP BY model_id",
    "users": "SELECT user_id, count(*), sum(spend) FROM {jobs} GROUP BY user_id",
    "durations": "SELECT model_id, kind, bucket, count(*) FROM ("
                 "SELECT model_id, 'queue' AS kind, fal_stats_bucket(queue_s) AS bucket FROM {jobs} "
                 "WHERE queue_s IS NOT NULL UNION ALL "
                 "SELECT model_id, 'run', fal_stats_bucket(run_s) FROM {jobs} WHERE run_s IS NOT NULL"
                 ") b GROUP BY model_id, kind, bucket",
    "failures": "SELECT model_id, error, count(*) FROM {jobs} WHERE error IS NOT NULL GROUP BY model_id, error",
}
"""Each rollup table's columns after (hours, start), from a set of jobs with `_JOB`'s columns."""

# Periods are UTC hours and days: `interval '24 hours'`, never '1 day', and date_trunc(…, 'UTC').
# A day added to a timestamptz is a day of the session's time zone: 23 or 25 hours across a DST
# change under, say, Europe/Berlin (such a day would never count its 24 hours, nor end where a UTC
# day ends).

# --- Rolling up ----------------------------------------------------------------------------------

SPAN_HOURS = 720
"""The coarsest period: 30 days, counted from the Unix epoch (calendar months are of four lengths)."""


def span_of(timestamp: str) -> str:
    """The start of the 30-day period holding `timestamp` (an SQL expression)."""
    return f"to_timestamp(floor(extract(epoch FROM {timestamp}) / {SPAN_HOURS * 3600}) * {SPAN_HOURS * 3600})"


NO_JIT = "SET LOCAL jit = off"
"""These statements read a few thousand rows but the planner, not knowing their ranges, guesses far
more: past jit_above_cost, where compiling them costs more than running them (1.4 s against 30 ms)."""

ROLLUP_LOCK = "SELECT pg_advisory_xact_lock(7022354316245180496), set_config('jit', 'off', true)"
"""One roll-up transaction at a time; NO_JIT for its statements."""

SETTLED_UNTIL = "SELECT date_trunc('hour', now() - $1::interval, 'UTC')"
"""The end of the newest settled hour ($1: the margin), by the database's clock: the triggers that
note changes read that clock (`now()`), so a skewed app clock cannot roll an hour that can still
change unseen."""

FORGET_HOUR = """
WITH noted AS (DELETE FROM fal_stats_changes WHERE hour = $1)
DELETE FROM fal_stats_periods WHERE (hours = 1 AND start = $1) OR (hours = 24 AND start = date_trunc('day', $1, 'UTC'))
    OR (hours = %d AND start = %s)
""" % (SPAN_HOURS, span_of("$1"))
"""First statement of an hour's recompute: its changes are seen (a change committed after this
statement's snapshot keeps its row, and the hour stays stale), its rows and its day's and its 30
days' go."""

ROLL_HOUR = (
    "WITH period AS (INSERT INTO fal_stats_periods (hours, start) VALUES (1, $1)), "
    f"jobs AS MATERIALIZED (SELECT {_JOB} FROM fal_jobs WHERE created_at >= $1 AND created_at < $1 + interval '1 hour'), "
    + ", ".join(f"{table} AS (INSERT INTO fal_stats_{table} SELECT 1, $1, g.* FROM ({sql.format(jobs='jobs')}) g)"
                for table, sql in _GROUPS.items() if table != "failures")
    + f" INSERT INTO fal_stats_failures SELECT 1, $1, g.* FROM ({_GROUPS['failures'].format(jobs='jobs')}) g"
)
"""An hour from its jobs: a later statement than FORGET_HOUR, so a later snapshot. The period's row
is written by the same statement: the foreign keys are checked at its end."""

RECOMPUTE_HOUR = (FORGET_HOUR, ROLL_HOUR)
"""An hour's recompute, in this order, in one transaction ($1: the hour)."""

_SUMS = {
    "models": "SELECT model_id, sum(jobs), sum(completed), sum(failed), sum(spend) FROM {parts} GROUP BY model_id",
    "users": "SELECT user_id, sum(jobs), sum(spend) FROM {parts} GROUP BY user_id",
    "durations": "SELECT model_id, kind, bucket, sum(jobs) FROM {parts} GROUP BY model_id, kind, bucket",
    "failures": "SELECT model_id, error, sum(jobs) FROM {parts} GROUP BY model_id, error",
}


def _roll_from(hours: int, parts: int) -> str:
    """A period of `hours` from $1, summed from its rolled-up periods of `parts` hours."""
    rows = ("(SELECT * FROM fal_stats_{table} WHERE hours = %d AND start >= $1 "
            "AND start < $1 + interval '%d hours') h" % (parts, hours))
    return (f"WITH period AS (INSERT INTO fal_stats_periods (hours, start) VALUES ({hours}, $1)), "
            + ", ".join(f"{table} AS (INSERT INTO fal_stats_{table} SELECT {hours}, $1, g.* FROM "
                        f"({sql.format(parts=rows.format(table=table))}) g)"
                        for table, sql in _SUMS.items() if table != "failures")
            + f" INSERT INTO fal_stats_failures SELECT {hours}, $1, g.* FROM "
            + f"({_SUMS['failures'].format(parts=rows.format(table='failures'))}) g")


ROLL_DAY = _roll_from(24, 1)
"""A day from its 24 rolled hours (DAY_IS_CLEAN found them all clean)."""
ROLL_SPAN = _roll_from(SPAN_HOURS, 24)
"""30 days from their rolled days (SPAN_IS_CLEAN found them clean)."""

HOURS_TO_ROLL = """
WITH RECURSIVE days(day) AS (
    SELECT date_trunc('day', max(created_at), 'UTC') FROM fal_jobs WHERE created_at < $1
    UNION ALL
    SELECT (SELECT date_trunc('day', max(j.created_at), 'UTC') FROM fal_jobs j WHERE j.created_at < days.day)
    FROM days WHERE days.day IS NOT NULL
), open_days AS (
    SELECT day FROM days WHERE day IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM fal_stats_periods p WHERE p.hours = 24 AND p.start = days.day)
    LIMIT $2 / 24 + 2
), hours AS (
    SELECT h AS hour FROM open_days, generate_series(day, least(day + interval '23 hours', $1 - interval '1 hour'),
                                                      interval '1 hour') h
    WHERE NOT EXISTS (SELECT 1 FROM fal_stats_periods p WHERE p.hours = 1 AND p.start = h)
    UNION
    SELECT DISTINCT hour FROM fal_stats_changes WHERE hour < $1
)
SELECT hour FROM hours ORDER BY hour DESC LIMIT $2
"""
"""Settled hours ($1: the end of the newest) to compute, newest first, at most $2: the hours of days
with jobs and no day rollup (a walk down `fal_jobs_created`, one probe per day with jobs) that
have none of their own, and the hours with changes."""

DAYS_TO_ROLL = """
SELECT c.day FROM (
    SELECT date_trunc('day', p.start, 'UTC') AS day FROM fal_stats_periods p
    WHERE p.hours = 1 AND NOT EXISTS (SELECT 1 FROM fal_stats_changes c WHERE c.hour = p.start)
    GROUP BY 1 HAVING count(*) = 24
) c
WHERE NOT EXISTS (SELECT 1 FROM fal_stats_periods d WHERE d.hours = 24 AND d.start = c.day)
ORDER BY c.day DESC
"""
"""Days whose 24 hours are rolled up (so settled) and clean, with no day rollup yet."""

DAY_IS_CLEAN = """
SELECT count(*) = 24 FROM fal_stats_periods p
WHERE p.hours = 1 AND p.start >= $1 AND p.start < $1 + interval '24 hours'
  AND NOT EXISTS (SELECT 1 FROM fal_stats_changes c WHERE c.hour = p.start)
"""

SPANS_TO_ROLL = """
SELECT DISTINCT %(span)s AS start FROM fal_stats_periods p
WHERE p.hours = 24 AND %(span)s + interval '%(hours)d hours' <= $1
  AND NOT EXISTS (SELECT 1 FROM fal_stats_periods s WHERE s.hours = %(hours)d AND s.start = %(span)s)
ORDER BY 1 DESC
""" % {"span": span_of("p.start"), "hours": SPAN_HOURS}
"""30-day periods ended before the settled cutoff $1, with a day rollup and none of their own."""

SPAN_IS_CLEAN = """
SELECT NOT EXISTS (SELECT 1 FROM fal_stats_changes c WHERE c.hour >= $1 AND c.hour < $1 + interval '%(hours)d hours')
   AND NOT EXISTS (
       SELECT 1 FROM generate_series($1, $1 + interval '%(last)d hours', interval '24 hours') d(day)
       WHERE NOT EXISTS (SELECT 1 FROM fal_stats_periods p WHERE p.hours = 24 AND p.start = d.day)
         AND EXISTS (SELECT 1 FROM fal_jobs j WHERE j.created_at >= d.day AND j.created_at < d.day + interval '24 hours'))
""" % {"hours": SPAN_HOURS, "last": SPAN_HOURS - 24}
"""No change noted in the 30 days, and each day rolled up or without a job (a day without jobs has
no rollup; a job inserted into it later, being over an hour old, is noted as a change). Settled:
SPANS_TO_ROLL only offers periods that ended before the cutoff."""

# --- The stats call --------------------------------------------------------------------------------

_PERIODS = """
WITH spans AS MATERIALIZED (
    SELECT p.start FROM fal_stats_periods p
    WHERE p.hours = %(hours)d AND p.start >= $1::timestamptz AND p.start <= $2::timestamptz - interval '%(hours)d hours'
      AND NOT EXISTS (SELECT 1 FROM fal_stats_changes c
                      WHERE c.hour >= p.start AND c.hour < p.start + interval '%(hours)d hours')
), days AS MATERIALIZED (
    SELECT p.start FROM fal_stats_periods p
    WHERE p.hours = 24 AND p.start >= $1::timestamptz AND p.start <= $2::timestamptz - interval '24 hours'
      AND NOT EXISTS (SELECT 1 FROM fal_stats_changes c WHERE c.hour >= p.start AND c.hour < p.start + interval '24 hours')
      AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.start = %(day_span)s)
), periods AS MATERIALIZED (
    SELECT %(hours)d::smallint AS hours, start FROM spans
    UNION ALL
    SELECT 24::smallint, start FROM days
    UNION ALL
    SELECT 1::smallint, p.start FROM fal_stats_periods p
    WHERE p.hours = 1 AND p.start >= $1::timestamptz AND p.start <= $2::timestamptz - interval '1 hour'
      AND NOT EXISTS (SELECT 1 FROM fal_stats_changes c WHERE c.hour = p.start)
      AND NOT EXISTS (SELECT 1 FROM days d WHERE d.start = date_trunc('day', p.start, 'UTC'))
      AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.start = %(day_span)s)
), live AS MATERIALIZED (
    SELECT j.* FROM unnest(tstzmultirange(tstzrange($1::timestamptz, $2::timestamptz)) - (
        SELECT coalesce(range_agg(tstzrange(start, start + make_interval(hours => hours))), '{}'::tstzmultirange)
        FROM periods)) r
    CROSS JOIN LATERAL (SELECT %(job)s FROM fal_jobs WHERE created_at >= lower(r) AND created_at < upper(r)) j
)""" % {"hours": SPAN_HOURS, "day_span": span_of("p.start"), "job": _JOB}
"""The window's clean rolled-up periods (its whole 30-day periods, its whole days outside them, then
its whole hours outside both) and, read
live, its jobs outside them: the edges, the recent hours, stale hours. Each live range is an index
range on created_at (`fal_jobs_created`: the failed jobs' errors are read from the table)."""


def _merged(table: str) -> str:
    """A rollup table's rows for the window's periods, and the live jobs grouped the same way."""
    # OFFSET 0 keeps the lateral subquery a subquery: a nested loop over the periods, each an index
    # range on the table's (hours, start), where the planner, misjudging how few periods there
    # are, chose to hash the whole table (120 ms of 170 for the durations over a month).
    return (f"(SELECT s.* FROM periods p CROSS JOIN LATERAL (SELECT * FROM fal_stats_{table} s "
            f"WHERE s.hours = p.hours AND s.start = p.start OFFSET 0) s "
            f"UNION ALL SELECT 0::smallint, now(), g.* FROM ({_GROUPS[table].format(jobs='live')}) g)")


_MODELS = ("SELECT model_id, sum(jobs) AS jobs, sum(completed) AS completed, sum(failed) AS failed, "
           f"sum(spend)::float8 AS spend FROM {_merged('models')} m GROUP BY model_id")
_USERS = ("SELECT s.user_id, u.name, s.jobs, s.spend FROM (SELECT user_id, sum(jobs) AS jobs, sum(spend)::float8 AS spend "
          f"FROM {_merged('users')} m GROUP BY user_id) s LEFT JOIN fal_users u ON u.id = s.user_id")
_HISTOGRAMS = (f"SELECT model_id, kind, bucket, sum(jobs) AS jobs FROM {_merged('durations')} m "
               "GROUP BY model_id, kind, bucket")
_FAILURES = ("SELECT error, sum(jobs) AS jobs, array_agg(DISTINCT model_id) AS models "
             f"FROM {_merged('failures')} m GROUP BY error ORDER BY jobs DESC, error LIMIT $3")
_EXACT = ("SELECT model_id, percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY queue_s) AS queue_s, "
          "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY run_s) AS run_s FROM live "
          "WHERE NOT EXISTS (SELECT 1 FROM periods) GROUP BY model_id")

STATS = (
    _PERIODS + " SELECT "
    f"(SELECT coalesce(json_agg(m ORDER BY m.jobs DESC, m.model_id), '[]') FROM ({_MODELS}) m)::text AS models, "
    f"(SELECT coalesce(json_agg(u ORDER BY u.spend DESC NULLS LAST, u.jobs DESC, u.user_id), '[]') "
    f"FROM ({_USERS}) u)::text AS users, "
    f"(SELECT coalesce(json_agg(f ORDER BY f.jobs DESC, f.error), '[]') FROM ({_FAILURES}) f)::text AS failures, "
    f"(SELECT coalesce(json_agg(json_build_array(h.model_id, h.kind, h.bucket, h.jobs) "
    f"ORDER BY h.model_id, h.kind, h.bucket), '[]') FROM ({_HISTOGRAMS}) h)::text AS histograms, "
    f"(SELECT coalesce(json_agg(e), '[]') FROM ({_EXACT}) e)::text AS exact, "
    "(SELECT count(*) FROM periods) AS periods"
)
"""One statement, one snapshot, one round trip: each grouping as a JSON array. `exact`: percentiles
over the jobs themselves, when the whole window was read live (no rolled-up period in it)."""

WINDOW_PARTS = _PERIODS + " SELECT (SELECT count(*) FROM periods) AS periods, (SELECT count(*) FROM live) AS live"
"""How many rolled-up periods and live jobs a window reads ($3 unused): for the bench."""
