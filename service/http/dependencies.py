"""What controllers receive by injection: the pool, the settings, and the authenticated caller."""

from __future__ import annotations

import asyncpg
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from service.auth.api_keys import hash_key
from service.auth.browser_sessions import CSRF_HEADER, SESSION_COOKIE, csrf_matches, session_for
from service.auth.callers import KEY, Caller, caller_for_credential
from service.errors import Forbidden, NotAuthenticated
from service.settings import Settings

# Handler parameters filled by the app's dependencies of the same name.
PoolDependency = NamedDependency[asyncpg.Pool]
CallerDependency = NamedDependency[Caller]
UserIdDependency = NamedDependency[str]
SettingsDependency = NamedDependency[Settings]

MAX_CREDENTIAL_LENGTH = 512
"""Our keys and session ids are under 100 characters; anything much longer is not one of them."""


def provide_pool(state: State) -> asyncpg.Pool:
    return state.pool


def provide_settings(state: State) -> Settings:
    return state.settings


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def provide_caller(request: Request, pool: PoolDependency) -> Caller:
    """The caller: an API key (`Authorization: Bearer`), or a browser session cookie, whose
    state-changing requests must carry the session's CSRF token."""
    header = request.headers.get("authorization")
    if not header:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            if len(session_id) > MAX_CREDENTIAL_LENGTH:
                raise NotAuthenticated("session: malformed session cookie; open a new sign-in link")
            session = await session_for(pool, session_id)
            if session is None:
                raise NotAuthenticated("session: expired or signed out; open a new sign-in link")
            if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
                raise Forbidden("x-csrf-token: missing or wrong; the page sends the token GET /api/session gives")
            return Caller(user_id=session.user_id, credential=session.credential, max_streams=session.max_streams)
        raise NotAuthenticated("authorization: missing; send 'Authorization: Bearer <API key>'")
    return await bearer_caller(header, pool)


def provide_user_id(caller: CallerDependency) -> str:
    return caller.user_id


async def bearer_caller(header: str, pool: asyncpg.Pool) -> Caller:
    """The caller behind an `Authorization: Bearer <key>` header: a key that is not revoked, of a
    user who is not disabled."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise NotAuthenticated("authorization: expected 'Bearer <API key>'")
    if len(key) > MAX_CREDENTIAL_LENGTH or not key.isascii():
        raise NotAuthenticated("authorization: not an API key of this service")
    caller = await caller_for_credential(pool, KEY + hash_key(key))
    if caller is None:
        raise NotAuthenticated("authorization: unknown or revoked API key")
    return caller
