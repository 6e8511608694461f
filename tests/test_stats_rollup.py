"""The operator's figures from the per-hour and per-day rollup: the same counts and spend as a live
read of the jobs, percentiles within the stated bound, and a change to a job of a rolled-up hour
seen by the next call (and recomputed by the next pass)."""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.auth.api_keys import NewUser, create_user
from service.jobs import stats_sql
from service.jobs.admin_stats import Percentiles, Stats, histogram_percentiles, stats
from service.jobs.stats_rollup import roll_up, roll_up_hour, roll_up_range, roll_up_span, settled_until
from service.jobs.stats_sql import SPAN_HOURS
from tests.conftest import RunningServer
from tests.test_admin import insert_job
from tests.test_retention import sweep

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPAN = timedelta(hours=SPAN_HOURS)


def span_of(moment: datetime) -> datetime:
    """The start of the 30-day period holding `moment` (stats_sql.span_of)."""
    return EPOCH + (moment - EPOCH) // SPAN * SPAN


BOUND = 2 ** (1 / 16) - 1 + 0.001
"""admin_stats' stated bound on a percentile read from the histograms (4.4 %, and float rounding)."""
MODELS = ("test/rollup-a", "test/rollup-b", "test/rollup-c")


@pytest.fixture
async def day(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> datetime:
    """Midnight UTC of the first of four days centuries back that are this test's own: derived from
    its id (the same every run, another test's days at random: 1 chance in 80,000 that two tests
    meet, and then the check below says so every run, not now and then)."""
    digest = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:8], "big")
    first = datetime(1000, 1, 1, tzinfo=UTC) + timedelta(days=4 * (digest % 80_000))
    assert not await pool.fetchval("SELECT count(*) FROM fal_jobs WHERE created_at >= $1 AND created_at < $2",
                                   first, first + timedelta(days=4)), f"{first:%Y-%m-%d} is another test's"
    return first


async def fill(pool: asyncpg.Pool, first_day: datetime, users: list[NewUser], jobs: int = 240) -> list[str]:
    """Jobs over three days: several models, users, statuses, errors, times and prices."""
    rng = random.Random(first_day.toordinal())
    ids = []
    for _ in range(jobs):
        status = rng.choices(("completed", "failed", "cancelled", "in_progress"), (80, 12, 4, 4))[0]
        ids.append(await insert_job(
            pool, rng.choice(users), model=rng.choice(MODELS), status=status,
            created_at=first_day + timedelta(seconds=rng.uniform(0, 3 * 86400)),
            queue_s=None if status == "cancelled" else math.exp(rng.uniform(-4, 5)), run_s=math.exp(rng.uniform(-1, 6)),
            error=rng.choice(("boom", "out of memory", None)) if status == "failed" else None,
            final=None if rng.random() < 0.2 else 0.003 * rng.randint(0, 9) if status != "failed" else 0))
    return ids


def assert_close(rolled: Percentiles, live: Percentiles) -> None:
    for got, exact in ((rolled.p50, live.p50), (rolled.p95, live.p95)):
        assert (got is None) == (exact is None)
        if got is not None and exact is not None:
            assert abs(got - exact) <= BOUND * exact, (got, exact)


def assert_same_figures(rolled: Stats, live: Stats) -> None:
    assert [(m.model_id, m.jobs, m.completed, m.failed, m.success_rate, m.spend) for m in rolled.models] == \
           [(m.model_id, m.jobs, m.completed, m.failed, m.success_rate, m.spend) for m in live.models]
    for r, e in zip(rolled.models, live.models, strict=True):
        assert_close(r.queue_s, e.queue_s)
        assert_close(r.run_s, e.run_s)
    assert rolled.users == live.users
    assert rolled.failures == live.failures


async def rolled_periods(pool: asyncpg.Pool, since: datetime, until: datetime,
                         sizes: tuple[int, ...] = (1, 24)) -> list[tuple[int, datetime]]:
    """Days, then hours (or `sizes`): a 30-day period starts in a test's days or not, by chance."""
    rows = await pool.fetch("SELECT hours, start FROM fal_stats_periods WHERE start >= $1 AND start < $2 "
                            "AND hours = ANY($3) ORDER BY hours DESC, start", since, until, list(sizes))
    return [(r["hours"], r["start"]) for r in rows]


@pytest.fixture
async def users(pool: asyncpg.Pool) -> list[NewUser]:
    return [await create_user(pool, f"rollup-{uuid.uuid4().hex[:10]}") for _ in range(4)]


async def test_rolled_up_figures_equal_a_live_read(pool: asyncpg.Pool, users: list[NewUser], day: datetime) -> None:
    await fill(pool, day, users)
    # Ragged edges: parts of two hours read live, a whole day and 35 whole hours from the rollup.
    since, until = day + timedelta(hours=5, minutes=30, seconds=17), day + timedelta(days=2, hours=17, minutes=15)
    live = await stats(pool, since, until)
    assert sum(m.jobs for m in live.models) > 150 and live.failures
    # The 30-day periods holding the three days (their other days have no job), with ragged edges.
    spans = sorted({span_of(day), span_of(day + timedelta(days=2))})
    wide = (spans[0] - timedelta(hours=3, minutes=7), spans[-1] + SPAN + timedelta(minutes=41))
    live_wide = await stats(pool, *wide)

    async with pool.acquire() as connection:
        report = await roll_up_range(connection, day, day + timedelta(days=3))
    assert (report.hours, report.days) == (72, 3) and report.spans >= len(spans)
    periods = await rolled_periods(pool, day, day + timedelta(days=3))
    assert [p for p in periods if p[0] == 24] == [(24, day + timedelta(days=n)) for n in range(3)]
    assert len(periods) == 3 + 72
    assert await rolled_periods(pool, spans[0], spans[-1] + SPAN, (SPAN_HOURS,)) == [(SPAN_HOURS, s) for s in spans]
    rolled = await stats(pool, since, until)
    assert_same_figures(rolled, live)
    assert_same_figures(await stats(pool, *wide), live_wide)
    parts = await pool.fetchrow(stats_sql.WINDOW_PARTS, spans[0], spans[-1] + SPAN)
    assert (parts["periods"], parts["live"]) == (len(spans), 0)  # the 30-day periods alone
    whole = await stats(pool, day, day + timedelta(days=3))  # three days of the rollup, nothing live
    assert sum(m.jobs for m in whole.models) == 240

    # The rolled-up rows are what is read: a change the log does not see (triggers off, for this
    # session alone) leaves the figures as they were.
    async with pool.acquire() as connection:
        await connection.execute("SET session_replication_role = replica")
        try:
            await connection.execute("UPDATE fal_jobs SET status = 'failed', error = 'unseen' WHERE created_at >= $1 "
                                     "AND created_at < $2", day + timedelta(days=1), day + timedelta(days=2))
        finally:
            await connection.execute("RESET session_replication_role")
    assert (await stats(pool, since, until)).models == rolled.models


async def test_days_are_utc_days_whatever_the_session_time_zone(
        database_url: str, pool: asyncpg.Pool, users: list[NewUser]) -> None:
    # Europe/Berlin's DST changes in 1993: a day added there is 23 hours in spring, 25 in autumn.
    spring, autumn = datetime(1993, 3, 28, tzinfo=UTC), datetime(1993, 9, 26, tzinfo=UTC)
    for day in (spring, autumn):
        assert not await rolled_periods(pool, day - timedelta(days=1), day + timedelta(days=2))
        await fill(pool, day - timedelta(days=1), users, jobs=120)  # the day before, the day, the day after
    await insert_job(pool, users[0], model=MODELS[0], created_at=spring + timedelta(hours=23, minutes=30))
    windows = [(spring, spring + timedelta(hours=23)), (autumn, autumn + timedelta(hours=25)),
               (spring - timedelta(days=1), spring + timedelta(days=2)),
               (autumn - timedelta(hours=1), autumn + timedelta(days=1, hours=1))]
    berlin = await asyncpg.connect(database_url, server_settings={"timezone": "Europe/Berlin"})
    try:
        live = [await stats(berlin, since, until) for since, until in windows]
        for day in (spring, autumn):
            await roll_up_range(berlin, day - timedelta(days=1), day + timedelta(days=2))
            periods = await rolled_periods(pool, day - timedelta(days=1), day + timedelta(days=2))
            assert [p for p in periods if p[0] == 24] == [(24, day + timedelta(days=n)) for n in (-1, 0, 1)]
        for (since, until), expected in zip(windows, live, strict=True):
            assert_same_figures(await stats(berlin, since, until), expected)
    finally:
        await berlin.close()


async def test_a_change_to_a_job_of_a_rolled_up_hour_shows_in_the_next_call(
        pool: asyncpg.Pool, users: list[NewUser], day: datetime) -> None:
    await fill(pool, day, users, jobs=60)
    async with pool.acquire() as connection:
        await roll_up_range(connection, day, day + timedelta(days=3))
    since, until = day, day + timedelta(days=3)
    before = await stats(pool, since, until)
    span = (span_of(day), span_of(day) + SPAN)
    assert (await pool.fetchrow(stats_sql.WINDOW_PARTS, *span))["periods"] == 1
    span_before = await stats(pool, *span)
    job = await pool.fetchrow("SELECT request_id, model_id, created_at FROM fal_jobs WHERE status = 'completed' "
                              "AND created_at >= $1 AND created_at < $2 ORDER BY created_at LIMIT 1", since, until)
    hour = job["created_at"].replace(minute=0, second=0, microsecond=0)

    # A late webhook fails a job of a rolled-up hour: its hour (and day) is read live until recomputed.
    await pool.execute("UPDATE fal_jobs SET status = 'failed', error = 'late news', version = version + 1 "
                       "WHERE request_id = $1", job["request_id"])
    assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes WHERE hour = $1", hour) == 1
    after = await stats(pool, since, until)
    model = next(m for m in after.models if m.model_id == job["model_id"])
    was = next(m for m in before.models if m.model_id == job["model_id"])
    assert (model.completed, model.failed) == (was.completed - 1, was.failed + 1)
    assert {"error": "late news", "jobs": 1} in [{"error": f.error, "jobs": f.jobs} for f in after.failures]
    assert span[0] <= job["created_at"] < span[1]  # and so are its 30 days
    was = next(m for m in span_before.models if m.model_id == job["model_id"])
    now = next(m for m in (await stats(pool, *span)).models if m.model_id == job["model_id"])
    assert (now.completed, now.failed) == (was.completed - 1, was.failed + 1)

    # The next pass recomputes that hour and its day, and the figures stay.
    async with pool.acquire() as connection:
        report = await roll_up(connection, max_hours=100_000)
    assert report.hours >= 1 and report.days >= 1
    assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes WHERE hour = $1", hour) == 0
    assert (1, hour) in await rolled_periods(pool, since, until)
    assert (24, day) in await rolled_periods(pool, since, until)
    assert await stats(pool, since, until) == after

    # A backdated insert and a deleted job: seen at once, too.
    await insert_job(pool, users[0], model="test/rollup-backdated", created_at=day + timedelta(hours=30))
    await pool.execute("DELETE FROM fal_jobs WHERE request_id = $1", job["request_id"])
    latest = await stats(pool, since, until)
    assert any(m.model_id == "test/rollup-backdated" and m.jobs == 1 for m in latest.models)
    assert sum(m.jobs for m in latest.models) == sum(m.jobs for m in after.models)


async def test_a_pass_rolls_up_settled_hours_with_jobs_and_their_days(
        pool: asyncpg.Pool, users: list[NewUser], day: datetime) -> None:
    await insert_job(pool, users[0], model=MODELS[0], created_at=day + timedelta(hours=7, minutes=5))
    async with pool.acquire() as connection:
        # One cutoff for both passes: the clock may pass the top of an hour between them, and then
        # today's newest hour, settled since, would be the second pass's to do.
        until = await settled_until(connection)
        await roll_up(connection, max_hours=100_000, until=until)
        assert (await roll_up(connection, max_hours=100_000, until=until)).hours == 0  # nothing left to do
    periods = await rolled_periods(pool, day, day + timedelta(days=1))
    assert periods == [(24, day)] + [(1, day + timedelta(hours=h)) for h in range(24)]
    # The last two hours are not settled: a pass leaves them to the live read, by the database's
    # clock, whatever the caller's (here three hours fast).
    now = await pool.fetchval("SELECT now()")
    await insert_job(pool, users[0], model=MODELS[0], created_at=now - timedelta(minutes=30))
    async with pool.acquire() as connection:
        await roll_up(connection, max_hours=100_000, until=now + timedelta(hours=3))
    assert await pool.fetchval("SELECT max(start) FROM fal_stats_periods WHERE hours = 1") <= now - timedelta(hours=3)


async def test_a_change_committed_while_its_hour_is_recomputed_is_not_lost(
        pool: asyncpg.Pool, users: list[NewUser], day: datetime) -> None:
    # A late webhook's change commits before, between or after the recompute's statements (the
    # code's own, in its order, in one transaction as roll_up_hour runs them): whichever, the
    # next stats call sees it, as a stale hour read live or in the recomputed rows.
    steps = stats_sql.RECOMPUTE_HOUR
    for split in range(len(steps) + 1):
        hour = day + timedelta(hours=split)
        request_id = await insert_job(pool, users[0], model=MODELS[0], created_at=hour + timedelta(minutes=10))
        async with pool.acquire() as connection:
            await roll_up_hour(connection, hour)
        async with pool.acquire() as writer, pool.acquire() as roller:
            late = writer.transaction()
            await late.start()
            await writer.execute("UPDATE fal_jobs SET status = 'failed', error = 'late', version = version + 1 "
                                 "WHERE request_id = $1", request_id)
            async with roller.transaction():
                await roller.execute(stats_sql.ROLLUP_LOCK)
                for step in steps[:split]:
                    await roller.execute(step, hour)
                await late.commit()
                for step in steps[split:]:
                    await roller.execute(step, hour)
        figures = await stats(pool, hour, hour + timedelta(hours=1))
        assert [(m.completed, m.failed) for m in figures.models] == [(0, 1)], f"committed after {split} statements"
        async with pool.acquire() as connection:
            await roll_up_hour(connection, hour)
        assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes WHERE hour = $1", hour) == 0
        assert (1, hour) in await rolled_periods(pool, hour, hour + timedelta(hours=1))
        again = await stats(pool, hour, hour + timedelta(hours=1))  # from the rollup now
        assert [(m.completed, m.failed) for m in again.models] == [(0, 1)] and again.failures == figures.failures


async def test_30_days_roll_up_once_their_days_with_jobs_have(
        pool: asyncpg.Pool, users: list[NewUser], day: datetime) -> None:
    start = span_of(day)
    await insert_job(pool, users[0], model=MODELS[0], created_at=day + timedelta(hours=1))
    async with pool.acquire() as connection:
        assert not await roll_up_span(connection, start)  # a day with a job and no rollup
        await roll_up_range(connection, day, day + timedelta(days=1))  # its other days have no job
        assert (SPAN_HOURS, start) in await rolled_periods(pool, start, start + SPAN, (SPAN_HOURS,))
    # A job backdated into one of its empty days is a change: the 30 days are read live again.
    other = start + timedelta(days=29) if day - start < timedelta(days=29) else start
    await insert_job(pool, users[0], model="test/rollup-backdated-span", created_at=other + timedelta(hours=5))
    figures = await stats(pool, start, start + SPAN)
    assert sorted((m.model_id, m.jobs) for m in figures.models) == [(MODELS[0], 1), ("test/rollup-backdated-span", 1)]


async def test_the_sweep_rolls_the_figures_up(service: RunningServer, pool: asyncpg.Pool,
                                              users: list[NewUser], day: datetime) -> None:
    await insert_job(pool, users[0], model=MODELS[0], created_at=day + timedelta(hours=3))
    # Newest first, at most 240 hours a pass: other tests' open days may come before this one's.
    for _ in range(20):
        await sweep(service)  # this one, or the service's own start-up sweep if it ran after the insert
        if (24, day) in await rolled_periods(pool, day, day + timedelta(days=1)):
            break
    rolled = await pool.fetch("SELECT hours, start, rolled_at FROM fal_stats_periods WHERE start >= $1 AND start < $2 "
                              "ORDER BY hours, start", day, day + timedelta(days=1))
    assert len(rolled) == 25
    await sweep(service)
    assert await pool.fetch("SELECT hours, start, rolled_at FROM fal_stats_periods WHERE start >= $1 AND start < $2 "
                            "ORDER BY hours, start", day, day + timedelta(days=1)) == rolled  # nothing more to do here


async def test_changes_to_recent_jobs_stay_off_the_change_log(pool: asyncpg.Pool, users: list[NewUser]) -> None:
    recent = await insert_job(pool, users[0], model=MODELS[0], status="pending",
                              created_at=datetime.now(UTC) - timedelta(minutes=50))
    older = await insert_job(pool, users[0], model=MODELS[0], status="pending",
                             created_at=datetime.now(UTC) - timedelta(minutes=70))
    noted = await pool.fetchval("SELECT count(*) FROM fal_stats_changes")
    await pool.execute("UPDATE fal_jobs SET updated_at = now() WHERE request_id = ANY($1)", [recent, older])
    assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes") == noted  # nothing the figures read
    await pool.execute("UPDATE fal_jobs SET status = 'completed', version = version + 1 WHERE request_id = $1", recent)
    assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes") == noted
    await pool.execute("UPDATE fal_jobs SET status = 'completed', version = version + 1 WHERE request_id = $1", older)
    assert await pool.fetchval("SELECT count(*) FROM fal_stats_changes") == noted + 1


def test_histogram_percentiles_stay_within_the_bound() -> None:
    rng = random.Random(7)
    for _ in range(200):
        values = sorted(math.exp(rng.uniform(-6, 9)) for _ in range(rng.randint(1, 300)))
        counts: dict[int, int] = {}
        for value in values:
            bucket = math.floor(8 * math.log(value) / math.log(2))
            counts[bucket] = counts.get(bucket, 0) + 1
        approx = histogram_percentiles(sorted(counts.items()))
        for fraction, got in ((0.5, approx.p50), (0.95, approx.p95)):
            position = fraction * (len(values) - 1)
            low = math.floor(position)
            exact = values[low] + (values[min(low + 1, len(values) - 1)] - values[low]) * (position - low)
            assert got is not None and abs(got - exact) <= BOUND * exact
    assert histogram_percentiles([]) == Percentiles(p50=None, p95=None)
