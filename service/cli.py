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


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrated_database_url(settings)
    print("fal-jobs: migrations applied", file=sys.stderr)
    return 0


def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    import pytest

    os.chdir(PROJECT_ROOT)
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
        return cmd_users_create(settings, args)
    return handlers[args.command](settings, args)
