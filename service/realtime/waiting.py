"""Waiting for a job to finish without polling: the seed's `waitForFalJob`, pushed.

The subscription is attached before the job is read, so a change that lands in between still
arrives; while waiting, no query runs: the listener's events wake the waiter. At the deadline the
job is read once more, so the answer is never staler than the database. Without a connected
listener nothing would wake the waiter, so the call answers 503 at once instead. A revoked
credential ends the wait at once (its ticket's `close`), and then nothing is read for it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from service import metrics
from service.errors import NotAuthenticated, Unavailable
from service.jobs import queries
from service.jobs.models import Job
from service.realtime.events import JobEvent
from service.realtime.hub import Hub, Late, Signal

if TYPE_CHECKING:
    import asyncpg

    from service.realtime.admission import Ticket


async def wait_for_job(hub: Hub, pool: asyncpg.Pool, *, user_id: str, request_id: str, timeout_s: float,
                       ticket: Ticket) -> Job:
    """The job once terminal, or its latest known state when `timeout_s` runs out; NotAuthenticated
    when the credential behind `ticket` is revoked meanwhile."""
    if not hub.ready or not hub.live:
        raise Unavailable("live updates are down (the listener is reconnecting to the database); retry shortly")
    subscription = hub.subscribe(user_id=user_id, request_id=request_id)
    ticket.close = subscription.close
    metrics.WAITING_REQUESTS.inc()
    try:
        job = await queries.get_job(pool, user_id, request_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not job.is_terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            item = await subscription.next(remaining)
            if isinstance(item, Late):
                item = item.event
            if isinstance(item, JobEvent):
                if item.version > job.version:
                    job = msgspec.json.decode(item.data, type=Job)
            elif item is Signal.RESYNC:
                subscription.resynced(hub.position)
                job = await queries.get_job(pool, user_id, request_id)
            elif item is Signal.CLOSED:
                break
        if ticket.revoked:
            raise NotAuthenticated("authorization: the key or session was revoked while this request waited")
        if not job.is_terminal:
            job = await queries.get_job(pool, user_id, request_id)  # the deadline: the freshest state
        return job
    finally:
        metrics.WAITING_REQUESTS.dec()
        hub.unsubscribe(subscription)
