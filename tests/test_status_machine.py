"""The status machine: its pure rules, and the transaction that applies them on the real Postgres."""

from __future__ import annotations

import asyncio
import inspect
import random
import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.db.pool import init_connection
from service.jobs import sql, status_machine
from service.jobs.models import Deletion, Job, JobChange, LogLine, NewJob, OutputChange, OutputSettled
from service.jobs.rows import JOB_COLUMNS, job_from_row
from service.jobs.status_machine import _read_decide_write, apply_change, create_job, decide, finish_many
from tests.conftest import scratch_database

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(**fields: object) -> Job:
    base = dict(
        request_id="r1", user_id="u1", model_id="fal-ai/flux/dev", type="image", input={}, status="pending",
        queue_position=None, logs=None, result=None, error=None, error_type=None, mode="webhook", version=1,
        created_at=NOW, updated_at=NOW, completed_at=None,
    )
    base.update(fields)
    return Job(**base)  # type: ignore[arg-type]


def logs(n: int) -> list[LogLine]:
    return [LogLine(message=f"step {i}", timestamp=f"2026-01-01T00:00:{i:02d}") for i in range(n)]


class TestDecide:
    def test_pending_may_go_to_in_progress_or_straight_to_terminal(self) -> None:
        assert decide(job(), JobChange(status="in_progress"), NOW) == {"status": "in_progress", "queue_position": None, "logs": None}
        done = decide(job(), JobChange(status="completed", result={"seed": 2**60}), NOW)
        assert done is not None and done["status"] == "completed" and done["result"] == {"seed": 2**60}
        assert done["completed_at"] == NOW

    @pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
    @pytest.mark.parametrize("offered", ["pending", "in_progress", "completed", "failed", "cancelled"])
    def test_terminal_states_are_final(self, terminal: str, offered: str) -> None:
        assert decide(job(status=terminal), JobChange(status=offered, queue_position=0, logs=logs(3)), NOW) is None  # type: ignore[arg-type]

    def test_queue_position_only_moves_forward(self) -> None:
        assert decide(job(), JobChange(status="pending", queue_position=5), NOW) == {"queue_position": 5}
        assert decide(job(queue_position=5), JobChange(status="pending", queue_position=3), NOW) == {"queue_position": 3}
        assert decide(job(queue_position=3), JobChange(status="pending", queue_position=5), NOW) is None
        assert decide(job(queue_position=3), JobChange(status="pending", queue_position=3), NOW) is None
        assert decide(job(status="in_progress"), JobChange(status="pending", queue_position=0), NOW) is None

    def test_logs_only_move_forward_and_keep_a_tail(self) -> None:
        running = job(status="in_progress", logs=logs(2))
        assert decide(running, JobChange(status="in_progress", logs=logs(2)), NOW) is None
        assert decide(running, JobChange(status="in_progress", logs=logs(1)), NOW) is None
        update = decide(running, JobChange(status="in_progress", logs=logs(30)), NOW)
        assert update is not None and len(update["logs"]) == 20 and update["logs"][-1].message == "step 29"

    def test_a_late_in_progress_after_completion_is_ignored(self) -> None:
        assert decide(job(status="completed"), JobChange(status="in_progress"), NOW) is None


async def new_job(pool: asyncpg.Pool, user_id: str = "u-test") -> Job:
    await pool.execute("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", user_id)  # jobs reference a user
    async with pool.acquire() as connection:
        return await create_job(
            connection,
            NewJob(request_id=str(uuid.uuid4()), user_id=user_id, model_id="fal-ai/flux/dev", type="image",
                   input={"prompt": "a fox"}, mode="webhook"),
        )


async def events_of(pool: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT version, status, data FROM fal_job_events WHERE request_id = $1 ORDER BY id", request_id)


async def test_create_writes_version_one_and_one_event(pool: asyncpg.Pool) -> None:
    created = await new_job(pool)
    assert (created.status, created.version) == ("pending", 1)
    events = await events_of(pool, created.request_id)
    assert [(e["version"], e["status"]) for e in events] == [(1, "pending")]
    assert events[0]["data"]["request_id"] == created.request_id


async def test_apply_bumps_version_appends_one_event_and_duplicates_are_no_ops(pool: asyncpg.Pool) -> None:
    created = await new_job(pool)
    seed = 196619188014358660
    async with pool.acquire() as connection:
        first = await apply_change(connection, created.request_id, JobChange(status="completed", result={"seed": seed}))
        again = await apply_change(connection, created.request_id, JobChange(status="completed", result={"seed": 1}))
        late = await apply_change(connection, created.request_id, JobChange(status="in_progress"))
    assert first.accepted and first.job is not None and first.job.version == 2
    assert not again.accepted and again.job == first.job
    assert not late.accepted and late.job is not None and late.job.status == "completed"
    events = await events_of(pool, created.request_id)
    assert [(e["version"], e["status"]) for e in events] == [(1, "pending"), (2, "completed")]
    assert events[1]["data"]["result"]["seed"] == seed  # exact: beyond 2^53
    row = await pool.fetchrow("SELECT version, result, completed_at FROM fal_jobs WHERE request_id = $1", created.request_id)
    assert row["version"] == 2 and row["result"] == {"seed": seed} and row["completed_at"] is not None


async def test_unknown_job_is_reported_not_created(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        outcome = await apply_change(connection, "no-such-job", JobChange(status="completed"))
    assert outcome.job is None and not outcome.accepted
    assert await pool.fetchval("SELECT count(*) FROM fal_job_events WHERE request_id = 'no-such-job'") == 0



def test_the_status_machine_has_three_doors() -> None:
    """Create a job, apply a change, finish many: nothing else in the module writes a job, so a
    new caller has one door per operation and no twin to pick wrongly."""
    doors = {name for name, value in vars(status_machine).items()
             if not name.startswith("_") and inspect.iscoroutinefunction(value)}
    assert doors == {"create_job", "apply_change", "finish_many"}
    assert set(status_machine.__all__) == doors | {"Applied", "decide"}


async def event_text_is_the_job(pool: asyncpg.Pool, job: Job | None) -> None:
    """The event of the job's version is the job as msgspec writes it, byte for byte."""
    assert job is not None
    stored, expected = await pool.fetchrow(
        "SELECT data::text, $2::jsonb::text FROM fal_job_events WHERE request_id = $1 AND version = $3",
        job.request_id, job, job.version)
    assert stored == expected


async def test_every_kind_of_change_writes_one_event_that_is_the_job(pool: asyncpg.Pool) -> None:
    """A creation, fal's news (read-decide-write and the one-statement end), an output settled and
    a deletion: each writes exactly one event, and its text is the job the door returned."""
    created = await new_job(pool)
    await event_text_is_the_job(pool, created)
    request_id = created.request_id
    async with pool.acquire() as connection:
        running = await apply_change(connection, request_id, JobChange(status="in_progress", logs=logs(3)))
        await event_text_is_the_job(pool, running.job)
        ended = await apply_change(connection, request_id, ENDS[0])
        await event_text_is_the_job(pool, ended.job)
        # A service of the session may run copy workers on this database: hold the output as a
        # worker would, so that none of theirs claims it first.
        await connection.execute(
            "UPDATE fal_job_outputs SET claim = 'test', lease_until = now() + interval '1 hour', "
            "next_attempt_at = now() + interval '1 hour' WHERE request_id = $1", request_id)
        settled = await apply_change(connection, request_id, OutputSettled(
            index=1, outcome=OutputChange(status="failed", error="not an image\x00"), claim="test"))
        await event_text_is_the_job(pool, settled.job)
        deleted = await apply_change(connection, request_id, Deletion(user_id=created.user_id))
        await event_text_is_the_job(pool, deleted.job)
        again = await apply_change(connection, request_id, Deletion(user_id=created.user_id))
        stranger = await apply_change(connection, request_id, Deletion(user_id="someone-else"))
    assert settled.accepted and settled.job is not None
    assert [o.status for o in settled.job.outputs] == ["pending", "failed"]
    assert settled.job.outputs[1].error == "not an image\\u0000"
    assert deleted.accepted and deleted.job is not None and deleted.job.status == "deleted"
    assert not again.accepted and stranger.job is None
    events = await events_of(pool, request_id)
    assert [(e["version"], e["status"]) for e in events] == [
        (1, "pending"), (2, "in_progress"), (3, "completed"), (4, "completed"), (5, "deleted")]


async def test_a_new_version_written_by_any_statement_gets_its_event(pool: asyncpg.Pool) -> None:
    """The event is written by the table, not by each code path: a statement that gives a job a
    new version gets its event (the row after it), one that leaves the version alone gets none."""
    created = await new_job(pool)
    await pool.execute("UPDATE fal_jobs SET counts_open_until = now() WHERE request_id = $1", created.request_id)
    await pool.execute("UPDATE fal_jobs SET queue_position = 3, version = 2, updated_at = $2 WHERE request_id = $1",
                       created.request_id, NOW)
    row = await pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1", created.request_id)
    events = await events_of(pool, created.request_id)
    assert [(e["version"], e["status"]) for e in events] == [(1, "pending"), (2, "pending")]
    assert events[1]["data"]["queue_position"] == 3 and "counts_open_until" not in events[1]["data"]
    await event_text_is_the_job(pool, job_from_row(row))


ENDS = [
    JobChange(status="completed", result={"seed": 196619188014358660, "images": [
        {"url": "https://v3.fal.media/files/a.png", "content_type": "image/png"},
        {"url": "https://v3.fal.media/files/b.png"}]}),
    JobChange(status="failed", error="Invalid status code: 422", error_type="validation", result={"detail": []}),
    JobChange(status="cancelled", error="cancelled by the user"),
]


@pytest.mark.parametrize("end", ENDS, ids=["completed", "failed", "cancelled"])
@pytest.mark.parametrize("created_at", ["2026-03-04 05:06:07.000891+00", "2026-03-04 05:06:07+00"])
async def test_an_end_in_one_round_trip_writes_the_event_the_two_round_trips_would(
    pool: asyncpg.Pool, end: JobChange, created_at: str,
) -> None:
    """`apply_change` ends an open job in one statement (`_finish`); `_read_decide_write` reads,
    decides and writes the row. Both end with the same row, and the trigger's event is the job
    after the change as msgspec writes it (timestamps included, with and without a fraction)."""
    fast, slow = await new_job(pool), await new_job(pool)
    async with pool.acquire() as connection:
        for twin in (fast, slow):  # the same past: running, logs, a created_at of each form
            await connection.execute("UPDATE fal_jobs SET created_at = $2::text::timestamptz WHERE request_id = $1",
                                     twin.request_id, created_at)
            await apply_change(connection, twin.request_id, JobChange(status="in_progress", logs=logs(2)))
        ended = await apply_change(connection, fast.request_id, end)
        ended_slowly = await _read_decide_write(connection, slow.request_id, end)
    for applied in (ended, ended_slowly):
        assert applied.accepted and applied.job is not None and applied.job.version == 3
        row = await pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1", applied.job.request_id)
        assert job_from_row(row) == applied.job
        stored, expected = await pool.fetchrow(
            "SELECT data::text, $2::jsonb::text FROM fal_job_events WHERE request_id = $1 AND version = 3",
            applied.job.request_id, applied.job)
        assert stored == expected
    assert ended.job is not None and ended_slowly.job is not None
    same = {"request_id", "updated_at", "completed_at", "outputs"}
    assert {k: v for k, v in msgspec.structs.asdict(ended.job).items() if k not in same} == \
        {k: v for k, v in msgspec.structs.asdict(ended_slowly.job).items() if k not in same}
    assert [(o.index, o.kind, o.status) for o in ended.job.outputs] == [(o.index, o.kind, o.status) for o in ended_slowly.job.outputs]
    queued = await pool.fetch("SELECT index, kind, source_url FROM fal_job_outputs WHERE request_id = $1 ORDER BY index",
                              fast.request_id)
    assert [tuple(r) for r in queued] == [(i, "image", image["url"]) for i, image in enumerate(
        end.result["images"] if end.status == "completed" else [])]
    async with pool.acquire() as connection:  # ended: the same end again is a duplicate, no event
        again = await apply_change(connection, fast.request_id, end)
    assert not again.accepted and again.job == ended.job
    assert len(await events_of(pool, fast.request_id)) == 3


async def test_ends_written_together_are_each_what_apply_change_writes(pool: asyncpg.Pool) -> None:
    """`finish_many` (the webhooks' batches) ends each open job as `apply_change` does, in one
    statement: the same row, the same event text, the outputs queued; a job that is not open (ended
    already, or no row) is left out of its answer, untouched."""
    twins = [(await new_job(pool), await new_job(pool)) for _ in ENDS]
    ended_before = await new_job(pool)
    async with pool.acquire() as connection:
        await apply_change(connection, ended_before.request_id, JobChange(status="cancelled"))
        for twin in (job for pair in twins for job in pair):
            await apply_change(connection, twin.request_id, JobChange(status="in_progress", logs=logs(2)))
        alone = [await apply_change(connection, one.request_id, end) for (one, _), end in zip(twins, ENDS, strict=True)]
        changes = {batched.request_id: end for (_, batched), end in zip(twins, ENDS, strict=True)}
        changes[ended_before.request_id] = JobChange(status="completed", result={"seed": 1})
        changes["no-such-job"] = JobChange(status="failed", error="boom")
        together = await finish_many(connection, changes)
    assert set(together) == {batched.request_id for _, batched in twins}, "only the open jobs are ended"
    for (one, batched), applied in zip(twins, alone, strict=True):
        job = together[batched.request_id]
        assert applied.job is not None and job.version == applied.job.version == 3
        row = await pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM fal_jobs WHERE request_id = $1", batched.request_id)
        assert job_from_row(row) == job
        stored, expected = await pool.fetchrow(
            "SELECT data::text, $2::jsonb::text FROM fal_job_events WHERE request_id = $1 AND version = 3",
            batched.request_id, job)
        assert stored == expected
        same = {"request_id", "created_at", "updated_at", "completed_at", "outputs"}
        assert {k: v for k, v in msgspec.structs.asdict(job).items() if k not in same} == \
            {k: v for k, v in msgspec.structs.asdict(applied.job).items() if k not in same}
        queued = await pool.fetch("SELECT index, kind, source_url FROM fal_job_outputs WHERE request_id = $1 "
                                  "ORDER BY index", batched.request_id)
        alone_queued = await pool.fetch("SELECT index, kind, source_url FROM fal_job_outputs WHERE request_id = $1 "
                                        "ORDER BY index", one.request_id)
        assert [tuple(r) for r in queued] == [tuple(r) for r in alone_queued]
        assert [o.url for o in job.outputs] == [f"/api/jobs/{batched.request_id}/outputs/{o.index}" for o in job.outputs]
    untouched = await events_of(pool, ended_before.request_id)
    assert [e["status"] for e in untouched] == ["pending", "cancelled"]
    with pytest.raises(ValueError, match="terminal changes without logs"):
        async with pool.acquire() as connection:
            await finish_many(connection, {"x": JobChange(status="in_progress")})


async def test_ends_written_together_find_their_rows_by_index_not_by_scanning(server_dsn: str) -> None:
    """Joined only to a function's rows, the planner scanned the whole table for every batch (2.5 ms
    at 20,000 jobs, growing with the table); the ids as an array give it the primary key. In a
    database of its own: 20,000 jobs would be every other test's neighbours."""
    async with scratch_database(server_dsn) as dsn:
        connection = await asyncpg.connect(dsn)
        try:
            await init_connection(connection)
            await _plan_uses_the_index(connection)
        finally:
            await connection.close()


async def _plan_uses_the_index(connection: asyncpg.Connection) -> None:
    await connection.execute("INSERT INTO fal_users (id, name) VALUES ('u-plan', 'u-plan') ON CONFLICT DO NOTHING")
    await connection.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, status) "
                       "SELECT 'plan-' || g, 'u-plan', 'm', 'image', CASE WHEN g % 2 = 0 THEN 'completed' ELSE 'pending' END "
                       "FROM generate_series(1, 20000) g ON CONFLICT DO NOTHING")
    await connection.execute("ANALYZE fal_jobs")
    rows = [{"request_id": "plan-7", "status": "completed", "result": None, "error": None, "error_type": None,
             "outputs": None}]
    plan = await connection.fetchval("EXPLAIN (FORMAT JSON) " + sql.FINISH_MANY, rows, NOW, [], ["plan-7"])

    def scans(node: dict) -> list[tuple[str, str | None]]:
        found = [(node["Node Type"], node.get("Relation Name"))]
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    nodes = scans(plan[0]["Plan"])
    assert ("Seq Scan", "fal_jobs") not in nodes, nodes
    assert ("Index Scan", "fal_jobs") in nodes, nodes


# A job's true history, as fal would report it: queue positions counting down, growing logs, one end.
history_strategy = st.builds(
    lambda positions, n_logs, end: (
        [JobChange(status="pending", queue_position=p) for p in sorted(set(positions), reverse=True)]
        + [JobChange(status="in_progress", logs=logs(i)) for i in range(1, n_logs + 1)]
        + [end]
    ),
    st.lists(st.integers(min_value=0, max_value=9), max_size=4),
    st.integers(min_value=0, max_value=3),
    st.sampled_from([
        JobChange(status="completed", result={"seed": 196619188014358660, "images": []}),
        JobChange(status="failed", error="Invalid status code: 422", error_type="validation"),
        JobChange(status="cancelled"),
    ]),
)


async def check_invariants(pool: asyncpg.Pool, request_id: str, history: list[JobChange], accepted: int) -> None:
    final = await pool.fetchrow("SELECT status, version, result, error FROM fal_jobs WHERE request_id = $1", request_id)
    end = history[-1]
    assert final["status"] == end.status
    assert final["result"] == end.result and final["error"] == end.error
    events = await events_of(pool, request_id)
    versions = [e["version"] for e in events]
    assert versions == list(range(1, len(events) + 1)), "versions contiguous, in commit order"
    assert len(events) == accepted + 1 == final["version"], "exactly one event per accepted change"
    assert events[-1]["status"] == end.status
    assert sum(1 for e in events if e["status"] in ("completed", "failed", "cancelled")) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=history_strategy, data=st.data())
async def test_shuffled_duplicated_deliveries_in_one_connection(pool: asyncpg.Pool, history: list[JobChange], data: st.DataObject) -> None:
    created = await new_job(pool)
    deliveries = [change for change in history for _ in range(data.draw(st.integers(1, 3)))]
    deliveries = data.draw(st.permutations(deliveries))
    # The terminal change must arrive at least once after shuffling; it always does, it is in the list.
    accepted = 0
    async with pool.acquire() as connection:
        for change in deliveries:
            accepted += (await apply_change(connection, created.request_id, change)).accepted
    await check_invariants(pool, created.request_id, history, accepted)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=history_strategy, seed=st.integers(0, 2**32))
async def test_eight_concurrent_appliers_on_separate_connections(
    pool: asyncpg.Pool, database_url: str, history: list[JobChange], seed: int
) -> None:
    created = await new_job(pool)
    rng = random.Random(seed)
    deliveries = [change for change in history for _ in range(rng.randint(1, 4))]
    rng.shuffle(deliveries)
    appliers = 8
    connections = [await asyncpg.connect(database_url) for _ in range(appliers)]
    try:
        for connection in connections:
            await init_connection(connection)
        start = asyncio.Event()

        async def applier(index: int) -> int:
            await start.wait()
            count = 0
            for change in deliveries[index::appliers]:
                count += (await apply_change(connections[index], created.request_id, change)).accepted
            return count

        tasks = [asyncio.create_task(applier(i)) for i in range(appliers)]
        start.set()
        accepted = sum(await asyncio.gather(*tasks))
    finally:
        for connection in connections:
            await connection.close()
    await check_invariants(pool, created.request_id, history, accepted)
