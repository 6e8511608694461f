"""The operator's console in Chromium against the real service, emulator and Postgres: an admin
filters every user's jobs by model and status (and the CSV link carries that filter), opens a
job's timeline, and watches another user's job change live; a non-admin gets a 404."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from service.auth.api_keys import create_user
from service.auth.users import set_admin
from service.emulator import FalEmulator
from service.realtime import streams
from tests.browser.test_accessibility import axe_violations
from tests.browser.test_page import HELD, expect_
from tests.conftest import RunningServer, bearer
from tests.test_admin import insert_job
from tests.test_live_streams import change, new_job

PAGE_SIZE = 50
"""The console's page (admin.js)."""


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


async def range_text(page: Any, stats: dict[str, Any]) -> str:
    """The range line the console shows for these figures, formatted by the page's own code."""
    return await page.evaluate(
        """async ([since, until]) => {
             const { when } = await import("/static/admin-util.js");
             return `From ${when(since)} to ${when(until)}.`;
           }""", [stats["since"], stats["until"]])


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
    # Chromium logs the 400 as a console error, and that log can reach us after the page has shown
    # the answer: wait for it, then take it out of the errors that fail the test.
    async with page.expect_console_message(lambda m: m.type == "error" and "400 (Bad Request)" in m.text):
        await filter_by(page, since="yesterday")
    await expect_(page.get_by_test_id("console-error")).to_contain_text("since:")
    session.console_errors[:] = [e for e in session.console_errors if "400 (Bad Request)" not in e]
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

    # The figures are the stats API's for the window chosen, one row per model: once the range
    # shows that window (the 24 h figures may list the same models).
    async with page.expect_response(lambda r: "/api/admin/stats?since=7d" in r.url) as info:
        await page.get_by_test_id("stats-window").select_option("7d")
    stats = await (await info.value).json()
    await expect_(page.get_by_test_id("stats-range")).to_have_text(await range_text(page, stats))
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


async def test_the_figures_shown_are_those_of_the_last_window_asked_for(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool) -> None:
    """Answers landing out of order: the 7-day figures, asked for first and slow, come after the
    24-hour ones asked for next; the console keeps showing the 24-hour figures."""
    page = (await open_console(signed_in, pool, service)).page
    await expect_(page.get_by_test_id("stats-range")).not_to_be_empty()
    release = asyncio.Event()

    async def held(route: Any) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/api/admin/stats?since=7d", held)
    await page.get_by_test_id("stats-window").select_option("7d")
    async with page.expect_response(lambda r: "/api/admin/stats?since=24h" in r.url) as info:
        await page.get_by_test_id("stats-window").select_option("24h")
    newer = await (await info.value).json()
    shown = await range_text(page, newer)
    await expect_(page.get_by_test_id("stats-range")).to_have_text(shown)
    async with page.expect_response(lambda r: "/api/admin/stats?since=7d" in r.url) as late:
        release.set()
    await (await late.value).finished()
    await page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 300))")  # its handler has run
    assert await page.get_by_test_id("stats-range").text_content() == shown


async def test_a_new_job_appears_while_other_users_jobs_keep_changing(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool) -> None:
    """The stream carries every user's changes, which may never pause: the first page is read again
    at most every 300 ms, not 300 ms after the last change (a timer reset by each would never fire)."""
    page = (await open_console(signed_in, pool, service)).page
    someone = await create_user(pool, f"erin-{uuid.uuid4().hex[:8]}")
    busy = await create_user(pool, f"busy-{uuid.uuid4().hex[:8]}")
    await filter_by(page, user=someone.name)
    await expect_(page.get_by_test_id("jobs-empty")).to_be_visible()
    stop = asyncio.Event()

    async def changing() -> None:  # another user's jobs, one every 50 ms: none matches the filter
        while not stop.is_set():
            await new_job(pool, busy)
            await asyncio.sleep(0.05)

    burst = asyncio.create_task(changing())
    try:
        await asyncio.sleep(0.5)
        mine = await new_job(pool, someone)
        await expect_(row(page, mine)).to_be_visible(timeout=4000)
        assert not burst.done(), "the row came while the changes kept coming"
    finally:
        stop.set()
        await burst


XSS = '<img src=x onerror="window.__xss=1">'


async def test_user_controlled_text_is_shown_as_text(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool) -> None:
    """A prompt, an error and a user name that look like HTML show as that very text, in the table
    and the timeline; no element is made of them and no handler of theirs runs."""
    page = (await open_console(signed_in, pool, service)).page
    someone = await create_user(pool, f"mallory-{uuid.uuid4().hex[:8]}")
    # Names are checked when made; one written otherwise (an older row, a hand edit) is text all the same.
    name = f"{XSS}-{uuid.uuid4().hex[:8]}"
    await pool.execute("UPDATE fal_users SET name = $2 WHERE id = $1", someone.user_id, name)
    model = f"test/xss-{uuid.uuid4().hex[:8]}"
    failed = await insert_job(pool, someone, model=model, status="failed", prompt=XSS, error=XSS, final=0)
    done = await insert_job(pool, someone, model=model, prompt=XSS)

    await filter_by(page, model=model)
    await expect_(page.get_by_test_id("job-row")).to_have_count(2)
    for request_id in (failed, done):
        await expect_(row(page, request_id).get_by_test_id("row-text")).to_have_text(XSS)
        await expect_(row(page, request_id).get_by_test_id("row-user")).to_have_text(name)
    await row(page, failed).get_by_test_id("open-timeline").click()
    summary = page.get_by_test_id("timeline-summary")
    await expect_(summary).to_contain_text(failed)
    facts = await summary.locator("dd").all_text_contents()
    assert facts.count(XSS) == 2 and name in facts, facts  # the prompt and the error; the user
    await expect_(page.get_by_test_id("timeline-events")).to_contain_text(XSS)  # the event's error
    assert await page.locator('img[src="x"]').count() == 0
    assert await page.evaluate("window.__xss") is None


async def test_a_console_resuming_from_too_far_back_reads_its_list_again(
        signed_in: Any, service: RunningServer, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `REPLAY_LIMIT` missed events the stream sends no replay but a fresh `ready`: the console
    reads its first page again (a change made while it was away shows) and drops the older rows it
    held, which may have changed unseen (Older brings them back)."""
    monkeypatch.setattr(streams, "REPLAY_LIMIT", 0)
    session = await open_console(signed_in, pool, service)
    page = session.page
    someone = await create_user(pool, f"frank-{uuid.uuid4().hex[:8]}")
    model = f"test/resume-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(hours=1)
    oldest = await insert_job(pool, someone, model=model, created_at=start)
    for minute in range(1, PAGE_SIZE):
        await insert_job(pool, someone, model=model, created_at=start + timedelta(minutes=minute))
    newest = await insert_job(pool, someone, model=model, status="in_progress")
    await filter_by(page, model=model)
    await expect_(page.get_by_test_id("job-row")).to_have_count(PAGE_SIZE)
    async with page.expect_response(lambda r: "/api/admin/jobs?" in r.url):
        await page.get_by_test_id("older").click()
    await expect_(row(page, oldest)).to_be_visible()

    blocked = True
    refused = asyncio.Event()

    async def events(route: Any) -> None:
        if blocked:
            refused.set()
            await route.abort("connectionrefused")
        else:
            await route.continue_()

    await page.route("**/api/admin/events*", events)
    service.app.state.hub.close_all()
    await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "reconnecting")
    await change(pool, newest, "completed")
    await asyncio.wait_for(refused.wait(), 20)
    blocked = False
    await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    # Chromium logs the refused reconnects provoked on purpose; nothing else may log.
    session.console_errors[:] = [e for e in session.console_errors if "/api/admin/events" not in e]
    await expect_(row(page, newest)).to_have_attribute("data-status", "completed")
    await expect_(page.get_by_test_id("job-row")).to_have_count(PAGE_SIZE)
    await expect_(row(page, oldest)).to_have_count(0)
    await expect_(page.get_by_test_id("older")).to_be_visible()
