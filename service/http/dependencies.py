"""What controllers receive by injection: the pool, the settings, and the authenticated user."""

from __future__ import annotations

import asyncpg
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from service.auth.api_keys import user_for_key
from service.auth.browser_sessions import CSRF_HEADER, SESSION_COOKIE, csrf_matches, session_for
from service.errors import Forbidden, NotAuthenticated
from service.settings import Settings

# Handler parameters filled by the app's dependencies of the same name.
PoolDependency = NamedDependency[asyncpg.Pool]
UserIdDependency = NamedDependency[str]
SettingsDependency = NamedDependency[Settings]


def provide_pool(state: State) -> asyncpg.Pool:
    return state.pool


def provide_settings(state: State) -> Settings:
    return state.settings


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def provide_user_id(request: Request, pool: PoolDependency) -> str:
    """The caller: an API key (`Authorization: Bearer`), or a browser session cookie, whose
    state-changing requests must carry the session's CSRF token."""
    header = request.headers.get("authorization")
    if not header:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            session = await session_for(pool, session_id)
            if session is None:
                raise NotAuthenticated("session: expired or signed out; open a new sign-in link")
            if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
                raise Forbidden("x-csrf-token: missing or wrong; the page sends the token GET /api/session gives")
            return session.user_id
        raise NotAuthenticated("authorization: missing; send 'Authorization: Bearer <API key>'")
    return await bearer_user(header, pool)


async def bearer_user(header: str, pool: asyncpg.Pool) -> str:
    """The owner of the API key in an `Authorization: Bearer <key>` header."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthenticated("authorization: expected 'Bearer <API key>'")
    user_id = await user_for_key(pool, key.strip())
    if user_id is None:
        raise NotAuthenticated("authorization: unknown API key")
    return user_id
