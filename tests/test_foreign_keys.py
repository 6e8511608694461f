"""Foreign keys from the tables that name a user or a job: enforced on new rows, and added to a
database holding rows that break them without losing those rows."""

from __future__ import annotations

import importlib
import uuid

import asyncpg
import pytest

from service.auth.api_keys import NewUser

migration = importlib.import_module("piccolo_migrations.fal_jobs_2026_12_01t12_00_00_000000_foreign_keys")
NAMES = [name for _, name, _, _ in migration.CONSTRAINTS]


async def validated(connection: asyncpg.Connection | asyncpg.Pool) -> dict[str, bool]:
    rows = await connection.fetch("SELECT conname, convalidated FROM pg_constraint WHERE conname = ANY($1)", NAMES)
    return {row["conname"]: row["convalidated"] for row in rows}


async def test_every_key_is_in_place_and_validated(pool: asyncpg.Pool) -> None:
    assert await validated(pool) == dict.fromkeys(NAMES, True)


async def test_a_job_needs_its_user_and_an_event_its_job(pool: asyncpg.Pool, user: NewUser) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input) "
                           "VALUES ($1, 'nobody', 'fal-ai/flux/dev', 'image', '{}')", str(uuid.uuid4()))
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO fal_job_events (request_id, user_id, version, status, data) "
                           "VALUES ($1, $2, 1, 'pending', '{}')", str(uuid.uuid4()), user.user_id)
    # A parked webhook names a request id before its job exists: no key there.
    await pool.execute("INSERT INTO fal_early_webhooks (request_id, body) VALUES ($1, '{}')", f"early-{uuid.uuid4()}")


class RollBack(Exception):
    """Undoes the test's changes: the shared test database keeps its validated keys."""


async def test_rows_that_break_a_key_are_kept_and_the_key_holds_for_new_rows(pool: asyncpg.Pool) -> None:
    orphan = f"orphan-{uuid.uuid4()}"
    with pytest.raises(RollBack):
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(migration.BACKWARDS_SQL)
            await connection.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input) "
                                     "VALUES ($1, 'gone-user', 'fal-ai/flux/dev', 'image', '{}')", orphan)
            await connection.execute(migration.FORWARDS_SQL)
            assert await connection.fetchval("SELECT count(*) FROM fal_jobs WHERE request_id = $1", orphan) == 1
            assert await validated(connection) == {**dict.fromkeys(NAMES, True), "fal_jobs_user_fk": False}
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                async with connection.transaction():
                    await connection.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input) "
                                             "VALUES ($1, 'nobody', 'fal-ai/flux/dev', 'image', '{}')", str(uuid.uuid4()))
            raise RollBack
    assert await validated(pool) == dict.fromkeys(NAMES, True)
