"""The operator's statistics over 1,000,000 synthetic jobs: how long a stats call takes, and its plan.

    python bench/admin_stats.py [--jobs 1000000] [--days 30] [--database-url URL] [--repeat 5]

Postgres is --database-url, else DATABASE_URL, else an embedded pgserver. A database
`fal_jobs_bench_admin_<random>` is created, migrated, filled and dropped at the end. The jobs are
written by one `INSERT ... SELECT FROM generate_series` with fal_jobs' own triggers (events,
NOTIFY) disabled for the load: the figures read fal_jobs alone, and a million events would only
slow the fill. They spread evenly over --days back from now, over 8 models and 1,000 users, 85%
completed, 10% failed (20 distinct errors), 3% cancelled, 2% running; a VACUUM ANALYZE follows,
as autovacuum would after such a load.

The rollup (`service.jobs.stats_rollup`) is then built as the sweep builds it, by one pass
(`roll_up`, no limit on hours: hours, days, 30-day periods), and timed; a second pass, with nothing left to do, shows what
each later sweep costs. The last two hours are not settled and stay live, as in a running service.

Each window (1 h, 24 h, 7 d, 30 d when --days is longer, the whole span: --days and an hour) is timed --repeat times through the service's own
`admin_stats.stats` (one statement, one asyncpg connection, from this process: client time,
round trips included); the table shows the median and the best, and how many rolled-up periods
and live jobs each read. The EXPLAIN (ANALYZE) of the statement over the whole span shows the
indexes the plan uses. Then the admin list's first page (`list_all_jobs`, 50 jobs) is timed per
filter: none, a status, a model and status, a user, a day's range, and text in the prompt or error
(found often, rarely, never).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench.harness import open_server, scratch_database  # noqa: E402
from service.db.pool import init_connection  # noqa: E402
from service.jobs.admin import JobFilter, list_all_jobs  # noqa: E402
from service.jobs.admin_stats import STATS_QUERY, stats  # noqa: E402
from service.jobs.stats_rollup import roll_up  # noqa: E402
from service.jobs.stats_sql import NO_JIT, WINDOW_PARTS  # noqa: E402

FILL = """
INSERT INTO fal_users (id, name)
SELECT 'bench-user-' || u, 'bench-user-' || u FROM generate_series(1, 1000) u;
ALTER TABLE fal_jobs DISABLE TRIGGER USER;
INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, error, created_at, updated_at,
                      started_at, completed_at, cost, version)
SELECT 'bench-' || g,
       'bench-user-' || (1 + g % 1000),
       (ARRAY['fal-ai/flux/schnell', 'fal-ai/flux/dev', 'fal-ai/flux-pro', 'fal-ai/recraft-v3',
              'fal-ai/kling-video/v2/master/text-to-video', 'fal-ai/minimax/video-01', 'fal-ai/ltx-video',
              'fal-ai/stable-diffusion-v35-large'])[1 + g % 8],
       CASE WHEN g % 8 >= 4 AND g % 8 <> 7 THEN 'video' ELSE 'image' END,
       jsonb_build_object('prompt', 'synthetic prompt ' || g),
       s.status,
       CASE WHEN s.status = 'failed' THEN 'fal error #' || (g % 20) END,
       c.created_at, c.created_at + interval '1 minute',
       CASE WHEN s.status <> 'cancelled' THEN c.created_at + make_interval(secs => 0.5 + (g % 97) / 10.0) END,
       CASE WHEN s.status IN ('completed', 'failed')
            THEN c.created_at + make_interval(secs => 0.5 + (g % 97) / 10.0 + 2 + (g % 389) / 7.0) END,
       jsonb_build_object('estimated', 0.003 * (1 + g % 4), 'final',
                          CASE s.status WHEN 'completed' THEN 0.003 * (1 + g % 4) WHEN 'failed' THEN 0 END,
                          'unit', 'image', 'quantity', 1 + g % 4, 'unit_price', 0.003, 'currency', 'USD'),
       2
FROM generate_series(1, $1::int) g,
     LATERAL (SELECT now() - make_interval(secs => $2::float8 * 86400 * g / $1::int) AS created_at) c,
     LATERAL (SELECT CASE WHEN g % 100 < 85 THEN 'completed' WHEN g % 100 < 95 THEN 'failed'
                          WHEN g % 100 < 98 THEN 'cancelled' ELSE 'in_progress' END AS status) s;
ALTER TABLE fal_jobs ENABLE TRIGGER USER;
"""


async def fill(connection: asyncpg.Connection, jobs: int, days: float) -> float:
    started = time.perf_counter()
    statements = [s.strip() for s in FILL.split(";\n") if s.strip()]
    async with connection.transaction():
        for statement in statements:
            if "$1" in statement:
                await connection.execute(statement, jobs, days)
            else:
                await connection.execute(statement)
    await connection.execute("VACUUM ANALYZE fal_jobs")
    return time.perf_counter() - started


async def periods_and_live(connection: asyncpg.Connection, since: datetime, until: datetime) -> str:
    """What the stats statement reads for a window: rolled-up periods (days, hours) and live jobs."""
    row = await connection.fetchrow(WINDOW_PARTS, since, until)
    assert row is not None
    return f"{row['periods']} + {row['live']:,}"


async def build_rollup(connection: asyncpg.Connection) -> tuple[str, str]:
    """One pass with no limit (the sweep's, at most HOURS_PER_PASS hours each), then an idle one."""
    first = await roll_up(connection, max_hours=1_000_000)
    idle = await roll_up(connection, max_hours=1_000_000)
    rows = await connection.fetchval("SELECT (SELECT count(*) FROM fal_stats_models) + (SELECT count(*) FROM fal_stats_users)"
                                     " + (SELECT count(*) FROM fal_stats_durations) + (SELECT count(*) FROM fal_stats_failures)")
    return (f"{first.hours} hours, {first.days} days and {first.spans} 30-day periods in {first.seconds:.1f} s "
            f"({first.seconds / max(first.hours, 1) * 1000:.0f} ms an hour, days included; {rows:,} rollup rows)",
            f"{idle.hours} hours, {idle.days} days, {idle.spans} 30-day periods in {idle.seconds * 1000:.0f} ms")


async def time_windows(connection: asyncpg.Connection, days: float,
                       repeat: int) -> list[tuple[str, int, str, float, float]]:
    now = datetime.now(UTC)
    windows = [("1 h", timedelta(hours=1)), ("24 h", timedelta(days=1)), ("7 d", timedelta(days=7))]
    windows += [("30 d", timedelta(days=30))] if days > 30 else []
    windows += [(f"{days:g} d (all)", timedelta(days=days, hours=1))]
    rows = []
    for label, span in windows:
        in_window = await connection.fetchval(
            "SELECT count(*) FROM fal_jobs WHERE created_at >= $1 AND created_at < $2", now - span, now)
        await stats(connection, now - span, now)  # warm: plans and caches, as a running service has them
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            await stats(connection, now - span, now)
            times.append((time.perf_counter() - started) * 1000)
        read = await periods_and_live(connection, now - span, now)
        rows.append((label, in_window, read, statistics.median(times), min(times)))
    return rows


def list_filters(days: float) -> list[tuple[str, JobFilter]]:
    ten_days_back = datetime.now(UTC) - timedelta(days=min(10.0, days / 2))
    return [
        ("none (the newest)", JobFilter()),
        ("status failed", JobFilter(status="failed")),
        ("model + status", JobFilter(model="fal-ai/flux/dev", status="completed")),
        ("user", JobFilter(user="bench-user-7")),
        ("a day, 10 days back", JobFilter(since=ten_days_back - timedelta(days=1), until=ten_days_back)),
        ("text, common", JobFilter(text="fal error #7")),
        ("text, 11 jobs", JobFilter(text="prompt 99999")),
        ("text, no job", JobFilter(text="no such words")),
    ]


async def time_lists(connection: asyncpg.Connection, days: float, repeat: int) -> list[tuple[str, int, float, float]]:
    """The admin list's first page (50 jobs) per filter, through the service's own prepared statement:
    every filter runs once first (past Postgres's five custom plans, as in a service that has run a while)."""
    filters = list_filters(days)
    for _ in range(2):
        for _, where in filters:
            await list_all_jobs(connection, where, limit=50)
    rows = []
    for label, where in filters:
        times, found = [], 0
        for _ in range(repeat):
            started = time.perf_counter()
            found = len((await list_all_jobs(connection, where, limit=50)).jobs)
            times.append((time.perf_counter() - started) * 1000)
        rows.append((label, found, statistics.median(times), min(times)))
    return rows


async def run(dsn: str, jobs: int, days: float, repeat: int) -> None:
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)  # the service's codecs (jsonb as msgspec), as its pool sets them
    try:
        print(f"[bench] filling {jobs:,} jobs over {days:g} days ...", file=sys.stderr)
        filled = await fill(connection, jobs, days)
        total = await connection.fetchval("SELECT count(*) FROM fal_jobs")
        print(f"[bench] {total:,} jobs in {filled:.1f} s (fill, VACUUM ANALYZE)", file=sys.stderr)
        built, idle = await build_rollup(connection)
        await connection.execute("ANALYZE")  # as autovacuum would after the rollup's first build
        print(f"\nrollup, first pass: {built}\nrollup, next pass with nothing to do: {idle}")
        rows = await time_windows(connection, days, repeat)
        print(f"\nstats call (one statement: per model, per user, failures) over {total:,} jobs, {repeat} runs each\n")
        print(f"{'window':>14} {'jobs in window':>15} {'periods + live jobs':>20} {'median ms':>10} {'best ms':>9}")
        for label, in_window, read, median, best in rows:
            print(f"{label:>14} {in_window:>15,} {read:>20} {median:>10.1f} {best:>9.1f}")
        print(f"\nadmin list, first page of 50, over {total:,} jobs, {repeat} runs each\n")
        print(f"{'filter':>22} {'jobs':>5} {'median ms':>10} {'best ms':>9}")
        for label, found, median, best in await time_lists(connection, days, repeat):
            print(f"{label:>22} {found:>5} {median:>10.1f} {best:>9.1f}")
        now = datetime.now(UTC)
        async with connection.transaction():  # as admin_stats.stats runs it
            await connection.execute(NO_JIT)
            plan = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {STATS_QUERY}",
                                          now - timedelta(days=days, hours=1), now, 20)
        print(f"\nEXPLAIN ANALYZE of the stats statement, {days:g} d window:")
        for line in plan:
            print("  " + line[0])
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    server_dsn, server = open_server(args.database_url)
    try:
        async with scratch_database(server_dsn, "fal_jobs_bench_admin",
                                    log=lambda line: print(f"[bench] {line}", file=sys.stderr)) as (_, dsn):
            await run(dsn, args.jobs, args.days, args.repeat)
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
