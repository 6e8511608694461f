"""What jobs cost: fal's prices read from its Platform API (the emulator's) and kept for PRICING_TTL_S,
the cost each job carries on every representation, and budgets in money across processes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser
from service.auth.users import UserLimits, set_limits
from service.emulator import FalEmulator
from service.fal.gateway import FalGateway
from service.fal.pricing import RETRY_AFTER_FAILURE_S, PriceBook
from service.jobs import costs
from service.jobs.models import JobChange, LogLine, NewJob
from service.jobs.status_machine import apply_change, create_job
from tests.conftest import FAL_KEY, RunningServer, bearer, free_socket
from tests.processes import service_processes
from tests.sse import SseReader
from tests.test_fal_round_trip import wait_until_terminal

FLUX = "fal-ai/flux/dev"
SCHNELL = "fal-ai/flux/schnell"
KLING = "fal-ai/kling-video/v2.1/master/text-to-video"
MINIMAX = "fal-ai/minimax/video-01"
LONG = {"fal_emulator": {"queue_ms": 120_000}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_prices_are_read_from_fals_pricing_call_and_kept_for_the_ttl(fal: FalEmulator) -> None:
    gateway = FalGateway(key=FAL_KEY, queue_url=fal.base_url, api_url=fal.base_url)
    clock = Clock()
    book = PriceBook(gateway, (FLUX, KLING, "fal-ai/unpriced/model"), ttl_s=3600, clock=clock)
    try:
        reads = fal.pricing_reads
        flux = await book.price(FLUX)
        assert flux is not None and (flux.unit_price, flux.unit, flux.currency) == (0.025, "megapixels", "USD")
        assert fal.pricing_reads == reads + 1, "one call answers every allowed model"
        kling = await book.price(KLING)
        assert kling is not None and (kling.unit_price, kling.unit) == (0.28, "seconds")
        assert await book.price("fal-ai/unpriced/model") is None, "no price from fal: unknown, not a guess"
        clock.now += 3599
        await book.price(FLUX)
        assert fal.pricing_reads == reads + 1, "within the TTL, nothing is asked again"

        fal.prices[FLUX] = (0.03, "megapixels")
        clock.now += 2
        assert (flux := await book.price(FLUX)) is not None and flux.unit_price == 0.03
        assert fal.pricing_reads == reads + 2, "after the TTL, fal is asked again"

        fal.pricing_available = False
        clock.now += 3601
        assert (flux := await book.price(FLUX)) is not None and flux.unit_price == 0.03, "the last known price stands"
        assert fal.pricing_reads == reads + 3
        clock.now += RETRY_AFTER_FAILURE_S - 1
        await book.price(KLING)
        assert fal.pricing_reads == reads + 3, "a failed read is not retried by every submit"
        fal.pricing_available = True
        clock.now += 2
        await book.price(KLING)
        assert fal.pricing_reads == reads + 4
    finally:
        fal.pricing_available = True
        fal.prices[FLUX] = (0.025, "megapixels")
        await gateway.aclose()


async def test_prices_stand_when_fal_cannot_be_reached_at_all(fal: FalEmulator) -> None:
    closed = free_socket()  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    gateway = FalGateway(key=FAL_KEY, queue_url=url, api_url=url)
    try:
        assert await PriceBook(gateway, (FLUX,), ttl_s=60).price(FLUX) is None
    finally:
        closed.close()
        await gateway.aclose()


async def test_the_pricing_call_wants_fals_key(fal: FalEmulator, http: httpx.AsyncClient) -> None:
    answer = await http.get(f"{fal.base_url}/v1/models/pricing", params={"endpoint_id": FLUX})
    assert answer.status_code == 401
    answer = await http.get(f"{fal.base_url}/v1/models/pricing", params={"endpoint_id": f"{FLUX},{MINIMAX}"},
                            headers={"Authorization": f"Key {FAL_KEY}"})
    assert answer.status_code == 200
    assert answer.json() == {"prices": [
        {"endpoint_id": FLUX, "unit_price": 0.025, "unit": "megapixels", "currency": "USD"},
        {"endpoint_id": MINIMAX, "unit_price": 0.5, "unit": "videos", "currency": "USD"},
    ], "next_cursor": None, "has_more": False}


@pytest.mark.parametrize(("model_id", "model_input", "unit", "quantity"), [
    (FLUX, {}, "megapixel", 1),  # landscape_4_3: 1024×768, rounded up to 1 MP
    (FLUX, {"num_images": 2, "image_size": "square_hd"}, "megapixel", 4),  # 1.05 MP each: 2 each
    (SCHNELL, {"image_size": {"width": 2000, "height": 1000}}, "megapixel", 2),
    (KLING, {"duration": "10"}, "second", 10),
    (MINIMAX, {}, "video", 1),
])
def test_billed_units_asked_for_by_the_input(model_id: str, model_input: dict[str, Any], unit: str, quantity: int) -> None:
    assert costs.units_of_input(model_id, model_input)[unit] == quantity


async def test_the_status_machine_prices_a_jobs_end_on_both_of_its_paths(pool: asyncpg.Pool) -> None:
    """An end without logs (one statement, what webhooks bring) and one with logs (read, decide,
    write) both price the output: here 3 images of 1500×1000 (2 megapixels each) where 1 was estimated."""
    await pool.execute("INSERT INTO fal_users (id, name) VALUES ('u-costs', 'u-costs') ON CONFLICT DO NOTHING")
    estimate = costs.estimate(SCHNELL, {}, unit="megapixels", unit_price=0.003, currency="USD")
    output = {"images": [{"url": "https://v3.fal.media/files/x.png", "width": 1500, "height": 1000}] * 3}
    ends = [JobChange(status="completed", result=output),
            JobChange(status="completed", result=output, logs=[LogLine(message="done", timestamp="2026-12-05T12:00:00")])]
    for end in ends:
        async with pool.acquire() as connection:
            job = await create_job(connection, NewJob(request_id=str(uuid.uuid4()), user_id="u-costs", model_id=SCHNELL,
                                                      type="image", input={}, mode="webhook", cost=estimate))
            applied = await apply_change(connection, job.request_id, end)
        assert applied.accepted and applied.job is not None and applied.job.cost is not None
        assert (applied.job.cost.estimated, applied.job.cost.quantity, applied.job.cost.final) == (0.003, 6, 0.018)
        stored = await pool.fetchval("SELECT cost FROM fal_jobs WHERE request_id = $1", job.request_id)
        assert stored == msgspec.to_builtins(applied.job.cost)


async def post_job(http: httpx.AsyncClient, url: str, user: NewUser, model_id: str, model_input: dict[str, Any],
                   **extra: Any) -> httpx.Response:
    kind = "video" if model_id in (KLING, MINIMAX) else "image"
    return await http.post(f"{url}/api/jobs", headers=bearer(user),
                           json={"type": kind, "model_id": model_id, "input": {"prompt": "a fox", **model_input},
                                 **extra})


async def test_a_flux_image_costs_what_the_price_table_implies_on_every_representation(
    service: RunningServer, http: httpx.AsyncClient, user: NewUser,
) -> None:
    created = await post_job(http, service.url, user, FLUX, {"num_images": 2, "image_size": "square_hd",
                                                             "fal_emulator": {"queue_ms": 300}},
                             tags=["cost:flux"], metadata={"k": 1})
    assert created.status_code == 202, created.text
    # Two images of 1024×1024, each billed as 2 megapixels at $0.025.
    estimate = {"estimated": 0.1, "final": None, "unit": "megapixel", "quantity": 4, "unit_price": 0.025,
                "currency": "USD"}
    assert created.json()["cost"] == estimate
    assert (created.json()["tags"], created.json()["metadata"]) == (["cost:flux"], {"k": 1})
    request_id = created.json()["request_id"]
    async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events", bearer(user)) as events:
        _, snapshot = await events.next_job()
        assert snapshot["cost"]["estimated"] == 0.1 and snapshot["cost"]["unit_price"] == 0.025
        assert (snapshot["tags"], snapshot["metadata"]) == (["cost:flux"], {"k": 1})
        job = await wait_until_terminal(http, service.url, user, request_id)
        while snapshot["status"] != "completed":
            _, snapshot = await events.next_job()
    assert job["status"] == "completed"
    final = {**estimate, "final": 0.1}
    assert job["cost"] == final and snapshot["cost"] == final
    listed = (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).json()["jobs"]
    assert [j["cost"] for j in listed if j["request_id"] == request_id] == [final]
    by_tag = (await http.get(f"{service.url}/api/jobs", params={"tag": "cost:flux"}, headers=bearer(user))).json()
    assert [(j["request_id"], j["cost"], j["tags"]) for j in by_tag["jobs"]] == [(request_id, final, ["cost:flux"])]


async def test_a_kling_video_costs_its_seconds_and_a_failed_job_costs_nothing(
    service: RunningServer, http: httpx.AsyncClient, user: NewUser,
) -> None:
    video = await post_job(http, service.url, user, KLING, {"duration": "5"})
    assert video.status_code == 202, video.text
    assert video.json()["cost"]["estimated"] == 1.4
    job = await wait_until_terminal(http, service.url, user, video.json()["request_id"])
    # fal's Kling output names no duration: the 5 s asked for is what it bills.
    assert job["status"] == "completed"
    assert job["cost"] == {"estimated": 1.4, "final": 1.4, "unit": "second", "quantity": 5, "unit_price": 0.28,
                           "currency": "USD"}
    failed = await post_job(http, service.url, user, SCHNELL, {"fal_emulator": {"outcome": "error"}})
    job = await wait_until_terminal(http, service.url, user, failed.json()["request_id"])
    assert job["status"] == "failed"
    assert (job["cost"]["estimated"], job["cost"]["final"]) == (0.003, 0)


async def test_a_users_budget_refuses_what_it_does_not_cover_and_counts_final_costs(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    from service import metrics

    refusals = metrics.LIMIT_REFUSALS.labels("spend_per_day")._value.get()
    await set_limits(pool, user.name, UserLimits(max_spend_per_day=0.05))
    # A failed job reserves its estimate while it runs, then counts its final cost: nothing.
    failed = await post_job(http, service.url, user, FLUX, {"fal_emulator": {"outcome": "error"}})
    assert (await wait_until_terminal(http, service.url, user, failed.json()["request_id"]))["cost"]["final"] == 0
    for _ in range(2):
        assert (await post_job(http, service.url, user, FLUX, LONG)).status_code == 202
    submitted = len(fal.submissions)
    over = await post_job(http, service.url, user, FLUX, LONG)
    assert over.status_code == 429 and over.json()["error"] == "budget_exceeded", over.text
    assert 86000 < int(over.headers["retry-after"]) <= 86400, "the first job leaves the 24 h window in a day"
    assert len(fal.submissions) == submitted, "a refused create must not reach fal"
    assert metrics.LIMIT_REFUSALS.labels("spend_per_day")._value.get() == refusals + 1
    scraped = (await http.get(f"{service.url}/metrics")).text
    assert 'fal_jobs_limit_refusals_total{limit="spend_per_day"}' in scraped


async def test_two_processes_racing_keep_within_a_budget_and_send_nothing_more_to_fal(
    database_url: str, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser, tmp_path: Path,
) -> None:
    async with service_processes(database_url, fal, tmp_path, MAX_OPEN_JOBS_PER_USER="1000",
                                 MAX_JOBS_PER_MINUTE="1000", MAX_SPEND_PER_DAY="0.1") as processes:
        urls = [each.url for each in processes]
        marker = f"budget-{user.name}"
        answers = await asyncio.gather(*(
            http.post(f"{urls[i % 2]}/api/jobs", headers=bearer(user),
                      json={"type": "image", "model_id": FLUX, "input": {"prompt": f"{marker} {i}", **LONG}})
            for i in range(30)
        ))
        codes = [answer.status_code for answer in answers]
        # $0.1 covers exactly four images of 1 megapixel at $0.025.
        assert codes.count(202) == 4 and codes.count(429) == 26, codes
        refused = [a for a in answers if a.status_code == 429]
        assert {a.json()["error"] for a in refused} == {"budget_exceeded"}
        assert all(a.headers["retry-after"].isdigit() for a in refused)
        sent = [r for r in fal.submissions if r.request_id and
                fal.requests[r.request_id].input.get("prompt", "").startswith(marker)]
        assert len(sent) == 4, "a refused create must not reach fal"


def test_users_limits_sets_a_users_own_budget_and_list_shows_it(database_url: str) -> None:
    from tests.test_cli import cli

    name = f"spender-{uuid.uuid4().hex[:8]}"
    assert cli("users", "create", name, database_url=database_url).returncode == 0
    bad = cli("users", "limits", name, "--spend-per-day", "0", database_url=database_url)
    assert bad.returncode == 2 and "must be an amount above 0" in bad.stderr
    done = cli("users", "limits", name, "--spend-per-day", "2.5", database_url=database_url)
    assert done.returncode == 0, done.stderr
    listed = cli("users", "list", database_url=database_url)
    assert [line.split()[-1] for line in listed.stdout.splitlines() if line.startswith(name)] == ["-/-/-/2.5"]


class RollBack(Exception):
    """Undoes the test's rows: the shared test database is left as it was."""


async def test_the_migration_gives_older_events_a_null_cost(database_url: str, user: NewUser) -> None:
    """Events written before the costs migration get `cost: null`, as every later one has a cost:
    a stream that replays or snapshots an older job sends the same fields (tags and metadata too)."""
    import importlib

    migration = importlib.import_module("piccolo_migrations.fal_jobs_2026_12_05t12_00_00_000000_costs")
    # Later migrations build on `cost` (a generated column reads it): undone first, in the same transaction.
    later = importlib.import_module("piccolo_migrations.fal_jobs_2026_12_05t13_00_00_000000_delivery_log_and_admins")
    rollup = importlib.import_module("piccolo_migrations.fal_jobs_2026_12_05t14_00_00_000000_stats_rollup")
    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(RollBack):
            async with connection.transaction():
                await connection.execute(rollup.BACKWARDS_SQL)
                await connection.execute(later.BACKWARDS_SQL)
                await connection.execute(migration.BACKWARDS_SQL)
                await connection.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, tags) "
                                         "VALUES ('before-costs', $1, 'fal-ai/flux/dev', 'image', '{}', '{a}')",
                                         user.user_id)
                before = await connection.fetchval("SELECT data FROM fal_job_events WHERE request_id = 'before-costs'")
                assert "cost" not in msgspec.json.decode(before)
                await connection.execute(migration.FORWARDS_SQL)
                after = msgspec.json.decode(
                    await connection.fetchval("SELECT data FROM fal_job_events WHERE request_id = 'before-costs'"))
                assert (after["cost"], after["tags"], after["metadata"]) == (None, ["a"], {})
                raise RollBack
    finally:
        await connection.close()


def test_the_emulator_prices_every_model_allowed_by_default() -> None:
    """Else the local emulator (`run`) warns at every start that some jobs' cost is unknown."""
    from service.emulator.pricing_routes import EMULATED_PRICES
    from service.settings import DEFAULT_ALLOWED_MODELS

    assert set(DEFAULT_ALLOWED_MODELS) <= set(EMULATED_PRICES)
