"""An operator's figures over a window of job creation times: per model, per user, failures.

The window's whole 30-day periods, days and hours that are rolled up (`stats_rollup.py`) are read
from the rollup, the rest of it (its edges, the last hours, hours whose jobs changed since) live
from `fal_jobs`, an index range on created_at per stretch: one statement (`stats_sql.STATS`), whose
cost grows with the number of periods in the window and with the jobs of its live stretches, not
with its jobs. Counts and spend are exact either way. Queue time is `started_at - created_at` and
run time `completed_at - started_at`, for the jobs we saw running (a job fal ended before we saw it
running has neither). Spend is the final cost of ended jobs and the estimate of the others: our
estimate of fal's bill, in the prices' currency.

Percentiles (p50, p95, interpolated between ranks as `percentile_cont`) are exact when the whole
window was read live. Otherwise they come from histograms with 8 log buckets per doubling, each
rank taken at its bucket's geometric midpoint: within 2^(1/16) - 1 = 4.4 % of the exact figure (a
little more, 4.5 %, for a time that falls on a bucket's edge through float rounding); times under
2^-10 s (about 1 ms, or negative through clock skew) count as 0.
"""

from __future__ import annotations

import math
from datetime import datetime

import asyncpg
import msgspec

from service.jobs.stats_sql import NO_JIT, STATS

MAX_FAILURE_GROUPS = 20
BUCKETS_PER_DOUBLING = 8
UNDER = -81
"""The bucket of times under 2^-10 s, taken as 0 (`fal_stats_bucket`)."""


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


def bucket_value(bucket: int) -> float:
    """A bucket's representative time: its geometric midpoint."""
    return 0.0 if bucket <= UNDER else 2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING)


def histogram_percentiles(buckets: list[tuple[int, int]]) -> Percentiles:
    """p50 and p95 of (bucket, count) pairs in bucket order, interpolated between ranks."""
    total = sum(count for _, count in buckets)
    if not total:
        return Percentiles(p50=None, p95=None)

    def at(rank: int) -> float:
        seen = 0
        for bucket, count in buckets:
            seen += count
            if rank < seen:
                return bucket_value(bucket)
        return bucket_value(buckets[-1][0])

    def percentile(fraction: float) -> float:
        position = fraction * (total - 1)
        low = math.floor(position)
        below, above = at(low), at(min(low + 1, total - 1))
        return below + (above - below) * (position - low)

    return Percentiles(p50=percentile(0.5), p95=percentile(0.95))


class _Exact(msgspec.Struct):
    model_id: str
    queue_s: list[float | None] | None
    run_s: list[float | None] | None


_Histograms = list[tuple[str, str, int, int]]
"""(model, kind, bucket, jobs) in bucket order per model and kind."""


def _durations(histograms: bytes, exact: bytes, *, rolled: bool) -> dict[tuple[str, str], Percentiles]:
    """Per (model, kind): exact percentiles when nothing was rolled up, else the histograms'."""
    if not rolled:
        return {(r.model_id, kind): _percentiles(r.queue_s if kind == "queue" else r.run_s)
                for r in msgspec.json.decode(exact, type=list[_Exact]) for kind in ("queue", "run")}
    grouped: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for model_id, kind, bucket, count in msgspec.json.decode(histograms, type=_Histograms):
        grouped.setdefault((model_id, kind), []).append((bucket, count))
    return {key: histogram_percentiles(buckets) for key, buckets in grouped.items()}


async def stats(connection: asyncpg.Connection | asyncpg.Pool, since: datetime, until: datetime) -> Stats:
    if isinstance(connection, asyncpg.Pool):
        async with connection.acquire() as acquired:
            return await stats(acquired, since, until)
    async with connection.transaction():
        # The planner's guess at the live stretches' rows is large (the ranges are unknown when it
        # plans), past jit_above_cost: compiling the statement took 1.4 s of a 30 ms call.
        await connection.execute(NO_JIT)
        row = await connection.fetchrow(STATS, since, until, MAX_FAILURE_GROUPS)
    if row is None:  # a SELECT without FROM answers one row
        raise RuntimeError("the statistics query answered no row")
    durations = _durations(row["histograms"].encode(), row["exact"].encode(), rolled=row["periods"] > 0)
    none = Percentiles(p50=None, p95=None)
    models = [ModelFigures(
        model_id=r["model_id"], jobs=r["jobs"], completed=r["completed"], failed=r["failed"],
        success_rate=r["completed"] / (r["completed"] + r["failed"]) if r["completed"] + r["failed"] else None,
        queue_s=durations.get((r["model_id"], "queue"), none), run_s=durations.get((r["model_id"], "run"), none),
        spend=r["spend"],
    ) for r in msgspec.json.decode(row["models"])]
    users = [UserSpend(user_id=r["user_id"], name=r["name"], jobs=r["jobs"], spend=r["spend"])
             for r in msgspec.json.decode(row["users"])]
    failures = [FailureGroup(error=r["error"], jobs=r["jobs"], models=r["models"])
                for r in msgspec.json.decode(row["failures"])]
    return Stats(since=since, until=until, models=models, users=users, failures=failures)


STATS_QUERY = STATS
"""For the bench's EXPLAIN."""
