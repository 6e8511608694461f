"""Jobs that end together are written together: one statement and one commit for all of them.

Webhooks arrive in bursts (fal finishes many jobs at once; 16 or 64 deliveries in flight), and
each used to take a pooled connection, a round trip and a commit of its own, with Postgres
serializing every commit that notifies. Here a job's end joins the batch being gathered; while a
batch is at the database the next one fills, so batches grow with the load and a lone webhook
goes at once (no timer, no added wait). At most one batch is in flight per process.

A batch writes through `status_machine.finish_many`, so every job gets what `apply_change` gives
it. What the batch leaves alone (a job no longer open, a second delivery of a job already in the
batch, a batch that failed on a value Postgres refused, a batch that waited past the lock
time-out for a row another transaction holds) comes back as None and the caller applies it
alone: a change Postgres refuses then fails only its own webhook, and a held row then stalls only
its own job's webhook (which answers 503 after its own lock time-out; fal retries). A batch that
met a sick database answers every caller with DatabaseUnavailable at once (a 503: fal retries).

A batch that fails on a lock time-out asks, without waiting, which of its rows are held, and
remembers those jobs for a while: a later delivery of one of them first asks the same of its row
alone and answers 503 at once while it is still held, so fal's retries of a job whose row a long
transaction holds stall no batch (and no pooled connection) for the lock time-out each.

A webhook waits for its batch without a timer of its own: the server's lock time-out is what
ends a batch stuck on a held row, and it also frees the rows the batch had locked before it,
which a caller giving up on its side did not. A batch that is merely slow (a busy pool, a large
batch) is waited for rather than written a second time, one job at a time, by every caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import logging
import time
from typing import TYPE_CHECKING

import asyncpg

from service import metrics
from service.db.pool import is_lock_timeout, is_unavailable
from service.errors import DatabaseUnavailable
from service.jobs import sql
from service.jobs.status_machine import finish_many

if TYPE_CHECKING:
    from service.jobs.models import Job, JobChange

log = logging.getLogger(__name__)

MAX_BATCH = 100
"""Jobs per statement at most: a bigger burst goes in several."""
HELD_MEMORY_S = 60.0
"""How long a job whose row was found held is checked (without waiting) before its deliveries join
a batch again; a row still held after that costs one more batch its lock time-out."""


class _Outcome(enum.Enum):
    UNAVAILABLE = "unavailable"
    """The batch met a sick database: its callers answer so at once (fal retries) instead of each
    trying again alone, which doubled the load on the database and the time to the 503."""


class FinishBatches:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._gathering: dict[str, tuple[JobChange, asyncio.Future[Job | _Outcome | None]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._held: dict[str, float] = {}
        """Jobs whose rows were found held by another transaction, and when (monotonic)."""
        self.batches = 0
        """Statements written (with `jobs`, what a test or a bench reads to see the batching)."""
        self.jobs = 0

    async def finish(self, request_id: str, change: JobChange) -> Job | None:
        """The job as `change` ended it, or None when this batch did not end it (see the module
        docstring): the caller then applies the change alone. `change` must pass
        `JobChange.ends_without_logs`. Raises DatabaseUnavailable when the batch met a sick
        database."""
        if request_id in self._gathering:
            return None  # a second delivery: alone, after (or against) the first
        if request_id in self._held:
            if await self._still_held(request_id):
                raise DatabaseUnavailable("the job's row is held by another transaction; retry later", retry_after_s=1)
            return None  # free again, moments ago perhaps: alone
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Job | _Outcome | None] = loop.create_future()
        self._gathering[request_id] = (change, future)
        if self._writer is None:
            # A context of its own: the task outlives the request that started it, whose id its
            # log lines must not carry.
            self._writer = asyncio.create_task(self._write(), name="finish-batches", context=contextvars.Context())
        outcome = await future
        if outcome is _Outcome.UNAVAILABLE:
            raise DatabaseUnavailable("the database did not take the job's end; retry later", retry_after_s=1)
        return outcome

    async def _still_held(self, request_id: str) -> bool:
        if time.monotonic() - self._held[request_id] > HELD_MEMORY_S:
            del self._held[request_id]
            return False
        if await self._pool.fetch(sql.HELD_JOBS, [request_id]):
            return True
        self._held.pop(request_id, None)
        return False

    async def _find_held(self, connection: asyncpg.Connection, request_ids: list[str]) -> None:
        """After a lock time-out: remember which of the batch's jobs have their rows held."""
        now = time.monotonic()
        for request_id, found in list(self._held.items()):
            if now - found > HELD_MEMORY_S:
                del self._held[request_id]
        for row in await connection.fetch(sql.HELD_JOBS, request_ids):
            self._held[row["request_id"]] = now
        log.warning("a batch of job ends waited past the lock time-out; rows held by another transaction: %d",
                    len(self._held), extra={"action": "jobs.finish_batch_held_rows"})

    async def _write(self) -> None:
        try:
            while self._gathering:
                batch = dict(itertools.islice(self._gathering.items(), self._max_batch))
                for request_id in batch:
                    del self._gathering[request_id]
                outcomes: dict[str, Job | _Outcome] = {}
                try:
                    async with self._pool.acquire() as connection:
                        try:
                            outcomes.update(await finish_many(connection, {r: change for r, (change, _) in batch.items()}))
                        except asyncpg.LockNotAvailableError:
                            try:
                                await self._find_held(connection, list(batch))
                            except Exception as probe:  # only a shortcut for later deliveries
                                log.warning("could not tell which rows are held", extra={
                                    "action": "jobs.finish_batch_held_rows", "error": type(probe).__name__})
                            raise
                    self.batches += 1
                    self.jobs += len(batch)
                    metrics.finish_batch(len(batch))
                except Exception as error:
                    metrics.finish_batch(len(batch), failed=True)
                    # A row held by another transaction: only its own job needs to wait for it.
                    unavailable = not is_lock_timeout(error) and (
                        isinstance(error, DatabaseUnavailable) or is_unavailable(error))
                    log.warning("a batch of job ends failed; " + ("each answers unavailable" if unavailable else
                                                                  "each is applied alone"),
                                extra={"action": "jobs.finish_batch_failed", "jobs": len(batch),
                                       "error": type(error).__name__})
                    if unavailable:
                        outcomes = dict.fromkeys(batch, _Outcome.UNAVAILABLE)
                finally:  # cancelled too: whoever waits gets an answer
                    for request_id, (_, future) in batch.items():
                        if not future.done():
                            future.set_result(outcomes.get(request_id))
        finally:
            self._writer = None
            # Cancelled (shutdown) with callers still waiting: they apply their changes alone.
            for _, future in self._gathering.values():
                if not future.done():
                    future.set_result(None)
            self._gathering.clear()
