"""`users` and `keys`: who may use the service, with which API keys and own limits."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from service.cli.database import migrated_database_url, with_pool

if TYPE_CHECKING:
    import argparse
    from datetime import datetime

    import asyncpg

    from service.settings import Settings


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.api_keys import create_user
    from service.auth.users import set_admin
    from service.db.pool import create_pool
    from service.errors import DomainError

    dsn = migrated_database_url(settings)

    async def create() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user = await create_user(pool, args.name)
            if getattr(args, "admin", False):
                await set_admin(pool, args.name, True)
        except DomainError as exc:
            print(f"fal-jobs: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
        role = " as an admin" if getattr(args, "admin", False) else ""
        print(f"user {user.name} ({user.user_id}) created{role}. Its API key, shown only this once:", file=sys.stderr)
        print(user.api_key)
        return 0

    return asyncio.run(create())


def cmd_users_sign_in(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    dsn = migrated_database_url(settings)

    async def issue() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user_id = await pool.fetchval("SELECT id FROM fal_users WHERE lower(name) = lower($1)", args.name)
            if user_id is None:
                print(f"fal-jobs: no user named {args.name!r}", file=sys.stderr)
                return 1
            token = await issue_sign_in_token(pool, user_id)
        finally:
            await pool.close()
        print(f"{_sign_in_base(settings)}/?token={token}")
        return 0

    return asyncio.run(issue())


def _sign_in_base(settings: Settings) -> str:
    """The running service's address, as `run` or `serve` of this database recorded it (this
    shell's HOST and PORT may not be the server's); with none running, APP_URL, else HOST and PORT."""
    from service.cli.address import running_address

    running = running_address(settings)
    if running is not None:
        return running
    base = settings.app_url or settings.local_url
    if settings.app_url is None:
        print(f"fal-jobs: no service of this database runs here now; the link assumes it will serve on {base} "
              "(HOST, PORT, APP_URL)", file=sys.stderr)
    return base


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import list_users

    async def work(pool: asyncpg.Pool) -> int:
        print(f"{'name':20} {'created':16} {'disabled':16} {'keys':>4} {'open':>4}  limits (open/min/streams/spend per day)")
        for user in await list_users(pool):
            limits = "/".join(f"{v:g}" if v else "-" for v in (user.max_open_jobs, user.max_jobs_per_minute,
                                                               user.max_streams, user.max_spend_per_day))
            print(f"{user.name:20} {_when(user.created_at):16} {_when(user.disabled_at):16} "
                  f"{user.active_keys:>4} {user.open_jobs:>4}  {limits}")
        return 0

    return with_pool(settings, work)


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import set_disabled

    disable = args.users_command == "disable"

    async def work(pool: asyncpg.Pool) -> int:
        await set_disabled(pool, args.name, disable)
        print(f"fal-jobs: user {args.name} {'disabled: its keys, sessions and streams stop working' if disable else 'enabled'}",
              file=sys.stderr)
        return 0

    return with_pool(settings, work)


def cmd_users_grant_admin(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import set_admin

    grant = args.users_command == "grant-admin"

    async def work(pool: asyncpg.Pool) -> int:
        await set_admin(pool, args.name, grant)
        print(f"fal-jobs: {args.name} {'is an admin: /api/admin answers it' if grant else 'is no longer an admin'}",
              file=sys.stderr)
        return 0

    return with_pool(settings, work)


def cmd_users_limits(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import UserLimits, set_limits

    async def work(pool: asyncpg.Pool) -> int:
        await set_limits(pool, args.name, UserLimits(max_open_jobs=args.max_open_jobs,
                                                     max_jobs_per_minute=args.jobs_per_minute,
                                                     max_streams=args.max_streams,
                                                     max_spend_per_day=args.spend_per_day))
        print(f"fal-jobs: limits of {args.name} set (unset ones follow the settings)", file=sys.stderr)
        return 0

    return with_pool(settings, work)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.api_keys import create_key, list_keys, revoke_key

    async def work(pool: asyncpg.Pool) -> int:
        if args.keys_command == "create":
            key = await create_key(pool, args.name)
            print(f"a new API key for {args.name}, shown only this once:", file=sys.stderr)
            print(key)
        elif args.keys_command == "list":
            for info in await list_keys(pool, args.name):
                state = f"revoked {_when(info.revoked_at)}" if info.revoked_at else "active"
                print(f"{info.prefix:16} created {_when(info.created_at)}  {state}")
        else:
            info = await revoke_key(pool, args.prefix)
            print(f"fal-jobs: key {info.prefix} revoked; its requests get 401 and its streams close within seconds",
                  file=sys.stderr)
        return 0

    return with_pool(settings, work)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"
