"""The operator's console in Chromium against the real service, emulator and Postgres: an admin
filters every user's jobs by model and status (and the CSV link carries that filter), opens a
job's timeline, and watches another user's job change live; a non-admin gets a 404."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx

from service.auth.api_keys import create_user
from service.auth.users import set_admin
from service.emulator import FalEmulator
from tests.browser.test_accessibility import axe_violations
from tests.browser.test_page import HELD, expect_
from tests.conftest import RunningServer, bearer
from tests.test_admin import insert_job


async def open_console(signed_in: Any, pool: asyncpg.Pool, service: RunningServer) -> Any:
    session = await signed_in()
    await set_admin(pool, session.user.name, True)
    page = session.page
    response = await page.goto(f"{service.url}/admin")
    assert response.status == 200
    await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    return session


def row(page: Any, request_id: str) -> Any:
    return page.locator(f'[data-testid="job-row"][data-request-id="{request_id}"]')


async def shown_ids(page: Any) -> list[str]:
    return await page.get_by_test_id("job-row").evaluate_all("rows => rows.map(r => r.dataset.requestId)")


async def filter_by(page: Any, **fields: str) -> None:
    for name, value in fields.items():
        field = page.get_by_test_id(f"filter-{name}")
        if name == "status":
            await field.select_option(value)
        else:
            await field.fill(value)
    async with page.expect_response(lambda r: "/api/admin/jobs?" in r.url):
        await page.get_by_test_id("apply-filters").click()


async def test_an_admin_filters_every_users_jobs_and_the_csv_matches(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool) -> None:
    session = await open_console(signed_in, pool, service)
    page = session.page
    alice = await create_user(pool, f"alice-{uuid.uuid4().hex[:8]}")
    bob = await create_user(pool, f"bob-{uuid.uuid4().hex[:8]}")
    model, other_model = f"test/console-{uuid.uuid4().hex[:8]}", f"test/other-{uuid.uuid4().hex[:8]}"
    done_a = await insert_job(pool, alice, model=model, prompt="a red fox")
    failed = await insert_job(pool, bob, model=model, status="failed", error="NSFW content detected", final=0)
    done_b = await insert_job(pool, bob, model=model, prompt="a blue whale")
    await insert_job(pool, alice, model=other_model)

    await filter_by(page, model=model)
    await expect_(page.get_by_test_id("job-row")).to_have_count(3)
    assert await shown_ids(page) == [done_b, failed, done_a], "newest first, only the model asked for"
    await expect_(row(page, failed).get_by_test_id("row-text")).to_have_text("NSFW content detected")
    await expect_(row(page, done_a).get_by_test_id("row-user")).to_have_text(alice.name)
    await expect_(row(page, done_a).get_by_test_id("row-cost")).to_have_text("$0.01")

    await filter_by(page, status="completed")
    await expect_(page.get_by_test_id("job-row")).to_have_count(2)
    assert await shown_ids(page) == [done_b, done_a]
    for status in await page.get_by_test_id("row-status").all_text_contents():
        assert status == "completed"
    assert parse_qs(urlsplit(page.url).query) == {"status": ["completed"], "model": [model]}, "a view to bookmark"

    # The CSV link carries the very filter the table shows, and its rows are the table's.
    href = await page.get_by_test_id("csv-link").get_attribute("href")
    assert urlsplit(href).path == "/api/admin/jobs.csv"
    assert parse_qs(urlsplit(href).query) == {"status": ["completed"], "model": [model]}
    download = await page.request.get(f"{service.url}{href}")  # the page's own session cookie
    assert download.status == 200
    rows = list(csv.DictReader(io.StringIO(await download.text())))
    assert [r["request_id"] for r in rows] == await shown_ids(page)
    assert {(r["model_id"], r["status"]) for r in rows} == {(model, "completed")}

    # A filter the server refuses says why, and Clear brings every job back.
    await filter_by(page, since="yesterday")
    await expect_(page.get_by_test_id("console-error")).to_contain_text("since:")
    session.console_errors[:] = [e for e in session.console_errors if "400 (Bad Request)" not in e]  # Chromium's log of it
    async with page.expect_response(lambda r: "/api/admin/jobs?" in r.url):
        await page.get_by_test_id("clear-filters").click()
    await expect_(page.get_by_test_id("console-error")).to_be_hidden()
    assert (await page.get_by_test_id("csv-link").get_attribute("href")) == "/api/admin/jobs.csv"
    await expect_(row(page, done_a)).to_be_visible()


async def test_an_admin_opens_a_jobs_timeline_and_reads_the_figures(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    page = (await open_console(signed_in, pool, service)).page
    someone = await create_user(pool, f"carol-{uuid.uuid4().hex[:8]}")
    answer = await http.post(f"{service.url}/api/jobs", headers=bearer(someone), json={
        "type": "image", "model_id": "fal-ai/flux/schnell",
        "input": {"prompt": "a timeline of a fox", "fal_emulator": {**HELD, "queue_position": 1}}})
    request_id = answer.json()["request_id"]
    fal.release(request_id)
    fal.release(request_id)
    assert (await http.get(f"{service.url}/api/jobs/{request_id}?wait=20", headers=bearer(someone))).json()["status"] == "completed"

    await filter_by(page, user=someone.name)
    await row(page, request_id).get_by_test_id("open-timeline").click()
    timeline = page.get_by_test_id("timeline")
    await expect_(timeline).to_be_visible()
    await expect_(timeline.get_by_test_id("timeline-summary")).to_contain_text(request_id)
    await expect_(timeline.get_by_test_id("timeline-summary")).to_contain_text(someone.name)
    events = timeline.get_by_test_id("timeline-events")
    await expect_(events.locator("tbody tr").last).to_contain_text("completed")
    await expect_(events).to_contain_text("in_progress")
    await expect_(timeline.get_by_test_id("timeline-logs")).to_contain_text("Step 3/3")
    await expect_(timeline.get_by_test_id("timeline-deliveries")).to_contain_text("accepted")
    await expect_(timeline.get_by_test_id("timeline-outputs").locator("tbody tr")).to_have_count(1)
    await expect_(timeline.get_by_test_id("timeline-cost")).to_contain_text("megapixel")
    assert await axe_violations(page) == []
    await timeline.get_by_test_id("timeline-close").click()
    await expect_(timeline).to_be_hidden()

    # The figures are the stats API's for the window chosen, one row per model.
    async with page.expect_response(lambda r: "/api/admin/stats?since=7d" in r.url) as info:
        await page.get_by_test_id("stats-window").select_option("7d")
    stats = await (await info.value).json()
    models = page.get_by_test_id("stats-models").locator("tbody tr")
    await expect_(models).to_have_count(max(1, len(stats["models"])))
    assert [m["model_id"] for m in stats["models"]] == await models.locator("td:first-child").all_text_contents()
    assert await axe_violations(page) == []


async def test_another_users_job_changes_live_in_the_console(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool, fal: FalEmulator, http: httpx.AsyncClient) -> None:
    page = (await open_console(signed_in, pool, service)).page
    someone = await create_user(pool, f"dave-{uuid.uuid4().hex[:8]}")
    await filter_by(page, user=someone.name)
    await expect_(page.get_by_test_id("jobs-empty")).to_be_visible()
    await page.evaluate("window.__notReloaded = true")

    answer = await http.post(f"{service.url}/api/jobs", headers=bearer(someone), json={
        "type": "image", "model_id": "fal-ai/flux/schnell", "input": {"prompt": "live fox", "fal_emulator": HELD}})
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    job = row(page, request_id)
    await expect_(job).to_have_attribute("data-status", "pending")  # it came in on the stream
    await expect_(job.get_by_test_id("row-user")).to_have_text(someone.name)
    await job.get_by_test_id("open-timeline").click()
    summary = page.get_by_test_id("timeline-summary")
    await expect_(summary).to_contain_text("pending")
    fal.release(request_id)
    await expect_(job).to_have_attribute("data-status", "in_progress")
    fal.release(request_id)
    await expect_(job).to_have_attribute("data-status", "completed")
    await expect_(job.get_by_test_id("row-status")).to_have_text("completed")
    await expect_(summary).to_contain_text("completed")  # the open timeline follows too
    assert await page.evaluate("window.__notReloaded") is True


async def test_a_non_admin_gets_a_404_for_the_console(signed_in: Any, service: RunningServer) -> None:
    session = await signed_in()
    response = await session.page.goto(f"{service.url}/admin")
    assert response.status == 404
    assert "operator" not in await session.page.content()
    page, errors = await signed_in.fresh_page()
    assert (await page.goto(f"{service.url}/admin")).status == 404
    # Chromium logs each 404 it was given; that is the answer asked for.
    for logged in (session.console_errors, errors):
        logged[:] = [e for e in logged if "404" not in e]
