"""An operator's figures over a window of job creation times: per model, per user, failures.

Each figure reads the window's jobs through `fal_jobs_stats` (a range on created_at), never the
whole table: the cost grows with the jobs in the window, not with the history. Queue time is
`started_at - created_at` and run time `completed_at - started_at`, for the jobs we saw running
(a job fal ended before we saw it running has neither). Spend is the final cost of ended jobs and
the estimate of the others: our estimate of fal's bill, in the prices' currency.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import asyncpg

MAX_FAILURE_GROUPS = 20

_WINDOW = (
    # One read of the window (an index range on fal_jobs_created), narrowed to what the figures use;
    # the three groupings below read this, not the table.
    # `fal_jobs_stats` holds every column read here: an index-only scan. The failures' messages come
    # from the table, for the window's failed jobs alone.
    "WITH w AS MATERIALIZED (SELECT model_id, user_id, status, "
    "extract(epoch FROM started_at - created_at)::float8 AS queue_s, "
    "extract(epoch FROM completed_at - started_at)::float8 AS run_s, spend "
    "FROM fal_jobs WHERE created_at >= $1 AND created_at < $2) "
)
_PER_MODEL = (
    "SELECT model_id, count(*) AS jobs, "
    "count(*) FILTER (WHERE status = 'completed') AS completed, "
    "count(*) FILTER (WHERE status = 'failed') AS failed, "
    "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY queue_s) AS queue_s, "
    "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY run_s) AS run_s, "
    "sum(spend) AS spend FROM w GROUP BY model_id"
)
_PER_USER = (
    "SELECT s.user_id, u.name, s.jobs, s.spend FROM (SELECT user_id, count(*) AS jobs, sum(spend) AS spend "
    "FROM w GROUP BY user_id) s LEFT JOIN fal_users u ON u.id = s.user_id"
)
_FAILURES = (
    "SELECT coalesce(j.error, '(no message)') AS error, count(*) AS jobs, array_agg(DISTINCT j.model_id) AS models "
    "FROM fal_jobs j WHERE j.created_at >= $1 AND j.created_at < $2 AND j.status = 'failed' "
    "GROUP BY 1 ORDER BY jobs DESC LIMIT $3"
)
_STATS = (
    _WINDOW + "SELECT "
    f"(SELECT coalesce(json_agg(m ORDER BY m.jobs DESC, m.model_id), '[]')::text FROM ({_PER_MODEL}) m) AS models, "
    f"(SELECT coalesce(json_agg(u ORDER BY u.spend DESC NULLS LAST, u.jobs DESC, u.user_id), '[]') "
    f"FROM ({_PER_USER}) u)::text AS users, "
    f"(SELECT coalesce(json_agg(f ORDER BY f.jobs DESC, f.error), '[]') FROM ({_FAILURES}) f)::text AS failures"
)
"""One statement, one round trip: each grouping as a JSON array."""


class Percentiles(msgspec.Struct, kw_only=True):
    p50: float | None
    p95: float | None


class ModelFigures(msgspec.Struct, kw_only=True):
    model_id: str
    jobs: int
    completed: int
    failed: int
    success_rate: float | None
    """completed / (completed + failed); None while none has ended either way."""
    queue_s: Percentiles
    run_s: Percentiles
    spend: float | None


class UserSpend(msgspec.Struct, kw_only=True):
    user_id: str
    name: str | None
    jobs: int
    spend: float | None


class FailureGroup(msgspec.Struct, kw_only=True):
    error: str
    jobs: int
    models: list[str]


class Stats(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    models: list[ModelFigures]
    users: list[UserSpend]
    failures: list[FailureGroup]


def _percentiles(values: list[float | None] | None) -> Percentiles:
    p50, p95 = values if values else (None, None)
    return Percentiles(p50=p50, p95=p95)


async def stats(connection: asyncpg.Connection | asyncpg.Pool, since: datetime, until: datetime) -> Stats:
    row = await connection.fetchrow(_STATS, since, until, MAX_FAILURE_GROUPS)
    if row is None:  # a SELECT without FROM answers one row
        raise RuntimeError("the statistics query answered no row")
    models = [ModelFigures(
        model_id=r["model_id"], jobs=r["jobs"], completed=r["completed"], failed=r["failed"],
        success_rate=r["completed"] / (r["completed"] + r["failed"]) if r["completed"] + r["failed"] else None,
        queue_s=_percentiles(r["queue_s"]), run_s=_percentiles(r["run_s"]), spend=r["spend"],
    ) for r in msgspec.json.decode(row["models"])]
    users = [UserSpend(user_id=r["user_id"], name=r["name"], jobs=r["jobs"], spend=r["spend"])
             for r in msgspec.json.decode(row["users"])]
    failures = [FailureGroup(error=r["error"], jobs=r["jobs"], models=r["models"])
                for r in msgspec.json.decode(row["failures"])]
    return Stats(since=since, until=until, models=models, users=users, failures=failures)


STATS_QUERY = _STATS
"""For the bench's EXPLAIN."""
