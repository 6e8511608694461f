"""What every fan-out step starts from: the run's shared context, the service started afresh for
the step, users and pending jobs written through the service's own code, stream tokens, and the
warm-up that takes Litestar's and the JWKS fetch's first-time costs out of the measurement."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.fanout_http import WebhookSender
from bench.fanout_meters import XactCounter
from bench.fanout_sse import Round, SseHub, close_subscribers, open_subscribers
from bench.harness import BenchFailure, Service, start_service
from service.auth.api_keys import NewUser, create_user
from service.auth.stream_tokens import StreamTokens
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.jobs.models import NewJob
from service.jobs.status_machine import create_job

MODEL_ID = "fal-ai/flux/schnell"
JOB_INPUT = {"prompt": "a lighthouse at dusk, oil on canvas", "image_size": "landscape_4_3"}
SETUP_CONNECTIONS = 8
"""Connections the bench's own set-up writes (users, jobs) use at a time."""
ROUND_TIMEOUT_S = 15.0


@dataclass
class Context:
    server_dsn: str
    dsn: str
    database: str
    counter: XactCounter
    emulator: FalEmulator
    fal_key: str
    log_dir: Path
    deadline: float
    args: argparse.Namespace
    token_secret: str
    tokens: StreamTokens

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


async def serve(ctx: Context, name: str, *, profile: bool = False) -> Service:
    """The service for one step, with a stream-token secret the bench shares (it mints job tokens)."""
    return await start_service(ctx.dsn, ctx.emulator, ctx.fal_key, ctx.log_dir / f"service-{name}.log",
                               processes=ctx.args.processes, profile_path=ctx.args.profile_service if profile else None,
                               # Every subscriber of a user shares its key: the per-credential stream limit
                               # (MAX_STREAMS_PER_USER, 50 by default) would refuse the bench's 100 per user.
                               extra_env={"SSE_HEARTBEAT_S": "15", "STREAM_TOKEN_SECRET": ctx.token_secret,
                                          "MAX_STREAMS_PER_USER": "1000000"})


async def stream_token(service: Service, user: NewUser, request_id: str | None = None) -> str:
    body: dict[str, str] = {"scope": "user"} if request_id is None else {"scope": "job", "request_id": request_id}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{service.url}/api/stream-tokens", json=body,
                                     headers={"Authorization": f"Bearer {user.api_key}"})
        if response.status_code != 201:
            raise BenchFailure(f"POST /api/stream-tokens answered {response.status_code}: {response.text[:300]}")
        return response.json()["token"]


async def warm_up(ctx: Context, service: Service, user: NewUser, sender: WebhookSender, *, job_streams: bool) -> None:
    """The first webhook fetches the JWKS; the first streams and poll warm Litestar's lazy paths.
    With `job_streams`, each warm job also gets a job stream, with a token from POST /api/stream-tokens."""
    warm_ids = await create_jobs(ctx.dsn, user.user_id, 2)
    token = await stream_token(service, user)
    streams: list[tuple[str, str | None]] = [(f"/api/events?token={token}", None)] * 20
    if job_streams:
        for request_id in warm_ids:
            streams.append((f"/api/jobs/{request_id}/events?token={await stream_token(service, user, request_id)}",
                            request_id))
    hub = SseHub()
    clients = await open_subscribers(hub, service.port, streams, len(streams))
    try:
        loop = asyncio.get_running_loop()
        for request_id in warm_ids:
            watchers = sum(1 for _, watched in streams if watched in (None, request_id))
            hub.rounds[request_id] = round_ = Round(request_id, watchers, loop.create_future())
            await sender.send(sender.prepare(request_id), lambda s, n, r=round_: r.stamp(s, n))
            await asyncio.wait_for(round_.done, ROUND_TIMEOUT_S)
        if hub.failed:
            raise BenchFailure(f"warm-up: {hub.failed[0]}")
    finally:
        close_subscribers(clients)
    async with httpx.AsyncClient(timeout=10) as client:
        for request_id in warm_ids:
            response = await client.get(f"{service.url}/api/jobs/{request_id}",
                                        headers={"Authorization": f"Bearer {user.api_key}"})
            if response.status_code != 200 or response.json()["status"] != "completed":
                raise BenchFailure(f"warm-up job not completed: {response.status_code} {response.text[:200]}")
    sender.acks_ms.clear()


@contextlib.asynccontextmanager
async def setup_pool(dsn: str, size: int = 1) -> Any:
    """A pool for the bench's own writes (users, jobs), closed right after: a backend flushes its
    statistics when it exits, so these writes do not trickle into a later measurement window."""
    pool = await create_pool(dsn, min_size=size, max_size=size)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def new_user(dsn: str, prefix: str) -> NewUser:
    async with setup_pool(dsn) as pool:
        return await create_user(pool, f"{prefix}-{uuid.uuid4().hex[:8]}")


async def new_users(dsn: str, prefix: str, count: int) -> list[NewUser]:
    async with setup_pool(dsn) as pool:
        return [await create_user(pool, f"{prefix}-{uuid.uuid4().hex[:8]}") for _ in range(count)]


async def create_jobs(dsn: str, user_id: str, count: int) -> list[str]:
    return await create_owned_jobs(dsn, [user_id] * count)


async def create_owned_jobs(dsn: str, owners: Sequence[str]) -> list[str]:
    """One pending job per entry of `owners` (a user id), through the service's own create_job,
    over up to SETUP_CONNECTIONS connections at a time."""
    ids = [str(uuid.uuid4()) for _ in owners]
    work = list(zip(ids, owners, strict=True))
    size = max(1, min(SETUP_CONNECTIONS, len(work) // 50 or 1))

    async with setup_pool(dsn, size) as pool:
        async def chunk(part: Sequence[tuple[str, str]]) -> None:
            async with pool.acquire() as connection:
                for request_id, user_id in part:
                    await create_job(connection, NewJob(request_id=request_id, user_id=user_id, model_id=MODEL_ID,
                                                        type="image", input=JOB_INPUT, mode="webhook"))

        await asyncio.gather(*(chunk(work[i::size]) for i in range(size)))
    return ids
