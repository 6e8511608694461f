"""POST /api/webhooks/fal over real HTTP: signatures (Ed25519 against the emulator's JWKS), what is
applied, what is refused, and that a refusal is something fal retries."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY

from service.emulator import FalEmulator
from service.emulator.signing import SigningKey, signed_headers
from service.errors import DatabaseUnavailable
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import Applied, create_job
from service.usecases.receive_webhook import FalWebhook
from tests.conftest import RunningServer, fal_settings, serve

HEADERS = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp", "x-fal-webhook-signature")


async def open_job(pool: asyncpg.Pool, request_id: str | None = None) -> str:
    request_id = request_id or str(uuid.uuid4())
    await pool.execute("INSERT INTO fal_users (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", "webhook-tests")  # jobs reference a user
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id="webhook-tests", model_id="fal-ai/flux/dev",
                                            type="image", input={}, mode="webhook"))
    return request_id


def webhook(request_id: str, **fields: Any) -> bytes:
    body = {"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
            "payload": {"images": [], "seed": 196619188014358660}, **fields}
    return msgspec.json.encode(body)


def signed(key: SigningKey, request_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    return signed_headers(key, request_id=request_id, user_id="fal-user", timestamp=timestamp or int(time.time()), body=body)


async def post(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await http.post(f"{url}/api/webhooks/fal", content=body, headers={**headers, "content-type": "application/json"})


async def test_valid_signature_applies_and_a_duplicate_is_acked(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    request_id = await open_job(pool)
    body = webhook(request_id)
    first = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
    assert first.status_code == 200 and first.json() == {"request_id": request_id, "outcome": "applied"}
    again = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    row = await pool.fetchrow("SELECT status, result FROM fal_jobs WHERE request_id = $1", request_id)
    assert row["status"] == "completed" and row["result"]["seed"] == 196619188014358660


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "signature"),
        ("tampered", "signature"),
        ("stale", "stale"),
        ("future", "future"),
        ("bad_hex", "hex"),
    ],
)
async def test_bad_signatures_are_401_with_a_reason_and_change_nothing(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, case: str, reason: str
) -> None:
    request_id = await open_job(pool)
    body = webhook(request_id)
    key = SigningKey.generate() if case == "forged" else fal.keyset.current
    timestamp = {"stale": int(time.time()) - 301, "future": int(time.time()) + 301}.get(case)
    headers = signed(key, request_id, body, timestamp=timestamp)
    if case == "tampered":
        body = webhook(request_id, payload={"images": [], "seed": 1})
    if case == "bad_hex":
        headers["X-Fal-Webhook-Signature"] = "zz" * 64
    response = await post(http, service.url, body, headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "not_authenticated" and reason in response.json()["message"]
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "pending"


@pytest.mark.parametrize("missing", HEADERS)
async def test_each_missing_header_is_named(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, missing: str) -> None:
    request_id = await open_job(pool)
    body = webhook(request_id)
    headers = {name: value for name, value in signed(fal.keyset.current, request_id, body).items() if name.lower() != missing}
    response = await post(http, service.url, body, headers)
    assert response.status_code == 401 and missing in response.json()["message"]


async def test_a_body_for_another_request_than_the_signed_one_is_400(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    request_id = await open_job(pool)
    body = webhook(str(uuid.uuid4()))
    response = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
    assert response.status_code == 400 and "request_id" in response.json()["message"]


async def test_signed_garbage_is_400_not_500(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    body = b'{"request_id": 5'
    response = await post(http, service.url, body, signed(fal.keyset.current, "r", body))
    assert response.status_code == 400 and response.json()["message"].startswith("body: not a fal webhook")


async def test_key_rotation_is_picked_up_from_the_jwks(database_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """A fresh emulator and service: fal rolls its key, the service refetches the JWKS once."""
    from service.app import create_app
    from tests.conftest import FAL_KEY

    holder: dict[str, FalEmulator] = {}

    def build_fal(url: str) -> object:
        from service.emulator import create_emulator_app

        holder["fal"] = FalEmulator(url, FAL_KEY)
        return create_emulator_app(holder["fal"])

    fal_server = await serve(build_fal)
    emulator = holder["fal"]
    service = await serve(lambda url: create_app(fal_settings(database_url, emulator, url)))
    try:
        old_key = emulator.keyset.current
        emulator.rotate_key(keep_old=False)
        request_id = await open_job(pool)
        body = webhook(request_id)
        response = await post(http, service.url, body, signed(emulator.keyset.current, request_id, body))
        assert response.status_code == 200, response.text
        stale_key = await post(http, service.url, body, signed(old_key, request_id, body))
        assert stale_key.status_code == 401, "a key dropped from the JWKS no longer verifies"
    finally:
        await service.stop()
        await fal_server.stop()


async def test_a_database_outage_answers_503_so_fal_retries(fal: FalEmulator, http: httpx.AsyncClient) -> None:
    """A Postgres of its own, stopped under the running service: the webhook is refused with 503."""
    import tempfile

    import pgserver

    from service.app import create_app
    from service.db.migrations import apply_migrations

    server = pgserver.get_server(tempfile.mkdtemp(prefix="fal-jobs-outage-"), cleanup_mode="delete")
    dsn = server.get_uri()
    apply_migrations(dsn)
    service = await serve(lambda url: create_app(fal_settings(dsn, fal, url)))
    failed_batches = REGISTRY.get_sample_value("fal_jobs_finish_batch_failures_total") or 0
    try:
        server.cleanup()  # Postgres goes away
        request_id = str(uuid.uuid4())
        body = webhook(request_id)
        response = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable" and response.headers["retry-after"]
        # Its batch met the outage and answered for it at once (not once more alone).
        assert REGISTRY.get_sample_value("fal_jobs_finish_batch_failures_total") == failed_batches + 1
    finally:
        await service.stop()


async def test_a_repeated_early_webhook_is_parked_once(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    request_id = str(uuid.uuid4())  # no job row (yet)
    body = webhook(request_id)
    for _ in range(3):
        response = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
        assert response.status_code == 200 and response.json()["outcome"] == "parked"
    assert await pool.fetchval("SELECT count(*) FROM fal_early_webhooks WHERE request_id = $1", request_id) == 1


async def test_a_burst_is_written_in_batches_and_each_job_ends_once(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """Webhooks arriving together share one statement (`FinishBatches`); the answers are what
    they would be one by one: each job applied once, repeated deliveries duplicates, a webhook
    before its job parked, a failure recorded as one."""
    jobs = [await open_job(pool) for _ in range(40)]
    failing = await open_job(pool)
    early = str(uuid.uuid4())  # no row
    bodies = {request_id: webhook(request_id) for request_id in [*jobs, early]}
    bodies[failing] = webhook(failing, status="ERROR", error="Invalid status code: 422", payload={"detail": []})
    deliveries = [*bodies.items(), *((request_id, bodies[request_id]) for request_id in jobs[:10])]  # 10 twice
    finishes = service.app.state.webhooks._intake._finishes
    batches_before, jobs_before = finishes.batches, finishes.jobs
    answers = await asyncio.gather(*(post(http, service.url, body, signed(fal.keyset.current, request_id, body))
                                     for request_id, body in deliveries))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200]
    outcomes: dict[str, list[str]] = {}
    for answer in answers:
        outcomes.setdefault(answer.json()["request_id"], []).append(answer.json()["outcome"])
    assert outcomes[early] == ["parked"]
    for request_id in [*jobs, failing]:
        assert sorted(outcomes[request_id]) == ["applied"] + ["duplicate"] * (len(outcomes[request_id]) - 1), request_id
    rows = await pool.fetch("SELECT j.request_id, j.status, j.version, count(e.id) AS events FROM fal_jobs j "
                            "JOIN fal_job_events e USING (request_id) WHERE j.request_id = ANY($1) "
                            "GROUP BY j.request_id, j.status, j.version", [*jobs, failing])
    assert {(r["request_id"], r["status"], r["version"], r["events"]) for r in rows} == \
        {*((r, "completed", 2, 2) for r in jobs), (failing, "failed", 2, 2)}
    assert finishes.jobs - jobs_before > finishes.batches - batches_before, "at least one statement ended several jobs"


async def test_a_batch_stuck_on_a_row_lock_does_not_hold_the_other_webhooks(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """One job's row held by a long transaction stalls the batch that ends it until the lock
    time-out (1 s); a webhook for another job, gathered behind that batch, then goes in the next
    batch and is applied while the row is still held. The stuck job's webhook is applied alone,
    waits for its row once more, and answers 503 (fal retries)."""
    stuck, other = await open_job(pool), await open_job(pool)
    bodies = {request_id: webhook(request_id) for request_id in (stuck, other)}

    def deliver(request_id: str) -> Any:
        return asyncio.create_task(post(http, service.url, bodies[request_id],
                                        signed(fal.keyset.current, request_id, bodies[request_id])))

    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM fal_jobs WHERE request_id = $1 FOR UPDATE", stuck)
        stuck_answer = deliver(stuck)
        await asyncio.sleep(0.2)  # its batch is at the database, waiting for the row
        other_answer = await asyncio.wait_for(deliver(other), 10)
        assert not stuck_answer.done(), "the stuck job's webhook waits for its row"
        assert other_answer.status_code == 200 and other_answer.json()["outcome"] == "applied", other_answer.text
        first = await stuck_answer
        await transaction.rollback()
    assert first.status_code == 503 and first.headers["retry-after"], first.text
    again = await post(http, service.url, bodies[stuck], signed(fal.keyset.current, stuck, bodies[stuck]))
    assert again.status_code == 200 and again.json()["outcome"] == "applied", again.text
    assert await pool.fetchval("SELECT count(*) FROM fal_job_events WHERE request_id = $1", other) == 2


async def test_a_job_sharing_the_stuck_batch_with_a_held_row_completes_while_the_row_is_held(
    service: RunningServer, database_url: str, pool: asyncpg.Pool,
) -> None:
    """`other` is in the same batch as the held job and sorts before it, so the batch locks
    `other`'s row and then waits for the held one. At the lock time-out the statement ends on the
    server, which frees `other`'s row, and `other` is applied alone while the row is still held;
    only the held job's webhook answers 503. Given up on by the client only, the statement kept
    `other`'s row locked, and `other`'s own write waited for it and failed too."""
    intake = service.app.state.intake
    stuck = await open_job(pool, f"z-{uuid.uuid4()}")
    other = await open_job(pool, f"a-{uuid.uuid4()}")  # sorts first: the batch locks it first
    failed_before = REGISTRY.get_sample_value("fal_jobs_finish_batch_failures_total") or 0
    holder = await asyncpg.connect(database_url, server_settings={"application_name": "webhook-test"})
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM fal_jobs WHERE request_id = $1 FOR UPDATE", stuck)
        # Both reach the batch in one turn of the loop, before its writer runs: one statement.
        stuck_answer, other_answer = await asyncio.wait_for(asyncio.gather(
            intake.receive(msgspec.json.decode(webhook(stuck), type=FalWebhook)),
            intake.receive(msgspec.json.decode(webhook(other), type=FalWebhook)),
            return_exceptions=True,
        ), 30)
        assert REGISTRY.get_sample_value("fal_jobs_finish_batch_failures_total") == failed_before + 1
        assert isinstance(other_answer, Applied) and other_answer.accepted, repr(other_answer)
        assert isinstance(stuck_answer, DatabaseUnavailable) and "lock" in stuck_answer.message, repr(stuck_answer)
        assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", other) == "completed"
        await transaction.rollback()
    finally:
        await holder.close()
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", stuck) == "pending"


async def test_a_job_found_held_answers_503_at_once_and_stalls_no_later_batch(database_url: str, pool: asyncpg.Pool) -> None:
    """Once a batch has met the held row, fal's retries of that job are refused at once while the
    row is still held (asked without waiting), and the jobs gathered with a retry are written in
    a batch of their own that does not wait the lock time-out; once the row is free, the job's
    next delivery goes through."""
    from service.jobs.finish_batches import FinishBatches

    held, first, later = await open_job(pool), await open_job(pool), await open_job(pool)
    finishes = FinishBatches(pool)
    change = JobChange(status="completed", result={"images": []})
    holder = await asyncpg.connect(database_url, server_settings={"application_name": "webhook-test"})
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM fal_jobs WHERE request_id = $1 FOR UPDATE", held)
        # The first batch meets the held row: both go alone (None); `first` is applied alone.
        assert await asyncio.gather(finishes.finish(held, change), finishes.finish(first, change)) == [None, None]
        assert (finishes.batches, finishes.jobs) == (0, 0)
        # fal retries `held` while `later` arrives: `held` is refused without a batch.
        retried, ended = await asyncio.gather(finishes.finish(held, change), finishes.finish(later, change),
                                              return_exceptions=True)
        assert isinstance(retried, DatabaseUnavailable) and "held" in retried.message, repr(retried)
        assert ended is not None and not isinstance(ended, BaseException) and ended.request_id == later, repr(ended)
        assert (finishes.batches, finishes.jobs) == (1, 1)
        await transaction.rollback()
    finally:
        await holder.close()
    assert await finishes.finish(held, change) is None  # free: it goes alone, and the alone path ends it


async def test_each_caller_is_answered_by_its_own_batch_and_a_second_delivery_goes_alone(pool: asyncpg.Pool) -> None:
    """Two deliveries of one job and one of another, gathered together: the batch ends both jobs
    and answers the first delivery of each with its job; the second delivery of the same job is
    not in the batch (None: it applies alone, and finds the job ended). Were the second to take
    the first's place in the batch, the first would wait for an answer no batch gives."""
    from service.jobs.finish_batches import FinishBatches

    first, second = await open_job(pool), await open_job(pool)
    finishes = FinishBatches(pool)
    change = JobChange(status="completed", result={"images": []})
    answers = await asyncio.wait_for(asyncio.gather(
        finishes.finish(first, change), finishes.finish(first, change), finishes.finish(second, change),
    ), 30)
    assert [None if job is None else (job.request_id, job.status) for job in answers] == \
        [(first, "completed"), None, (second, "completed")]
    assert (finishes.batches, finishes.jobs) == (1, 2)


async def test_a_batch_waiting_for_a_busy_pool_is_written_once_not_again_alone(database_url: str, pool: asyncpg.Pool) -> None:
    """Every pooled connection is busy for a while (here the one connection, for 1.5 s): the batch
    waits for one and is then written, one statement for all. A give-up timer counted from when
    the webhooks joined sent each of them to the database again alone, in the middle of the very
    contention that held the batch back."""
    from service.db.pool import create_pool
    from service.jobs.finish_batches import FinishBatches

    jobs = [await open_job(pool) for _ in range(5)]
    busy = await create_pool(database_url, max_size=1, acquire_timeout_s=30)
    finishes = FinishBatches(busy)
    change = JobChange(status="completed", result={"images": []})
    try:
        async with busy.acquire() as connection:
            waiting = [asyncio.create_task(finishes.finish(request_id, change)) for request_id in jobs]
            await connection.execute("SELECT pg_sleep(1.5)")
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    finally:
        await busy.close()
    assert [None if job is None else job.request_id for job in answers] == jobs
    assert (finishes.batches, finishes.jobs) == (1, len(jobs))


async def test_an_oversized_webhook_is_413(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    request_id = str(uuid.uuid4())
    body = webhook(request_id, payload={"blob": "x" * (1024 * 1024)})
    response = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


async def test_an_oversized_webhook_without_a_length_is_413_too(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    request_id = str(uuid.uuid4())
    body = webhook(request_id, payload={"blob": "x" * (1024 * 1024)})

    async def chunked() -> Any:  # no Content-Length: the limit holds while the body streams in
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    response = await http.post(f"{service.url}/api/webhooks/fal", content=chunked(),
                               headers={**signed(fal.keyset.current, request_id, body), "content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_only_post_is_taken_and_options_says_so(service: RunningServer, http: httpx.AsyncClient, method: str) -> None:
    response = await http.request(method, f"{service.url}/api/webhooks/fal")
    assert response.status_code == 405, response.text
    assert response.json()["error"] == "method_not_allowed" and response.headers["allow"] == "OPTIONS, POST"
    assert response.headers["x-request-id"] and response.headers["x-content-type-options"] == "nosniff"
    options = await http.options(f"{service.url}/api/webhooks/fal")
    assert options.status_code == 204 and options.headers["allow"] == "OPTIONS, POST"


async def test_a_websocket_handshake_is_refused(service: RunningServer) -> None:
    """An ASGI route is offered WebSocket handshakes too: the webhook never accepts one."""
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /api/webhooks/fal HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 403"), status_line
