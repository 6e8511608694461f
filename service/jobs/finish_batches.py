"""Jobs that end together are written together: one statement and one commit for all of them.

Webhooks arrive in bursts (fal finishes many jobs at once; 16 or 64 deliveries in flight), and
each used to take a pooled connection, a round trip and a commit of its own, with Postgres
serializing every commit that notifies. Here a job's end joins the batch being gathered; while a
batch is at the database the next one fills, so batches grow with the load and a lone webhook
goes at once (no timer, no added wait). At most one batch is in flight per process.

A batch writes through `status_machine.finish_many`, so every job gets what `apply_change` gives
it. What the batch leaves alone (a job no longer open, a second delivery of a job already in the
batch, a batch that failed on a value Postgres refused, a batch still not written after
`MAX_WAIT_S`) comes back as None and the caller applies it alone: a change Postgres refuses then
fails only its own webhook. A batch that met a sick database answers every caller with
DatabaseUnavailable at once (a 503: fal retries).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import logging

import asyncpg

from service import metrics
from service.db.pool import is_unavailable
from service.errors import DatabaseUnavailable
from service.jobs.models import Job, JobChange
from service.jobs.status_machine import finish_many

log = logging.getLogger(__name__)

MAX_BATCH = 100
"""Jobs per statement at most: a bigger burst goes in several."""
MAX_WAIT_S = 1.0
"""How long a webhook waits for its batch before it applies its change alone: a batch stuck on a
row lock (one job's row held by a long transaction) must not hold every webhook of the process
until the statement time-out. The batch still writes the change; whichever comes second finds the
job ended."""


class _Outcome(enum.Enum):
    UNAVAILABLE = "unavailable"
    """The batch met a sick database: its callers answer so at once (fal retries) instead of each
    trying again alone, which doubled the load on the database and the time to the 503."""


class FinishBatches:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._gathering: dict[str, tuple[JobChange, asyncio.Future[Job | _Outcome | None]]] = {}
        self._writer: asyncio.Task[None] | None = None
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Job | _Outcome | None] = loop.create_future()
        self._gathering[request_id] = (change, future)
        if self._writer is None:
            # A context of its own: the task outlives the request that started it, whose id its
            # log lines must not carry.
            self._writer = asyncio.create_task(self._write(), name="finish-batches", context=contextvars.Context())
        give_up = loop.call_later(self._max_wait_s, self._give_up, request_id, future)
        try:
            outcome = await future
        finally:
            give_up.cancel()
        if outcome is _Outcome.UNAVAILABLE:
            raise DatabaseUnavailable("the database did not take the job's end; retry later", retry_after_s=1)
        return outcome

    def _give_up(self, request_id: str, future: asyncio.Future[Job | _Outcome | None]) -> None:
        if future.done():
            return
        gathered = self._gathering.get(request_id)
        if gathered is not None and gathered[1] is future:
            del self._gathering[request_id]  # not written yet: it goes alone only
        future.set_result(None)

    async def _write(self) -> None:
        try:
            while self._gathering:
                batch = dict(itertools.islice(self._gathering.items(), self._max_batch))
                for request_id in batch:
                    del self._gathering[request_id]
                outcomes: dict[str, Job | _Outcome] = {}
                try:
                    async with self._pool.acquire() as connection:
                        outcomes.update(await finish_many(connection, {r: change for r, (change, _) in batch.items()}))
                    self.batches += 1
                    self.jobs += len(batch)
                    metrics.finish_batch(len(batch))
                except Exception as error:
                    metrics.finish_batch(len(batch), failed=True)
                    unavailable = isinstance(error, DatabaseUnavailable) or is_unavailable(error)
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
