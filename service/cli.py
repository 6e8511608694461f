"""The command line: run, migrate, test, users create."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from service.settings import PROJECT_ROOT, Settings, SettingsError, load_settings


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from service.db.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.embedded_pgdata)


def _migrated_database_url(settings: Settings) -> str:
    from service.db.migrations import apply_migrations

    dsn = _database_url(settings)
    apply_migrations(dsn)
    return dsn


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.logging import configure_logging

    configure_logging(settings.log_level)
    dsn = _migrated_database_url(settings)
    asyncio.run(_welcome(settings, dsn))
    # The app factory reads its settings from the environment; hand it the server we resolved.
    os.environ["DATABASE_URL"] = dsn
    where = "embedded PostgreSQL in " + settings.embedded_pgdata if not settings.database_url else "DATABASE_URL"
    print(f"fal-jobs: serving on http://{settings.host}:{settings.port} (database: {where})", file=sys.stderr)
    uvicorn.run(
        "service.app:create_app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


DEMO_USER = "demo"


async def _welcome(settings: Settings, dsn: str) -> None:
    """With no user yet, create a local demo user; print a one-time sign-in link for it (on the
    terminal, like Jupyter's ?token= link; never through the logger)."""
    from service.auth.api_keys import create_user
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        demo_id = await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", DEMO_USER)
        if demo_id is None:
            if await pool.fetchval("SELECT count(*) FROM fal_users"):
                return
            demo = await create_user(pool, DEMO_USER)
            demo_id = demo.user_id
            # Its API key is not printed: the browser never needs one ('users create' makes keys).
            print(f"fal-jobs: created the local user '{DEMO_USER}'", file=sys.stderr)
        token = await issue_sign_in_token(pool, demo_id)
    finally:
        await pool.close()
    base = settings.app_url or settings.local_url
    print(f"fal-jobs: open this one-time link to sign in: {base}/?token={token}", file=sys.stderr, flush=True)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrated_database_url(settings)
    print("fal-jobs: migrations applied", file=sys.stderr)
    return 0


def _ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium (a browser download is impossible here). Install
    it when missing and we may; otherwise those tests fail saying so."""
    import shutil
    import subprocess

    if shutil.which("chromium") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print("fal-jobs: installing Debian's chromium for the browser tests", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"fal-jobs: {' '.join(command)} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return


def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    import pytest

    os.chdir(PROJECT_ROOT)
    _ensure_chromium()
    return int(pytest.main(["-q", *args.pytest_args]))


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.api_keys import create_user
    from service.db.pool import create_pool
    from service.errors import DomainError

    dsn = _migrated_database_url(settings)

    async def create() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user = await create_user(pool, args.name)
        except DomainError as exc:
            print(f"fal-jobs: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
        print(f"user {user.name} ({user.user_id}) created. Its API key, shown only this once:", file=sys.stderr)
        print(user.api_key)
        return 0

    return asyncio.run(create())


def cmd_users_sign_in(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    dsn = _migrated_database_url(settings)

    async def issue() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user_id = await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", args.name)
            if user_id is None:
                print(f"fal-jobs: no user named {args.name!r}", file=sys.stderr)
                return 1
            token = await issue_sign_in_token(pool, user_id)
        finally:
            await pool.close()
        print(f"{settings.app_url or settings.local_url}/?token={token}")
        return 0

    return asyncio.run(issue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="fal-jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="apply migrations and serve (embedded Postgres when DATABASE_URL is unset)")
    commands.add_parser("migrate", help="apply the database migrations")
    test = commands.add_parser("test", help="run the test suite (extra arguments go to pytest)")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    users = commands.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user and print its API key once")
    create.add_argument("name")
    sign_in = users.add_parser("sign-in", help="print a one-time browser sign-in link for a user")
    sign_in.add_argument("name")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"fal-jobs: configuration error: {exc}", file=sys.stderr)
        return 2
    handlers = {"run": cmd_run, "migrate": cmd_migrate, "test": cmd_test}
    if args.command == "users":
        return cmd_users_sign_in(settings, args) if args.users_command == "sign-in" else cmd_users_create(settings, args)
    return handlers[args.command](settings, args)
