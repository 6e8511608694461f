"""An operator's figures over a window of job creation times: per model, per user, failures.

Each query reads the window's jobs through `fal_jobs_created` (a range on created_at), never the
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

_SPEND = "coalesce((cost ->> 'final')::numeric, (cost ->> 'estimated')::numeric)"

_PER_MODEL = (
    "SELECT model_id, count(*) AS jobs, "
    "count(*) FILTER (WHERE status = 'completed') AS completed, "
    "count(*) FILTER (WHERE status = 'failed') AS failed, "
    "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) AS queue_s, "
    "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - started_at)) AS run_s, "
    f"sum({_SPEND})::float8 AS spend "
    "FROM fal_jobs WHERE created_at >= $1 AND created_at < $2 GROUP BY model_id ORDER BY jobs DESC"
)
_PER_USER = (
    f"SELECT s.user_id, u.name, s.jobs, s.spend FROM (SELECT user_id, count(*) AS jobs, sum({_SPEND})::float8 AS spend "
    "FROM fal_jobs WHERE created_at >= $1 AND created_at < $2 GROUP BY user_id) s "
    "LEFT JOIN fal_users u ON u.id = s.user_id ORDER BY s.spend DESC NULLS LAST, s.jobs DESC"
)
_FAILURES = (
    "SELECT coalesce(error, '(no message)') AS error, count(*) AS jobs, array_agg(DISTINCT model_id) AS models "
    "FROM fal_jobs WHERE created_at >= $1 AND created_at < $2 AND status = 'failed' "
    "GROUP BY 1 ORDER BY jobs DESC LIMIT $3"
)


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
    models = [ModelFigures(
        model_id=r["model_id"], jobs=r["jobs"], completed=r["completed"], failed=r["failed"],
        success_rate=r["completed"] / (r["completed"] + r["failed"]) if r["completed"] + r["failed"] else None,
        queue_s=_percentiles(r["queue_s"]), run_s=_percentiles(r["run_s"]), spend=r["spend"],
    ) for r in await connection.fetch(_PER_MODEL, since, until)]
    users = [UserSpend(user_id=r["user_id"], name=r["name"], jobs=r["jobs"], spend=r["spend"])
             for r in await connection.fetch(_PER_USER, since, until)]
    failures = [FailureGroup(error=r["error"], jobs=r["jobs"], models=list(r["models"]))
                for r in await connection.fetch(_FAILURES, since, until, MAX_FAILURE_GROUPS)]
    return Stats(since=since, until=until, models=models, users=users, failures=failures)


STATS_QUERIES = {"per_model": _PER_MODEL, "per_user": _PER_USER, "failures": _FAILURES}
"""For the bench's EXPLAIN."""
