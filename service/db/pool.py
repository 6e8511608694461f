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


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection,
        server_settings={"application_name": "fal-jobs"},
    )
    assert pool is not None
    return pool
