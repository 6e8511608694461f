"""The asyncpg pool: JSON codecs that keep integers exact (fal seeds exceed 2^53)."""

from __future__ import annotations

import asyncpg
import msgspec

_encode = msgspec.json.encode
_decode = msgspec.json.decode


async def init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            schema="pg_catalog",
            encoder=lambda value: _encode(value).decode(),
            decoder=_decode,
            format="text",
        )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): one
    round trip per release that our code never needs. Pool connections take no session state: the
    one session-level advisory lock (the sweep's) is released explicitly, LISTEN has its own
    connection, and asyncpg still rolls back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, reset=_keep_session,
        server_settings={"application_name": "fal-jobs"},
    )
    assert pool is not None
    return pool
