"""Operating on users: list them, disable one (its keys and sessions stop working at once), and
give one its own limits where the settings' defaults are too tight. Names compare without case."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from service.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    import asyncpg


class UserInfo(msgspec.Struct, frozen=True):
    user_id: str
    name: str
    created_at: datetime
    disabled_at: datetime | None
    active_keys: int
    open_jobs: int
    max_open_jobs: int | None
    max_jobs_per_minute: int | None
    max_streams: int | None
    max_spend_per_day: float | None = None


class UserLimits(msgspec.Struct, frozen=True):
    """Per-user overrides; None keeps the setting's value."""

    max_open_jobs: int | None = None
    max_jobs_per_minute: int | None = None
    max_streams: int | None = None
    max_spend_per_day: float | None = None
    """In the price's currency, over a rolling 24 h (MAX_SPEND_PER_DAY)."""


async def list_users(pool: asyncpg.Pool) -> list[UserInfo]:
    rows = await pool.fetch(
        """
        SELECT u.id, u.name, u.created_at, u.disabled_at, u.max_open_jobs, u.max_jobs_per_minute, u.max_streams,
               u.max_spend_per_day::float8 AS max_spend_per_day,
               (SELECT count(*) FROM fal_api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL) AS active_keys,
               (SELECT count(*) FROM fal_jobs j WHERE j.user_id = u.id AND j.status IN ('pending', 'in_progress'))
                   AS open_jobs
        FROM fal_users u ORDER BY u.name
        """
    )
    return [
        UserInfo(user_id=r["id"], name=r["name"], created_at=r["created_at"], disabled_at=r["disabled_at"],
                 active_keys=r["active_keys"], open_jobs=r["open_jobs"], max_open_jobs=r["max_open_jobs"],
                 max_jobs_per_minute=r["max_jobs_per_minute"], max_streams=r["max_streams"],
                 max_spend_per_day=r["max_spend_per_day"])
        for r in rows
    ]


async def set_disabled(pool: asyncpg.Pool, name: str, disabled: bool) -> None:
    """Disable (or enable again) a user: every key and session of theirs stops resolving; their
    open streams close within seconds in every process."""
    done = await pool.fetchval(
        "UPDATE fal_users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END "
        "WHERE lower(name) = lower($1) RETURNING id",
        name, disabled,
    )
    if done is None:
        raise NotFound(f"name: no user named {name!r}")


async def set_admin(pool: asyncpg.Pool, name: str, admin: bool) -> None:
    """Make a user an admin (every job readable under /api/admin), or an ordinary user again."""
    done = await pool.fetchval("UPDATE fal_users SET is_admin = $2 WHERE lower(name) = lower($1) RETURNING id",
                               name, admin)
    if done is None:
        raise NotFound(f"name: no user named {name!r}")


async def set_limits(pool: asyncpg.Pool, name: str, limits: UserLimits) -> None:
    for field, value in msgspec.structs.asdict(limits).items():
        if value is not None and not value > 0:  # `not >` refuses nan too
            raise InvalidRequest(f"{field}: must be above 0")
    spend = None if limits.max_spend_per_day is None else Decimal(str(limits.max_spend_per_day))
    if spend is not None and not spend.is_finite():
        raise InvalidRequest("max_spend_per_day: must be a finite amount")
    done = await pool.fetchval(
        "UPDATE fal_users SET max_open_jobs = $2, max_jobs_per_minute = $3, max_streams = $4, max_spend_per_day = $5 "
        "WHERE lower(name) = lower($1) RETURNING id",
        name, limits.max_open_jobs, limits.max_jobs_per_minute, limits.max_streams, spend,
    )
    if done is None:
        raise NotFound(f"name: no user named {name!r}")
