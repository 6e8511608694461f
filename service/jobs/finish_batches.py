"""Jobs that end together are written together: one statement and one commit for all of them.

Webhooks arrive in bursts (fal finishes many jobs at once; 16 or 64 deliveries in flight), and
each used to take a pooled connection, a round trip and a commit of its own, with Postgres
serializing every commit that notifies. Here a job's end joins the batch being gathered; while a
batch is at the database the next one fills, so batches grow with the load and a lone webhook
goes at once (no timer, no added wait). At most one batch is in flight per process.

A batch writes through `status_machine.finish_many`, so every job gets what `apply_change` gives
it. What the batch leaves alone (a job no longer open, a second delivery of a job already in the
batch, or a batch that failed) comes back as None and the caller applies it alone: a failure
caused by one change (a value Postgres refuses) then fails only that webhook, and a sick
database answers each caller with its own error.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from service import metrics
from service.jobs.models import Job, JobChange
from service.jobs.status_machine import finish_many

log = logging.getLogger(__name__)

MAX_BATCH = 100
"""Jobs per statement at most: a bigger burst goes in several."""


class FinishBatches:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._gathering: dict[str, tuple[JobChange, asyncio.Future[Job | None]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        """Statements written (with `jobs`, what a test or a bench reads to see the batching)."""
        self.jobs = 0

    async def finish(self, request_id: str, change: JobChange) -> Job | None:
        """The job as `change` ended it, or None when this batch did not end it (see the module
        docstring): the caller then applies the change alone. `change` must pass
        `status_machine.can_finish_at_once`."""
        if request_id in self._gathering:
            return None  # a second delivery: alone, after (or against) the first
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._gathering[request_id] = (change, future)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="finish-batches")
        return await future

    async def _write(self) -> None:
        try:
            while self._gathering:
                batch = dict(list(self._gathering.items())[: self._max_batch])
                for request_id in batch:
                    del self._gathering[request_id]
                ended: dict[str, Job] = {}
                try:
                    async with self._pool.acquire() as connection:
                        ended = await finish_many(connection, {r: change for r, (change, _) in batch.items()})
                    self.batches += 1
                    self.jobs += len(batch)
                    metrics.finish_batch(len(batch))
                except Exception as error:
                    metrics.finish_batch(len(batch), failed=True)
                    log.warning("a batch of job ends failed; each is applied alone",
                                extra={"action": "jobs.finish_batch_failed", "jobs": len(batch),
                                       "error": type(error).__name__})
                finally:  # cancelled too: whoever waits gets an answer
                    for request_id, (_, future) in batch.items():
                        if not future.done():
                            future.set_result(ended.get(request_id))
        finally:
            self._writer = None
            # Cancelled (shutdown) with callers still waiting: they apply their changes alone.
            for _, future in self._gathering.values():
                if not future.done():
                    future.set_result(None)
            self._gathering.clear()
