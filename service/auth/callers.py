"""Who is calling: an API key or a browser session, resolved to its user.

A caller carries the id of its credential (the key or the session itself, not the user), so that
revoking one key or signing out one session ends exactly what that credential opened: its
streams and the stream tokens it minted. A revoked key, an ended or expired session and a
disabled user all stop resolving at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Collection

    import asyncpg

KEY = "key:"
SESSION = "session:"


class Caller(msgspec.Struct, frozen=True):
    user_id: str
    credential: str
    """`key:<sha256 of the key>` or `session:<sha256 of the session id>`: never the secret itself."""
    max_streams: int | None = None
    """The user's own limit on open streams, when an operator set one."""


_BY_KEY = (
    "SELECT k.user_id, u.max_streams FROM fal_api_keys k JOIN fal_users u ON u.id = k.user_id "
    "WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.disabled_at IS NULL"
)
_BY_SESSION = (
    "SELECT s.user_id, u.max_streams FROM fal_browser_sessions s JOIN fal_users u ON u.id = s.user_id "
    "WHERE s.id_hash = $1 AND s.expires_at > now() AND u.disabled_at IS NULL"
)

_REVOKED = """
SELECT 'key:' || h FROM unnest($1::text[]) AS h WHERE NOT EXISTS (
    SELECT 1 FROM fal_api_keys k JOIN fal_users u ON u.id = k.user_id
    WHERE k.key_hash = h AND k.revoked_at IS NULL AND u.disabled_at IS NULL)
UNION ALL
SELECT 'session:' || h FROM unnest($2::text[]) AS h WHERE NOT EXISTS (
    SELECT 1 FROM fal_browser_sessions s JOIN fal_users u ON u.id = s.user_id
    WHERE s.id_hash = h AND s.expires_at > now() AND u.disabled_at IS NULL)
"""


async def caller_for_credential(pool: asyncpg.Pool, credential: str) -> Caller | None:
    """The caller a credential id stands for, while it is still valid."""
    if credential.startswith(KEY):
        query, digest = _BY_KEY, credential.removeprefix(KEY)
    elif credential.startswith(SESSION):
        query, digest = _BY_SESSION, credential.removeprefix(SESSION)
    else:
        return None
    row = await pool.fetchrow(query, digest)
    if row is None:
        return None
    return Caller(user_id=row["user_id"], credential=credential, max_streams=row["max_streams"])


async def revoked_among(pool: asyncpg.Pool, credentials: Collection[str]) -> set[str]:
    """Which of these credentials no longer resolve (revoked, signed out, expired, user disabled):
    one query for all of them."""
    keys = [c.removeprefix(KEY) for c in credentials if c.startswith(KEY)]
    sessions = [c.removeprefix(SESSION) for c in credentials if c.startswith(SESSION)]
    if not keys and not sessions:
        return set()
    return {row[0] for row in await pool.fetch(_REVOKED, keys, sessions)}
