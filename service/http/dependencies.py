"""What controllers receive by injection: the pool, the settings, and the authenticated user."""

from __future__ import annotations

import asyncpg
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from service.auth.api_keys import user_for_key
from service.errors import NotAuthenticated
from service.settings import Settings

# Handler parameters filled by the app's dependencies of the same name.
PoolDependency = NamedDependency[asyncpg.Pool]
UserIdDependency = NamedDependency[str]
SettingsDependency = NamedDependency[Settings]


def provide_pool(state: State) -> asyncpg.Pool:
    return state.pool


def provide_settings(state: State) -> Settings:
    return state.settings


async def provide_user_id(request: Request, pool: PoolDependency) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise NotAuthenticated("authorization: missing; send 'Authorization: Bearer <API key>'")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthenticated("authorization: expected 'Bearer <API key>'")
    user_id = await user_for_key(pool, key.strip())
    if user_id is None:
        raise NotAuthenticated("authorization: unknown API key")
    return user_id
