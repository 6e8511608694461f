"""Users and API keys. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid

import asyncpg
import msgspec

from service.errors import Conflict, InvalidRequest

KEY_PREFIX = "fj_"
USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


class NewUser(msgspec.Struct, frozen=True):
    user_id: str
    name: str
    api_key: str


def hash_key(api_key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_user(pool: asyncpg.Pool, name: str) -> NewUser:
    if not USER_NAME_PATTERN.match(name):
        raise InvalidRequest("name: 1-100 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    user_id = str(uuid.uuid4())
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO fal_users (id, name) VALUES ($1, $2)", user_id, name)
            await conn.execute(
                "INSERT INTO fal_api_keys (key_hash, user_id, prefix) VALUES ($1, $2, $3)",
                hash_key(api_key), user_id, api_key[:8],
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"name: a user named {name!r} already exists") from None
    return NewUser(user_id=user_id, name=name, api_key=api_key)


async def user_for_key(connection: asyncpg.Connection | asyncpg.Pool, api_key: str) -> str | None:
    return await connection.fetchval("SELECT user_id FROM fal_api_keys WHERE key_hash = $1", hash_key(api_key))

