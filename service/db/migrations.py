"""Applying Piccolo's migrations, and telling whether a database has them all."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from service.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

MIGRATIONS_FOLDER = PROJECT_ROOT / "piccolo_migrations"
APP_NAME = "fal_jobs"


class MigrationError(RuntimeError):
    pass


def apply_migrations(dsn: str) -> None:
    """Run Piccolo's `migrations forwards` against `dsn`; a no-op when all have run.

    A child process, because Piccolo binds its engine to DATABASE_URL when piccolo_conf is
    imported, and the caller (the test suite, the service) may talk to several databases.
    """
    env = {**os.environ, "DATABASE_URL": dsn, "PICCOLO_CONF": "piccolo_conf"}
    done = subprocess.run(
        [sys.executable, "-m", "piccolo.main", "migrations", "forwards", APP_NAME],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise MigrationError(f"migrations failed:\n{done.stdout}\n{done.stderr}")


@cache
def expected_migration_ids() -> frozenset[str]:
    ids = set()
    for path in sorted(Path(MIGRATIONS_FOLDER).glob(f"{APP_NAME}_*.py")):
        spec = importlib.util.spec_from_file_location(f"_migration_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load the migration {path}: is it a Python file?")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ids.add(module.ID)
    return frozenset(ids)


async def missing_migrations(connection: asyncpg.Connection) -> frozenset[str]:
    """The migration ids of this checkout that the database has not run (all of them on a new one)."""
    exists = await connection.fetchval("SELECT to_regclass('migration') IS NOT NULL")
    ran: set[str] = set()
    if exists:
        rows = await connection.fetch("SELECT name FROM migration WHERE app_name = $1", APP_NAME)
        ran = {row["name"] for row in rows}
    return expected_migration_ids() - ran


async def database_reachable(dsn: str, *, timeout_s: float = 2.0) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await connection.close()
    return True


def wait_for_database(dsn: str, *, wait_s: float, every_s: float = 0.5, on_wait: Callable[[], None] | None = None) -> None:
    """Return once Postgres at `dsn` takes a connection; MigrationError after `wait_s` without one.
    Migrations wait for the database rather than fail a deploy that starts with it."""
    deadline = time.monotonic() + wait_s
    told = False
    while not asyncio.run(database_reachable(dsn)):
        if time.monotonic() > deadline:
            raise MigrationError(f"the database did not answer within {wait_s:g} s")
        if not told and on_wait is not None:
            on_wait()
            told = True
        time.sleep(every_s)
