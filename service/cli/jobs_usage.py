"""`jobs list` and `usage`: an operator's view of every job and of the spend, from the shell."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.cli.database import with_pool

if TYPE_CHECKING:
    import argparse

    import asyncpg

    from service.settings import Settings


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    from service.jobs.admin import JobFilter, list_all_jobs, parse_moment

    async def work(pool: asyncpg.Pool) -> int:
        where = JobFilter(status=args.status, model=args.model, user=args.user,
                          since=parse_moment("--since", args.since))
        page = await list_all_jobs(pool, where, limit=args.limit, max_limit=10_000)
        print(f"{'created (UTC)':19} {'status':11} {'user':16} {'model':40} {'cost':>9}  request id")
        for job in page.jobs:
            cost = job.cost.final if job.cost and job.cost.final is not None else job.cost.estimated if job.cost else None
            print(f"{job.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} {job.status:11} {(job.user_name or '?')[:16]:16} "
                  f"{job.model_id[:40]:40} {_money(cost):>9}  {job.request_id}")
        if page.next_cursor:
            print(f"(more than {args.limit}; narrow the filters or raise --limit)")
        return 0

    return with_pool(settings, work)


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    from service.jobs.admin import parse_moment
    from service.jobs.admin_stats import stats

    async def work(pool: asyncpg.Pool) -> int:
        until = datetime.now(UTC)
        since = parse_moment("--since", args.since, now=until) or until
        figures = await stats(pool, since, until)
        print(f"usage since {since:%Y-%m-%d %H:%M} UTC (spend: final costs, estimates for jobs not ended)")
        if args.by == "model":
            print(f"{'model':44} {'jobs':>7} {'success':>8} {'spend':>10}")
            for m in figures.models:
                rate = "-" if m.success_rate is None else f"{m.success_rate:.0%}"
                print(f"{m.model_id[:44]:44} {m.jobs:>7} {rate:>8} {_money(m.spend):>10}")
        else:
            print(f"{'user':24} {'jobs':>7} {'spend':>10}")
            for u in figures.users:
                print(f"{(u.name or u.user_id)[:24]:24} {u.jobs:>7} {_money(u.spend):>10}")
        return 0

    return with_pool(settings, work)
