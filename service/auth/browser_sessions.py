"""Browser sign-in without an API key in the browser.

A one-time sign-in link (as Jupyter prints `...?token=...`) becomes a cookie session: the cookie
carries a random session id (HttpOnly, SameSite=Strict), the database keeps only its hash and a
CSRF token that every state-changing call from the page must echo in `X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from service.auth.callers import SESSION

if TYPE_CHECKING:
    import asyncpg

SESSION_COOKIE = "fal_jobs_session"
CSRF_HEADER = "x-csrf-token"
SIGN_IN_TTL = timedelta(minutes=30)
SESSION_TTL = timedelta(days=7)


class BrowserSession(msgspec.Struct, frozen=True):
    user_id: str
    name: str
    csrf_token: str
    credential: str
    """The session's credential id (`session:<hash>`), which its streams and stream tokens carry."""
    max_streams: int | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_sign_in_token(pool: asyncpg.Pool, user_id: str) -> str:
    token = secrets.token_urlsafe(32)
    await pool.execute(
        "INSERT INTO fal_sign_in_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        _hash(token), user_id, datetime.now(UTC) + SIGN_IN_TTL,
    )
    return token


async def redeem_sign_in_token(pool: asyncpg.Pool, token: str) -> str | None:
    """A new session id for a valid, unused, unexpired token (which is then spent); else None."""
    async with pool.acquire() as connection, connection.transaction():
        user_id = await connection.fetchval(
            "UPDATE fal_sign_in_tokens SET used_at = now() "
            "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
            _hash(token),
        )
        if user_id is None:
            return None
        session_id = secrets.token_urlsafe(32)
        await connection.execute(
            "INSERT INTO fal_browser_sessions (id_hash, user_id, csrf_token, expires_at) VALUES ($1, $2, $3, $4)",
            _hash(session_id), user_id, secrets.token_urlsafe(24), datetime.now(UTC) + SESSION_TTL,
        )
    return session_id


def session_credential(session_id: str) -> str:
    return SESSION + _hash(session_id)


async def session_for(pool: asyncpg.Pool, session_id: str) -> BrowserSession | None:
    """The live session behind a cookie: unexpired, not signed out, its user not disabled."""
    id_hash = _hash(session_id)
    row = await pool.fetchrow(
        "SELECT s.user_id, u.name, s.csrf_token, u.max_streams FROM fal_browser_sessions s "
        "JOIN fal_users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > now() AND u.disabled_at IS NULL",
        id_hash,
    )
    if row is None:
        return None
    return BrowserSession(user_id=row["user_id"], name=row["name"], csrf_token=row["csrf_token"],
                          credential=SESSION + id_hash, max_streams=row["max_streams"])


async def end_session(pool: asyncpg.Pool, session_id: str) -> None:
    await pool.execute("DELETE FROM fal_browser_sessions WHERE id_hash = $1", _hash(session_id))


def csrf_matches(session: BrowserSession, offered: str | None) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    return offered is not None and secrets.compare_digest(session.csrf_token.encode(), offered.encode("utf-8", "surrogateescape"))
