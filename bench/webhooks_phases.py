"""The webhook bench's measured phases on one block of pending jobs each: the service over HTTP,
the raw database floor (UPDATE + INSERT per job on plain asyncpg), and the service's own intake
code without HTTP or signatures."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench.harness import BenchFailure, Service
from bench.webhooks_jobs import PAYLOAD, JobBlock
from bench.webhooks_load import PHASE_TIMEOUT_S, Post, fire_webhooks, run_workers, sign_webhooks
from bench.webhooks_measures import CpuSnapshot, CpuUse, Result, postgres_pids
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.usecases.receive_webhook import FalWebhook, WebhookIntake

RAW_CONCURRENCIES = (4, 8, 16)
SERVICE_POOL_SIZE = 10  # service.db.pool.create_pool's default max_size, which the service uses


async def service_phase(post: Post, service: Service, emulator: FalEmulator, block: JobBlock,
                        concurrency: int, trigger: str, pg: asyncpg.Pool, ncpu: int) -> Result:
    prepared = sign_webhooks(emulator, block.request_ids)
    pids = await postgres_pids(pg)
    before = CpuSnapshot.take(service, pids)
    wall, latencies = await fire_webhooks(post, prepared, concurrency)
    after = CpuSnapshot.take(service, pids)
    return Result("service POST /api/webhooks/fal", trigger, len(prepared), wall, latencies,
                  CpuUse.between(before, after, ncpu))


_RAW_UPDATE = ("UPDATE fal_jobs SET status = 'completed', result = $2, version = version + 1, "
               "updated_at = now(), completed_at = now() WHERE request_id = $1")


async def raw_phase(dsn: str, block: JobBlock, warmup: JobBlock, connections: int, trigger: str,
                    pg: asyncpg.Pool, ncpu: int) -> Result:
    """Per job one statement: UPDATE fal_jobs (its trigger writes the event), on `connections` connections."""
    pool = await create_pool(dsn, min_size=connections, max_size=connections)
    try:
        held = [await pool.acquire() for _ in range(connections)]
        try:
            async def run(target: JobBlock) -> tuple[float, list[float]]:
                latencies: list[float] = []
                queue = iter(range(len(target.request_ids)))

                async def worker(connection: asyncpg.Connection) -> None:
                    for i in queue:
                        request_id = target.request_ids[i]
                        started = time.perf_counter()
                        await connection.execute(_RAW_UPDATE, request_id, PAYLOAD)
                        latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.wait_for(asyncio.gather(*(worker(c) for c in held)), timeout=PHASE_TIMEOUT_S)
                return time.perf_counter() - started, latencies

            await run(warmup)  # prepares the statements on every connection
            pids = await postgres_pids(pg)
            before = CpuSnapshot.take(None, pids)
            wall, latencies = await run(block)
            after = CpuSnapshot.take(None, pids)
        finally:
            for connection in held:
                await pool.release(connection)
    finally:
        await pool.close()
    return Result(f"raw asyncpg UPDATE+INSERT (C={connections})", trigger, len(block.request_ids), wall,
                  latencies, CpuUse.between(before, after, ncpu))


async def intake_phase(dsn: str, block: JobBlock, warmup: JobBlock, concurrency: int, trigger: str,
                       pg: asyncpg.Pool, ncpu: int) -> Result:
    """The service's WebhookIntake.receive, in this process, without HTTP or signatures."""
    pool = await create_pool(dsn, min_size=SERVICE_POOL_SIZE, max_size=SERVICE_POOL_SIZE)
    try:
        intake = WebhookIntake(pool, gateway=None)  # type: ignore[arg-type]  # only used for payload_error

        async def run(target: JobBlock) -> tuple[float, list[float]]:
            latencies: list[float] = []
            failures: list[str] = []

            async def one(i: int) -> None:
                request_id = target.request_ids[i]
                webhook = FalWebhook(request_id=request_id, gateway_request_id=request_id, status="OK",
                                     payload=PAYLOAD)
                started = time.perf_counter()
                applied = await intake.receive(webhook)
                latencies.append(time.perf_counter() - started)
                if applied is None or not applied.accepted:
                    failures.append(request_id)

            wall = await run_workers(len(target.request_ids), concurrency, one)
            if failures:
                raise BenchFailure(f"intake: {len(failures)} webhooks not applied")
            return wall, latencies

        await run(warmup)
        pids = await postgres_pids(pg)
        before = CpuSnapshot.take(None, pids)
        wall, latencies = await run(block)
        after = CpuSnapshot.take(None, pids)
    finally:
        await pool.close()
    return Result(f"service intake, no HTTP (pool {SERVICE_POOL_SIZE})", trigger, len(block.request_ids), wall,
                  latencies, CpuUse.between(before, after, ncpu))

