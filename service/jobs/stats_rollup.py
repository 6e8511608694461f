"""Rolling the operator's figures up per hour, per day and per 30 days, so that a stats call over a
month reads a few thousand summed rows rather than every job of the month, and one over a year
twelve 30-day periods rather than 365 days of a row per active user.

An hour is rolled up once it is settled: it ended `SETTLE` ago or more, by the database's clock
(the triggers', `stats_sql.SETTLED_UNTIL`). Most jobs end within minutes of their creation (the sweep asks fal about any job open past RECONCILE_AFTER_S, 5 min by
default), so two hours leave few changes to come; the margin is not what keeps the figures right,
the change log is (`piccolo_migrations/…_stats_rollup.py`): any later change to a job of an hour
older than an hour (a late webhook, the sweep's verdict, a backdated insert, a delete) appends its
hour to `fal_stats_changes`, readers take that hour live (its day and 30 days too), and the next
pass recomputes it. The margin must stay above the triggers' hour, or a job could change unseen in a
rolled-up hour. A day is rolled up from its 24 clean hours, 30 days from their days once they are
settled and clean (a day without a job has no rollup and counts as clean: a job inserted into it
later is noted as a change).

Each hour, day or 30 days is one short transaction under an advisory lock (one roll-up at a time, whoever
runs it: the sweep, a test, the bench). An hour's recompute first deletes its changes, then reads
its jobs in a later statement: a change committed after that first statement keeps its row (it
was not visible to the delete), so the hour stays stale and is recomputed again; none is lost.

The sweep runs `roll_up` after retention, at most `HOURS_PER_PASS` hours each time, newest first:
a history of a month (720 hours) is rolled up within the first few sweeps after this ships, and
then about one hour per hour, plus the hours that changed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from service.jobs import stats_sql

if TYPE_CHECKING:
    import asyncpg

SETTLE = timedelta(hours=2)
"""An hour is rolled up once it ended this long ago; above the triggers' one hour (see above)."""
HOURS_PER_PASS = 240
"""Hours one pass computes at most (each reads its hour's jobs once: about 30 ms for 1,400 jobs, so a
pass stays within about 7 s; bench/admin_stats.py)."""


class RollupReport(msgspec.Struct, kw_only=True):
    hours: int = 0
    days: int = 0
    spans: int = 0
    """30-day periods."""
    seconds: float = 0.0


async def settled_until(connection: asyncpg.Connection) -> datetime:
    """The end of the newest settled hour, by the database's clock (the triggers')."""
    until: datetime = await connection.fetchval(stats_sql.SETTLED_UNTIL, SETTLE)
    return until


async def roll_up_hour(connection: asyncpg.Connection, hour: datetime) -> None:
    async with connection.transaction():
        await connection.execute(stats_sql.ROLLUP_LOCK)
        for statement in stats_sql.RECOMPUTE_HOUR:
            await connection.execute(statement, hour)


async def roll_up_day(connection: asyncpg.Connection, day: datetime) -> bool:
    """The day from its hours, if all 24 are rolled up and clean; False (nothing written) if not."""
    async with connection.transaction():
        await connection.execute(stats_sql.ROLLUP_LOCK)
        if not await connection.fetchval(stats_sql.DAY_IS_CLEAN, day):
            return False
        await connection.execute("DELETE FROM fal_stats_periods WHERE hours = 24 AND start = $1", day)
        await connection.execute(stats_sql.ROLL_DAY, day)
    return True


async def roll_up_span(connection: asyncpg.Connection, start: datetime) -> bool:
    """30 days from their days, if clean (SPANS_TO_ROLL: settled); False (nothing written) if not."""
    async with connection.transaction():
        await connection.execute(stats_sql.ROLLUP_LOCK)
        if not await connection.fetchval(stats_sql.SPAN_IS_CLEAN, start):
            return False
        await connection.execute("DELETE FROM fal_stats_periods WHERE hours = $1 AND start = $2",
                                 stats_sql.SPAN_HOURS, start)
        await connection.execute(stats_sql.ROLL_SPAN, start)
    return True


async def _roll_days_and_spans(connection: asyncpg.Connection, report: RollupReport, until: datetime) -> None:
    """The days all of whose hours are rolled up, then the 30-day periods all of whose days are."""
    for row in await connection.fetch(stats_sql.DAYS_TO_ROLL):
        report.days += await roll_up_day(connection, row["day"])
    for row in await connection.fetch(stats_sql.SPANS_TO_ROLL, until):
        report.spans += await roll_up_span(connection, row["start"])


async def roll_up(connection: asyncpg.Connection, *, max_hours: int = HOURS_PER_PASS,
                  until: datetime | None = None) -> RollupReport:
    """One pass: settled hours without a rollup or with changes (newest first, at most `max_hours`),
    then the days and 30-day periods they complete. `until` (for the tests: a cutoff that stays put
    while the clock passes an hour) can only move the cutoff back, never past the settled hours."""
    started = time.perf_counter()
    report = RollupReport()
    settled = await settled_until(connection)
    until = settled if until is None else min(until, settled)
    for row in await connection.fetch(stats_sql.HOURS_TO_ROLL, until, max_hours):
        await roll_up_hour(connection, row["hour"])
        report.hours += 1
    await _roll_days_and_spans(connection, report, until)
    report.seconds = time.perf_counter() - started
    return report


async def roll_up_range(connection: asyncpg.Connection, since: datetime, until: datetime) -> RollupReport:
    """Every settled hour in [since, until) and the days and 30-day periods they complete, whatever was there before:
    for the bench and the tests (a pass finds its own hours)."""
    started = time.perf_counter()
    report = RollupReport()
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    settled = await settled_until(connection)
    while hour + timedelta(hours=1) <= min(until, settled):
        await roll_up_hour(connection, hour)
        report.hours += 1
        hour += timedelta(hours=1)
    await _roll_days_and_spans(connection, report, settled)
    report.seconds = time.perf_counter() - started
    return report
