"""Following jobs through fal's status stream: queue position and progress (fal sends no webhook for
those), and, for jobs submitted without a webhook, their completion too.

Each follower holds one long-lived HTTP stream to fal, so a process follows at most
`max_followers` jobs at once; the rest wait their turn in FIFO order. A job that waits is not
lost: webhook jobs still complete through their webhook, and the reconciliation sweep asks fal
about every job that stays open past its deadline. When the stream fails, the follower falls back
to status polls with capped exponential backoff, then tries the stream again.

A job cancelled while fal ran it is followed on until fal ends it (fal may let the runner finish):
until then it counts against the open-jobs limit (see `reservations.hold_after_cancel`), and its
end, whatever it is, only frees that slot; the job stays `cancelled`.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import asyncpg
import msgspec

from service import metrics
from service.errors import DatabaseUnavailable
from service.fal.gateway import FalGateway, FalRequestFailed, FalStatus, sleep_backoff, was_cancelled
from service.jobs import reservations
from service.jobs.models import JobChange, JobMode
from service.jobs.status_machine import apply_change
from service.usecases.fal_news import change_from_status, completion_change

log = logging.getLogger(__name__)


class FollowTarget(msgspec.Struct, frozen=True):
    request_id: str
    model_id: str
    mode: JobMode


class JobFollower:
    def __init__(self, pool: asyncpg.Pool, gateway: FalGateway, *, max_followers: int = 200, give_up_after_s: float = 3600) -> None:
        self._pool = pool
        self._gateway = gateway
        self._max = max_followers
        self._give_up_after_s = give_up_after_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._waiting: collections.OrderedDict[str, FollowTarget] = collections.OrderedDict()
        self._awaiting_end: set[str] = set()
        """Followed jobs found cancelled while fal still runs them: only fal's end matters now."""
        self._closed = False

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def is_following(self, request_id: str) -> bool:
        return request_id in self._running or request_id in self._waiting

    def is_streaming(self, request_id: str) -> bool:
        """Followed right now (a job waiting for a slot is not: the sweep still checks it)."""
        return request_id in self._running

    def streaming_ids(self) -> list[str]:
        """The request ids followed right now (the sweep leaves them out)."""
        return list(self._running)

    def follow(self, target: FollowTarget) -> None:
        if self._closed or self.is_following(target.request_id):
            return
        if len(self._running) < self._max:
            self._start(target)
        else:
            self._waiting[target.request_id] = target
        metrics.followers(self.active, self.waiting)

    def _start(self, target: FollowTarget) -> None:
        task = asyncio.create_task(self._follow(target), name=f"follow:{target.request_id}")
        self._running[target.request_id] = task
        task.add_done_callback(lambda _: self._finished(target.request_id))

    def _finished(self, request_id: str) -> None:
        self._running.pop(request_id, None)
        self._awaiting_end.discard(request_id)
        while self._waiting and len(self._running) < self._max and not self._closed:
            _, target = self._waiting.popitem(last=False)
            self._start(target)
        metrics.followers(self.active, self.waiting)

    async def aclose(self) -> None:
        self._closed = True
        self._waiting.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, target: FollowTarget) -> None:
        try:
            # The deadline bounds the whole follow, an open stream included: a job that fal keeps
            # open past it would otherwise hold a follower slot forever, and the sweep skips it.
            async with asyncio.timeout(self._give_up_after_s):
                await self._follow_until_done(target)
        except TimeoutError:
            log.warning("gave up following a job; the sweep settles it", extra={"request_id": target.request_id})

    async def _follow_until_done(self, target: FollowTarget) -> None:
        attempt = 0
        try:
            while True:
                try:
                    async for status in self._gateway.stream_status(target.model_id, target.request_id):
                        if await self._take(target, status):
                            return
                        attempt = 0  # only once fal's news was applied: a failing database backs off
                    # The stream ended without COMPLETED: ask once, then stream again.
                    if await self._take(target, await self._gateway.status(target.model_id, target.request_id)):
                        return
                except FalRequestFailed as failure:
                    if failure.status_code == 404:
                        log.warning("fal does not know a followed job; the sweep settles it", extra={"request_id": target.request_id})
                        return
                    await self._poll_once(target)
                except (DatabaseUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.info("follow interrupted; retrying", extra={"request_id": target.request_id, "error": type(error).__name__})
                except Exception as error:  # httpx errors and the like: poll, back off, stream again
                    log.info("status stream failed; polling", extra={"request_id": target.request_id, "error": type(error).__name__})
                    if await self._poll_once(target):
                        return
                await sleep_backoff(attempt)
                attempt += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("follower crashed", extra={"request_id": target.request_id})

    async def _poll_once(self, target: FollowTarget) -> bool:
        try:
            return await self._take(target, await self._gateway.status(target.model_id, target.request_id))
        except Exception as error:
            log.info("status poll failed", extra={"request_id": target.request_id, "error": type(error).__name__})
            return False

    async def _take(self, target: FollowTarget, status: FalStatus) -> bool:
        """Apply what fal said; True when there is nothing more to follow."""
        if target.request_id in self._awaiting_end:
            return await self._take_end(target, status)
        change: JobChange | None = change_from_status(status)
        if change is None:
            if target.mode == "webhook" and not was_cancelled(status.error, None):
                return True  # the webhook carries the result (fal sends none for a cancelled request)
            change = await completion_change(self._gateway, target.model_id, target.request_id, status)
        async with self._pool.acquire() as connection:
            applied = await apply_change(connection, target.request_id, change)
            # Cancelled (here, or in another process) while fal ran it: follow on to fal's end.
            awaits_end = (applied.job is not None and not applied.accepted
                          and applied.job.status in ("cancelled", "deleted")
                          and await reservations.awaits_fal_end(connection, target.request_id))
        if awaits_end:
            self._awaiting_end.add(target.request_id)
            return await self._take_end(target, status)
        return status.status == "COMPLETED" or (applied.job is not None and applied.job.is_terminal)

    def await_end(self, target: FollowTarget) -> None:
        """Follow a job just cancelled while fal ran it until fal ends it (see the module docstring)."""
        if not self._closed:
            self._awaiting_end.add(target.request_id)
            self.follow(target)

    async def _take_end(self, target: FollowTarget, status: FalStatus) -> bool:
        """For a job cancelled while fal ran it: True once fal says it ended (its slot is then free)."""
        if status.status != "COMPLETED":
            return False
        async with self._pool.acquire() as connection:
            await reservations.fal_ended(connection, target.request_id)
        return True
