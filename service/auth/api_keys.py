"""Users and API keys. A key is shown once, at creation; only its SHA-256 is stored, with a short
prefix of the key by which an operator lists and revokes it."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import datetime

import asyncpg
import msgspec

from service.errors import Conflict, InvalidRequest, NotFound

KEY_PREFIX = "fj_"
SHOWN_PREFIX_LENGTH = 12
"""`fj_` and 9 characters of the key (54 random bits): enough to name one key, useless to an attacker."""
USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


class NewUser(msgspec.Struct, frozen=True):
    user_id: str
    name: str
    api_key: str


def hash_key(api_key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_user(pool: asyncpg.Pool, name: str) -> NewUser:
    """A user and its first API key, returned once."""
    _check_name(name)
    try:
        async with pool.acquire() as conn, conn.transaction():
            user_id = await _insert_user(conn, name)
            api_key = await _insert_key(conn, user_id)
    except asyncpg.UniqueViolationError:
        raise await _taken(pool, name) from None
    return NewUser(user_id=user_id, name=name, api_key=api_key)


async def add_user(pool: asyncpg.Pool, name: str) -> str:
    """A user without an API key (one who signs in with a link); its id. `create_key` makes keys."""
    _check_name(name)
    try:
        async with pool.acquire() as conn:
            return await _insert_user(conn, name)
    except asyncpg.UniqueViolationError:
        raise await _taken(pool, name) from None


def _check_name(name: str) -> None:
    if not USER_NAME_PATTERN.match(name):
        raise InvalidRequest("name: 1-100 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")


async def _insert_user(connection: asyncpg.Connection, name: str) -> str:
    user_id = str(uuid.uuid4())
    await connection.execute("INSERT INTO fal_users (id, name) VALUES ($1, $2)", user_id, name)
    return user_id


async def _taken(pool: asyncpg.Pool, name: str) -> Conflict:
    """Names compare without case (a unique index on lower(name)): the message names the user as
    it is spelled, and the command that gives it another key."""
    existing = await pool.fetchval("SELECT name FROM fal_users WHERE lower(name) = lower($1)", name) or name
    return Conflict(f"name: a user named {existing!r} already exists; to give it another API key: "
                    f"python3 -m service keys create {existing}")


async def _insert_key(connection: asyncpg.Connection, user_id: str) -> str:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    await connection.execute(
        "INSERT INTO fal_api_keys (key_hash, user_id, prefix) VALUES ($1, $2, $3)",
        hash_key(api_key), user_id, api_key[:SHOWN_PREFIX_LENGTH],
    )
    return api_key


class KeyInfo(msgspec.Struct, frozen=True):
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def create_key(pool: asyncpg.Pool, user_name: str) -> str:
    """A new API key for an existing user; returned once."""
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval("SELECT id FROM fal_users WHERE lower(name) = lower($1)", user_name)
        if user_id is None:
            raise NotFound(f"name: no user named {user_name!r}")
        return await _insert_key(conn, user_id)


async def list_keys(pool: asyncpg.Pool, user_name: str) -> list[KeyInfo]:
    if await pool.fetchval("SELECT id FROM fal_users WHERE lower(name) = lower($1)", user_name) is None:
        raise NotFound(f"name: no user named {user_name!r}")
    rows = await pool.fetch(
        "SELECT k.prefix, k.created_at, k.revoked_at FROM fal_api_keys k JOIN fal_users u ON u.id = k.user_id "
        "WHERE lower(u.name) = lower($1) ORDER BY k.created_at",
        user_name,
    )
    return [KeyInfo(prefix=r["prefix"], created_at=r["created_at"], revoked_at=r["revoked_at"]) for r in rows]


async def revoke_key(pool: asyncpg.Pool, prefix: str) -> KeyInfo:
    """Revoke the one key whose shown prefix is `prefix` (a prefix naming several keys is refused)."""
    if len(prefix) < len(KEY_PREFIX) + 4:
        raise InvalidRequest(f"prefix: give at least {len(KEY_PREFIX) + 4} characters, as 'keys list' shows them")
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT key_hash FROM fal_api_keys WHERE starts_with(prefix, $1) FOR UPDATE", prefix
        )
        if not rows:
            raise NotFound(f"prefix: no key starts with {prefix!r}")
        if len(rows) > 1:
            raise Conflict(f"prefix: {len(rows)} keys start with {prefix!r}; give the whole prefix 'keys list' shows")
        row = await conn.fetchrow(
            "UPDATE fal_api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_hash = $1 "
            "RETURNING prefix, created_at, revoked_at",
            rows[0]["key_hash"],
        )
    return KeyInfo(prefix=row["prefix"], created_at=row["created_at"], revoked_at=row["revoked_at"])

