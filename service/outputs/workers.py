"""Copy workers: every process runs some, and together they drain the outputs table.

A worker claims due rows with `FOR UPDATE SKIP LOCKED` in one short statement that stamps its
claim and a lease on them, then works without holding a transaction (a copy can take minutes and
an open transaction would hold back every snapshot's xmin, which the event listener's gap rule
reads). While copying it renews the lease; a process that dies stops renewing, its lease lapses,
and any process claims the row again. Each claim writes under a key of its own, so a late worker
whose claim was taken over removes its own bytes instead of clobbering the winner's: each file is
stored once. The outcome goes through the status machine (one event).

A failure that may pass is retried with backoff, on one of two budgets counted when a try fails
(a claim handed back at shutdown, a lapsed lease or a copy whose outcome could not be written
spends neither): a failure at fal's CDN (the source) up to `MAX_ATTEMPTS` tries, after which the
output is `failed` but `retryable` (the sweep re-drives it later); a failure at our store (an
outage, a full disk, expired credentials) for as long as fal keeps its copy, since the file is
not lost until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from service import metrics
from service.jobs import sql
from service.jobs.models import OutputChange, OutputSettled
from service.jobs.status_machine import apply_change
from service.outputs.copier import Copier, CopyRetry
from service.settings import FAL_MEDIA_LIFETIME_S

if TYPE_CHECKING:
    import asyncpg

    from service.outputs.store import MediaStore
    from service.realtime.events import JobEvent

log = logging.getLogger(__name__)

DB_TIMEOUT_S = 10.0
SAFETY_POLL_S = 30.0
"""Work is found when a completion's event arrives (any process's, through the listener), and at
the time the next row falls due (a retry, a lapsed lease); this slow poll is the safety net."""
MAX_ATTEMPTS = 8
"""Tries that fail at the source before the output is `failed` (retryable)."""
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0
STORE_RETRY_MAX_S = 300.0
"""The default longest wait between tries that failed at the store (OUTPUT_STORE_RETRY_MAX_S)."""
FORGET_TIMEOUT_S = 2.0
"""Checking, after a failed write of an outcome, whether the row took the key (then it is kept)."""


class DueOutput(msgspec.Struct, frozen=True):
    request_id: str
    index: int
    kind: str
    source_url: str
    status: str
    store_key: str | None
    attempts: int
    """Tries that failed at the source."""
    store_failures: int
    fal_copy_alive: bool
    """fal still keeps its copy, as far as we know (FAL_MEDIA_EXPIRY_S, else its least)."""




def object_key(request_id: str, index: int, claim: str) -> str:
    return f"outputs/{request_id}/{index}-{claim}"


def backoff_s(failures: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    return min(cap_s, base_s * 2 ** max(failures - 1, 0))


class OutputWorkers:
    def __init__(
        self, pool: asyncpg.Pool, store: MediaStore, copier: Copier, *,
        concurrency: int, lease_s: float = 60.0, poll_s: float = SAFETY_POLL_S,
        fal_copy_lifetime_s: float = FAL_MEDIA_LIFETIME_S, store_retry_max_s: float = STORE_RETRY_MAX_S,
        backoff_base_s: float = BACKOFF_BASE_S, max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._pool = pool
        self._store = store
        self._copier = copier
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._fal_copy_lifetime_s = fal_copy_lifetime_s
        self._store_retry_max_s = store_retry_max_s
        self._backoff_base_s = backoff_base_s
        self._max_attempts = max_attempts
        self._running: dict[asyncio.Task[None], tuple[str, int, str]] = {}
        self._wake = asyncio.Event()
        self._next_due: float | None = None

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def on_event(self, event: JobEvent) -> None:
        """A hub observer: a job event with outputs still pending means copy work (or a retry's
        bookkeeping elsewhere; claiming finds nothing then, at the cost of one query)."""
        if event.outputs_pending:
            self._wake.set()

    def _due_in(self, delay_s: float) -> None:
        due = time.monotonic() + delay_s
        self._next_due = due if self._next_due is None else min(self._next_due, due)

    async def run_forever(self) -> None:
        failures = 0
        while True:
            free = self._concurrency - len(self._running)
            if free > 0:
                try:
                    claimed = await self._claim(free)
                    for row in claimed:
                        self._start(row)
                    if len(claimed) < free:
                        await self._learn_next_due()
                    failures = 0
                except Exception:
                    failures += 1
                    log.warning("claiming outputs failed", exc_info=True, extra={"action": "outputs.claim"})
            self._wake.clear()
            timeout = self._poll_s if not failures else min(self._poll_s, 2.0**failures)
            if self._next_due is not None:
                timeout = min(timeout, max(0.0, self._next_due - time.monotonic()))
            # The wake-up and the copies: tasks of different result types (Task is invariant in it).
            woken: asyncio.Task[Any] = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({woken, *self._running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled too (shutdown): the wake-up's own task must not outlive the loop
                woken.cancel()
            if self._next_due is not None and self._next_due <= time.monotonic():
                self._next_due = None

    async def aclose(self) -> None:
        """Stop copying and hand the claims back, so another process takes them at once."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        claims = list(self._running.values())
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if claims:
            try:
                await self._pool.execute(
                    sql.RELEASE_CLAIMS, [c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims], timeout=5,
                )
            except Exception:
                log.warning("could not release output claims; their leases lapse", exc_info=True,
                            extra={"action": "outputs.release"})

    async def _claim(self, limit: int) -> list[tuple[DueOutput, str]]:
        claim = secrets.token_hex(8)
        rows = await self._pool.fetch(sql.CLAIM_OUTPUTS, claim, self._lease_s, limit, float(self._fal_copy_lifetime_s),
                                      timeout=DB_TIMEOUT_S)
        return [(msgspec.convert(dict(row), DueOutput), claim) for row in rows]

    async def _learn_next_due(self) -> None:
        """When the next row not due yet will be: a retry another process scheduled, or a claim
        whose lease lapses (its process died). Woken then, not by polling."""
        seconds = await self._pool.fetchval(sql.NEXT_OUTPUT_DUE_IN_S, timeout=DB_TIMEOUT_S)
        if seconds is not None:
            self._due_in(max(0.0, float(seconds)) + 0.05)

    def _start(self, claimed: tuple[DueOutput, str]) -> None:
        row, claim = claimed
        task = asyncio.create_task(self._work(row, claim), name=f"output {row.request_id}/{row.index}")
        self._running[task] = (row.request_id, row.index, claim)
        task.add_done_callback(self._running.pop)

    async def _work(self, row: DueOutput, claim: str) -> None:
        renewing = asyncio.create_task(self._renew(row, claim))
        try:
            if row.status == "deleted":
                await self._purge(row, claim)
            else:
                await self._copy(row, claim)
        except asyncio.CancelledError:
            raise
        except Exception:
            # One bad row never stops the others; its lease lapses and it is tried again.
            log.exception("output work failed", extra={"action": "outputs.work", "request_id": row.request_id,
                                                        "index": row.index})
        finally:
            renewing.cancel()

    async def _renew(self, row: DueOutput, claim: str) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            with contextlib.suppress(Exception):
                await self._pool.execute(
                    sql.RENEW_LEASE, row.request_id, row.index, claim, self._lease_s, timeout=DB_TIMEOUT_S,
                )

    async def _copy(self, row: DueOutput, claim: str) -> None:
        key = object_key(row.request_id, row.index, claim)
        try:
            change = await self._copier.copy(row.source_url, row.kind, key)
        except CopyRetry as retry:
            given_up = await self._retry_or_give_up(row, claim, retry)
            if given_up is None:
                return
            change = given_up
        try:
            async with self._pool.acquire(timeout=DB_TIMEOUT_S) as connection:
                applied = await apply_change(connection, row.request_id,
                                             OutputSettled(index=row.index, outcome=change, claim=claim))
        except BaseException:
            if change.status == "stored":
                await self._forget_unrecorded(row, key)
            raise
        if change.status == "stored" and not applied.accepted:
            # Deleted meanwhile, or our lease lapsed and another claim took the row over.
            await self._store.delete(key)
        log.info("output %s", change.status if applied.accepted else "dropped",
                 extra={"action": "outputs.copy", "request_id": row.request_id, "index": row.index,
                        "size": change.size, "error": change.error})

    async def _retry_or_give_up(self, row: DueOutput, claim: str, retry: CopyRetry) -> OutputChange | None:
        """Schedule the next try on the budget the failure belongs to; the failed outcome once
        that budget is spent (None: a try is scheduled)."""
        if retry.store:
            failures = row.store_failures + 1
            if row.fal_copy_alive:
                delay = backoff_s(failures, base_s=self._backoff_base_s, cap_s=self._store_retry_max_s)
                await self._retry_later(row, claim, str(retry), delay, store_failures=failures)
                return None
            # fal's copy is gone by now (as far as we know): another try would find nothing.
            return OutputChange(status="failed",
                                error=f"the store failed {failures} times until fal's copy expired: {retry}")
        attempts = row.attempts + 1
        if attempts < self._max_attempts:
            delay = backoff_s(attempts, base_s=self._backoff_base_s)
            await self._retry_later(row, claim, str(retry), delay, attempts=attempts)
            return None
        return OutputChange(status="failed", error=f"gave up after {attempts} attempts: {retry}", retryable=True)

    async def _forget_unrecorded(self, row: DueOutput, key: str) -> None:
        """The outcome of a stored copy could not be written (the database is unavailable, a
        time-out, shutdown): remove its bytes, which no row names, unless the write did commit
        after all (its reply was lost). When that cannot be told, the key stays for `outputs gc`."""
        try:
            async with asyncio.timeout(FORGET_TIMEOUT_S):
                recorded = await self._pool.fetchval(
                    sql.OUTPUT_STORE_KEY, row.request_id, row.index, timeout=FORGET_TIMEOUT_S,
                )
                if recorded != key:
                    await self._store.delete(key)
                    metrics.output_orphan_removed("copy")
        except Exception as error:
            log.warning("a copy's bytes stay in the store unrecorded; `outputs gc` removes them",
                        extra={"action": "outputs.forget", "request_id": row.request_id, "index": row.index,
                               "key": key, "error": type(error).__name__})

    async def _retry_later(self, row: DueOutput, claim: str, error: str, delay: float, *,
                           attempts: int | None = None, store_failures: int | None = None) -> None:
        self._due_in(delay + 0.05)
        metrics.output_copy_retry("store" if store_failures is not None else "source")
        await self._pool.execute(
            sql.RETRY_OUTPUT_LATER, row.request_id, row.index, claim, error, timedelta(seconds=delay), attempts, store_failures,
            timeout=DB_TIMEOUT_S,
        )
        log.info("output copy will be retried", extra={"action": "outputs.retry", "request_id": row.request_id,
                                                        "index": row.index, "in_s": delay, "error": error})

    async def _purge(self, row: DueOutput, claim: str) -> None:
        if row.store_key is not None:  # claimed for that reason
            await self._store.delete(row.store_key)
        await self._pool.execute(
            sql.FORGET_STORE_KEY, row.request_id, row.index, claim, timeout=DB_TIMEOUT_S,
        )
