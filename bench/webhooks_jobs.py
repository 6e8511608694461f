"""The webhook bench's jobs: pending ones bulk-created per phase, the check that a phase completed
every one of them exactly once, and the switch of the NOTIFY trigger."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.harness import BenchFailure

TRIGGER = "fal_job_events_notify"
MODEL_ID = "fal-ai/flux/dev"
JOB_INPUT = {"prompt": "a lighthouse at dusk, bench", "image_size": "landscape_4_3"}
# No media URL: this measures the webhook's intake. A URL would add an output row and, for a host
# outside MEDIA_HOSTS, a "failed" output event per job: the copy path has bench/outputs.py.
PAYLOAD = {
    "images": [{"width": 1024, "height": 768, "content_type": "image/png"}],
    "seed": 196619188014358660,
}


@dataclass
class Database:
    server_dsn: str
    dsn: str
    name: str
    embedded: Any = None  # the pgserver handle, when we started one


@dataclass
class JobBlock:
    """Pending jobs made for one phase."""

    request_ids: list[str]
    user_id: str
    created_at: datetime


async def create_jobs(pool: asyncpg.Pool, sizes: dict[str, int]) -> dict[str, JobBlock]:
    """Bulk-create pending jobs (version 1), as create_job would; the table's trigger writes their
    first events."""
    blocks: dict[str, JobBlock] = {}
    job_rows: list[tuple[Any, ...]] = []
    now = datetime.now(UTC)
    for name, size in sizes.items():
        user_id = str(uuid.uuid4())
        ids = [str(uuid.uuid4()) for _ in range(size)]
        blocks[name] = JobBlock(ids, user_id, now)
        job_rows.extend((request_id, user_id, MODEL_ID, "image", JOB_INPUT, "webhook", now) for request_id in ids)
    async with pool.acquire() as connection, connection.transaction():
        await connection.executemany("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", [(block.user_id,) for block in blocks.values()])
        await connection.executemany(
            "INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, mode, version, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, 1, $7, $7)",
            job_rows,
        )
    return blocks


async def check_completed(pool: asyncpg.Pool, block: JobBlock, what: str) -> str:
    ids = block.request_ids
    row = await pool.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM fal_jobs WHERE request_id = ANY($1::text[])) AS jobs,
          (SELECT count(*) FROM fal_jobs WHERE request_id = ANY($1::text[])
              AND status = 'completed' AND version = 2 AND result IS NOT NULL) AS completed_v2,
          (SELECT count(*) FROM fal_job_events WHERE request_id = ANY($1::text[])) AS events,
          (SELECT count(*) FROM (SELECT request_id FROM fal_job_events WHERE request_id = ANY($1::text[])
              GROUP BY request_id HAVING count(*) = 2 AND max(version) = 2
                  AND bool_or(status = 'completed')) AS t) AS jobs_with_2_events
        """,
        ids,
    )
    n = len(ids)
    ok = row["jobs"] == n and row["completed_v2"] == n and row["events"] == 2 * n and row["jobs_with_2_events"] == n
    line = (f"check {what}: {row['completed_v2']}/{n} jobs completed at version 2, "
            f"{row['jobs_with_2_events']}/{n} with exactly 2 events ({row['events']} events)")
    if not ok:
        raise BenchFailure("FAILED " + line)
    return "OK    " + line


async def set_trigger(pool: asyncpg.Pool, enabled: bool) -> None:
    await pool.execute(f"ALTER TABLE fal_job_events {'ENABLE' if enabled else 'DISABLE'} TRIGGER {TRIGGER}")
