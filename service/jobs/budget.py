"""Budgets in money: a user's spend over a rolling 24 h, decided in Postgres with the reservation.

What counts against a budget: each job created in the last 24 h at its final cost once known,
else its estimate (a cancelled job keeps its estimate: fal may have run it to its end), plus the
estimates of creates still being submitted (their reservations). `reservations.reserve` calls
`check` under the lock on the user's row, before it writes the new reservation with its estimate,
so that two processes together stay within the budget, and a refused create costs nothing.
A job whose final cost exceeds its estimate counts as it is: the next create sees it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from service import metrics
from service.errors import BudgetExceeded

if TYPE_CHECKING:
    import asyncpg

WINDOW = timedelta(hours=24)
IN_FLIGHT_RETRY_AFTER_S = 10
"""Retry-After when only creates still being submitted stand in the way (their jobs may cost less)."""

_CHARGE = "coalesce((cost ->> 'final')::numeric, (cost ->> 'estimated')::numeric, 0)"

_SPENT = f"""
SELECT
    (SELECT coalesce(sum({_CHARGE}), 0) FROM fal_jobs
      WHERE user_id = $1 AND created_at > now() - $2::interval AND cost IS NOT NULL)
  + (SELECT coalesce(sum(estimated_cost), 0) FROM fal_job_reservations
      WHERE user_id = $1 AND request_id IS NULL AND created_at > now() - $3::interval) AS spent
"""

_CHARGES = f"""
SELECT created_at, {_CHARGE} AS charge FROM fal_jobs
WHERE user_id = $1 AND created_at > now() - $2::interval AND cost IS NOT NULL
ORDER BY created_at
"""


async def check(connection: asyncpg.Connection, user_id: str, *, budget: Decimal, estimate: Decimal,
                submit_grace: timedelta) -> None:
    """Refuse (BudgetExceeded) when this job's estimate does not fit in what is left of the budget."""
    spent: Decimal = await connection.fetchval(_SPENT, user_id, WINDOW, submit_grace)
    if spent + estimate <= budget:
        return
    metrics.limit_refused("spend_per_day")
    message = (f"budget: {spent:f} spent in the last 24 h and this job's estimate of {estimate:f} exceed "
               f"{budget:f} (MAX_SPEND_PER_DAY)")
    if estimate > budget:
        raise BudgetExceeded(f"{message}; this job alone costs more than the budget", retry_after_s=int(WINDOW.total_seconds()))
    raise BudgetExceeded(f"{message}; retry when enough of it is older than 24 h",
                         retry_after_s=await _frees_enough_in(connection, user_id, spent + estimate - budget))


async def _frees_enough_in(connection: asyncpg.Connection, user_id: str, needed: Decimal) -> int:
    """Seconds until jobs leaving the 24 h window free `needed`."""
    freed = Decimal(0)
    now = datetime.now(UTC)
    for row in await connection.fetch(_CHARGES, user_id, WINDOW):
        freed += row["charge"]
        if freed >= needed:
            return max(1, math.ceil((row["created_at"] + WINDOW - now).total_seconds()))
    return IN_FLIGHT_RETRY_AFTER_S
