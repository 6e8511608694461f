"""Waiting for a job to finish without polling: the seed's `waitForFalJob`, pushed.

The subscription is attached before the job is read, so a change that lands in between still
arrives; while waiting, no query runs: the listener's events wake the waiter.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

from service.errors import Unavailable
from service.jobs import queries
from service.jobs.models import Job
from service.realtime.events import JobEvent
from service.realtime.hub import Hub, Signal


async def wait_for_job(hub: Hub, pool: asyncpg.Pool, *, user_id: str, request_id: str, timeout_s: float) -> Job:
    """The job once terminal, or its latest known state when `timeout_s` runs out."""
    if not hub.ready:
        raise Unavailable("live updates are starting (the listener has not connected yet); retry shortly")
    subscription = hub.subscribe(user_id=user_id, request_id=request_id)
    try:
        job = await queries.get_job(pool, user_id, request_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not job.is_terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            item = await subscription.next(remaining)
            if isinstance(item, JobEvent):
                if item.version > job.version:
                    job = msgspec.json.decode(item.data, type=Job)
            elif item is Signal.RESYNC:
                subscription.resynced(hub.position)
                job = await queries.get_job(pool, user_id, request_id)
            elif item is Signal.CLOSED:
                break
        return job
    finally:
        hub.unsubscribe(subscription)
