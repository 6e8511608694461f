"""The browser page against the real service, emulator and Postgres: sign in, ask for an image or
a video, and watch it go from queued to running to done, live over one EventSource."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx

from service.emulator import FalEmulator
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import RunningServer, bearer

# Held by the emulator in each state until the test calls `fal.release(request_id)`: the page must
# show the state before the job moves on, whatever the machine's speed (no queue timed to be long enough).
HELD = {"hold": True, "queue_ms": 300, "run_ms": 300, "logs": 3}

# Records every state each job card shows (status and the badge/detail text), from inside the page,
# so a test can check the order of states even if its own polling would have missed one.
RECORD_STATES = """
() => {
  window.__seen = [];
  const list = document.querySelector('[data-testid="jobs"]');
  const snap = () => {
    for (const card of list.querySelectorAll('[data-request-id]')) {
      const entry = [card.dataset.requestId, card.dataset.status,
                     card.querySelector('[data-testid="job-status"]').textContent.trim(),
                     (card.querySelector('.detail') || {}).textContent || ''];
      const last = window.__seen.filter(e => e[0] === entry[0]).pop();
      if (!last || last.join('|') !== entry.join('|')) window.__seen.push(entry);
    }
  };
  new MutationObserver(snap).observe(list, {subtree: true, childList: true, attributes: true, characterData: true});
  snap();
}
"""


def expect_(locator: Any) -> Any:
    from playwright.async_api import expect

    return expect(locator)


def card(page: Any, request_id: str) -> Any:
    return page.locator(f'[data-request-id="{request_id}"]')


async def submit(page: Any, *, kind: str = "image", prompt: str = "a lighthouse at dawn",
                 extra: dict[str, Any] | None = None, num_images: int | None = None) -> str:
    """Fill the form like a person would and submit it; returns the new job's request_id."""
    await page.get_by_test_id(f"type-{kind}").check()
    await page.get_by_test_id("prompt").fill(prompt)
    if num_images is not None:
        await page.get_by_test_id("num-images").fill(str(num_images))
    if extra is not None:
        details = page.locator("details.advanced")
        if not await details.evaluate("d => d.open"):
            await page.get_by_test_id("advanced-toggle").click()
        await page.get_by_test_id("extra-input").fill(json.dumps(extra))
    async with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as info:
        await page.get_by_test_id("submit").click()
    response = await info.value
    assert response.status == 202, await response.text()
    request_id = (await response.json())["request_id"]
    await expect_(card(page, request_id)).to_be_visible()
    return request_id


async def test_sign_in_link_sets_an_http_only_cookie_and_works_once(signed_in: Any, service: RunningServer, pool: asyncpg.Pool) -> None:
    from service.auth.browser_sessions import issue_sign_in_token

    session = await signed_in()
    page = session.page
    assert page.url == f"{service.url}/", "the token must leave the address bar"
    cookies = await session.context.cookies(service.url)
    [cookie] = [c for c in cookies if c["name"] == "fal_jobs_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""
    html = await page.content()
    assert cookie["value"] not in html

    token = await issue_sign_in_token(pool, session.user.user_id)
    await page.goto(f"{service.url}/?token={token}")
    await expect_(page.get_by_test_id("user-name")).to_have_text(session.user.name)
    await page.goto(f"{service.url}/?token={token}")  # the same link, again
    assert page.url.endswith("/#sign-in-link-invalid")
    notice = page.get_by_test_id("sign-in-invalid")
    await expect_(notice).to_be_visible()
    await expect_(notice).to_contain_text("already used or has expired")


async def test_signed_out_page_explains_how_to_sign_in(signed_in: Any, service: RunningServer) -> None:
    page, errors = await signed_in.fresh_page()
    await page.goto(f"{service.url}/#sign-in-link-invalid")
    signed_out = page.get_by_test_id("signed-out")
    await expect_(signed_out).to_be_visible()
    await expect_(signed_out).to_contain_text("python3 -m service run")
    await expect_(signed_out).to_contain_text("python3 -m service users sign-in NAME")
    await expect_(page.get_by_test_id("sign-in-invalid")).to_be_visible()
    await expect_(page.get_by_test_id("job-form")).to_be_hidden()
    # The one expected failure: GET /api/session answers 401 without a session (Chromium logs it).
    errors[:] = [e for e in errors if not ("401" in e and "/api/session" in e)]


async def test_image_job_goes_queued_running_completed(signed_in: Any, fal: FalEmulator) -> None:
    page = (await signed_in()).page
    await page.evaluate(RECORD_STATES)
    request_id = await submit(page, prompt="a red fox in snow",
                              extra={"fal_emulator": {**HELD, "queue_position": 2}}, num_images=2)
    job = card(page, request_id)
    await expect_(job.get_by_test_id("job-status")).to_contain_text("Queued")
    fal.release(request_id)
    await expect_(job.locator(".detail")).to_contain_text("Step 3/3")
    fal.release(request_id)
    await expect_(job).to_have_attribute("data-status", "completed")
    await expect_(job.get_by_test_id("job-status")).to_have_text("✓ Completed")
    images = job.get_by_test_id("job-image")
    await expect_(images).to_have_count(2)
    for index in range(2):
        image = images.nth(index)
        await image.scroll_into_view_if_needed()
        await expect_(image).to_have_js_property("complete", True)
        assert await image.evaluate("img => img.naturalWidth") > 0
    href = await job.locator(".media a").first.get_attribute("href")
    assert href == await images.first.get_attribute("src")  # the thumbnail opens the full-size image
    await expect_(job.get_by_test_id("cancel")).to_be_hidden()
    # Two 1024×768 images at the emulator's $0.025 per megapixel: fal's bill as we estimate it.
    await expect_(job.get_by_test_id("job-cost")).to_have_text(" · $0.05")

    seen = [e for e in await page.evaluate("window.__seen") if e[0] == request_id]
    statuses = [e[1] for e in seen]
    deduped = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert deduped == ["pending", "in_progress", "completed"], seen
    assert any(e[1] == "pending" and "Queued · position" in e[2] for e in seen), seen
    # Running, with the emulator's latest log line ("Step n/3") under the badge.
    assert any(e[1] == "in_progress" and e[2].endswith("Running") and e[3].startswith("Step ") for e in seen), seen


async def test_video_job_plays(signed_in: Any) -> None:
    page = (await signed_in()).page
    await page.get_by_test_id("type-video").check()
    await page.get_by_test_id("duration").select_option("10")
    request_id = await submit(page, kind="video", prompt="waves on a beach",
                              extra={"fal_emulator": {"queue_ms": 200, "run_ms": 300}})
    job = card(page, request_id)
    await expect_(job).to_have_attribute("data-status", "completed")
    video = job.get_by_test_id("job-video")
    await expect_(video).to_be_visible()
    assert await video.evaluate("v => v.controls") is True
    # HAVE_CURRENT_DATA or better: Chromium fetched and decoded the H.264 MP4.
    await page.wait_for_function(
        "v => v.readyState >= 2 || v.error", arg=await video.element_handle(), timeout=20_000)
    state = await video.evaluate("v => ({ready: v.readyState, error: v.error && v.error.message, w: v.videoWidth})")
    assert state["error"] is None and state["ready"] >= 2 and state["w"] > 0, state
    # As long as the form asked (the emulator honours `duration`), and decodable to its end.
    # As long as the form asked (the emulator honours `duration`), and decodable to its end: played
    # through, fast and muted (fal's copy here: the emulator's CDN answers no Range, so no seeking).
    assert await video.evaluate("v => v.duration") == 10
    played = await video.evaluate("""v => new Promise(done => {
        v.addEventListener("ended", () => done({at: v.currentTime, error: null}), {once: true});
        v.addEventListener("error", () => done({at: v.currentTime, error: v.error && v.error.message}), {once: true});
        v.muted = true;
        v.playbackRate = 16;
        v.play().catch(e => done({at: v.currentTime, error: String(e)}));
    })""")
    assert played["error"] is None and played["at"] > 9.5, played


async def test_image_has_the_size_asked_for(signed_in: Any) -> None:
    page = (await signed_in()).page
    await page.get_by_test_id("image-size").select_option("portrait_16_9")
    request_id = await submit(page, prompt="a tall lighthouse", extra={"fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    image = card(page, request_id).get_by_test_id("job-image")
    await expect_(image).to_have_js_property("complete", True)
    # What Chromium decoded from the PNG the emulator drew: fal's portrait_16_9 preset.
    assert await image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [576, 1024]


async def test_failed_job_shows_its_error(signed_in: Any) -> None:
    page = (await signed_in()).page
    request_id = await submit(page, prompt="this one fails", extra={"fal_emulator": {"outcome": "error"}})
    job = card(page, request_id)
    await expect_(job).to_have_attribute("data-status", "failed")
    await expect_(job.get_by_test_id("job-status")).to_have_text("✕ Failed")
    error = job.get_by_test_id("job-error")
    await expect_(error).to_be_visible()
    await expect_(error).not_to_be_empty()
    await expect_(job.get_by_test_id("job-media")).to_be_hidden()


async def test_cancel_a_slow_job_from_its_card(signed_in: Any) -> None:
    page = (await signed_in()).page
    request_id = await submit(page, prompt="never mind", extra={"fal_emulator": {"hold": True}})
    job = card(page, request_id)
    await expect_(job).to_have_attribute("data-status", "pending")
    await job.get_by_test_id("cancel").click()
    await expect_(job).to_have_attribute("data-status", "cancelled")
    await expect_(job.get_by_test_id("job-status")).to_have_text("⊘ Cancelled")
    await expect_(job.get_by_test_id("cancel")).to_be_hidden()


async def test_killed_listen_connection_mid_job_still_completes(signed_in: Any, pool: asyncpg.Pool, fal: FalEmulator) -> None:
    page = (await signed_in()).page
    request_id = await submit(page, prompt="survives a dropped LISTEN", extra={"fal_emulator": HELD})
    job = card(page, request_id)
    await expect_(job).to_have_attribute("data-status", "pending")
    killed = await pool.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'fal-jobs-listener' AND datname = current_database()"
    )
    assert killed >= 1, "no LISTEN connection to kill: the test would prove nothing"
    fal.release(request_id)
    fal.release(request_id)
    await expect_(job).to_have_attribute("data-status", "completed")
    await expect_(job.get_by_test_id("job-image")).to_have_count(1)


async def test_reload_mid_job_loses_nothing(signed_in: Any, fal: FalEmulator) -> None:
    page = (await signed_in()).page
    done = await submit(page, prompt="finished before the reload", extra={"fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    await expect_(card(page, done)).to_have_attribute("data-status", "completed")
    request_id = await submit(page, prompt="outlives a reload", extra={"fal_emulator": {**HELD, "logs": 2}})
    fal.release(request_id)
    await expect_(card(page, request_id)).to_have_attribute("data-status", "in_progress")
    await page.reload()
    await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    fal.release(request_id)
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect_(card(page, done)).to_have_attribute("data-status", "completed")
    ids = await page.locator("[data-request-id]").evaluate_all("cards => cards.map(c => c.dataset.requestId)")
    assert ids == [request_id, done], "newest first, each job once"


async def make_finished_job(http: httpx.AsyncClient, service: RunningServer, user: Any, prompt: str) -> str:
    """A job by the same user through the API (not the page), waited for until it completes."""
    response = await http.post(f"{service.url}/api/jobs", headers=bearer(user), json={
        "type": "image", "model_id": "fal-ai/flux/schnell",
        "input": {"prompt": prompt, "fal_emulator": {"queue_ms": 0, "run_ms": 0}},
    })
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    waited = await http.get(f"{service.url}/api/jobs/{request_id}?wait=20", headers=bearer(user))
    assert waited.json()["status"] == "completed", waited.text
    return request_id


def drop_expected_stream_errors(errors: list[str]) -> None:
    """Chromium logs the refused reconnects this test provokes on purpose; nothing else may log."""
    errors[:] = [e for e in errors if "/api/events" not in e]


async def test_dropped_stream_reconnects_with_last_event_id_and_misses_nothing(
    signed_in: Any, service: RunningServer, http: httpx.AsyncClient,
) -> None:
    """The client's own reconnect: the server ends the stream, reconnects fail for a while (the
    network is down), a job finishes meanwhile; once through, the resume point brings it."""
    session = await signed_in()
    page = session.page
    connection = page.get_by_test_id("connection")
    blocked = True
    refused = asyncio.Event()
    resumed: list[str] = []
    list_fetches: list[str] = []
    page.on("request", lambda r: list_fetches.append(r.url) if r.method == "GET" and "/api/jobs" in r.url else None)

    async def events(route: Any) -> None:
        if blocked:
            refused.set()
            await route.abort("connectionrefused")
        else:
            resumed.append(route.request.url)
            await route.continue_()

    await page.route("**/api/events?*", events)
    service.app.state.hub.close_all()  # the server ends every open stream, as on a redeploy
    await expect_(connection).to_have_attribute("data-state", "reconnecting")
    await expect_(connection).to_contain_text("Reconnecting")
    request_id = await make_finished_job(http, service, session.user, "made while the stream was down")
    await asyncio.wait_for(refused.wait(), 20)  # EventSource tried, and failed, at least once
    await page.screenshot(path=str(SCREENSHOTS / "test_dropped_stream_reconnecting.png"))
    blocked = False
    await expect_(connection).to_have_attribute("data-state", "live")
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect_(card(page, request_id).get_by_test_id("job-image")).to_have_count(1)
    # The reconnect resumed after the last event id seen (subscribeJobs puts it in the query) and
    # replayed the job: the page did not fetch the list again, and a stream opened without a resume
    # point would not replay it.
    assert resumed and "last_event_id=" in resumed[0], resumed
    assert list_fetches == [], list_fetches
    drop_expected_stream_errors(session.console_errors)


async def test_refused_stream_gets_a_new_token_and_resumes(
    signed_in: Any, service: RunningServer, http: httpx.AsyncClient,
) -> None:
    """When EventSource gives up (a reconnect answered 401, as when its stream token expired), the
    page fetches a new token and opens a new EventSource with last_event_id: nothing is missed."""
    session = await signed_in()
    page = session.page
    connection = page.get_by_test_id("connection")
    blocked = True
    refused = asyncio.Event()
    opened: list[str] = []

    async def events(route: Any) -> None:
        if blocked:
            refused.set()
            await route.fulfill(status=401, content_type="application/json",
                                body='{"status": 401, "error": "not_authenticated", "message": "token: expired"}')
        else:
            opened.append(route.request.url)
            await route.continue_()

    await page.route("**/api/events?*", events)
    service.app.state.hub.close_all()
    await expect_(connection).to_have_attribute("data-state", "reconnecting")
    request_id = await make_finished_job(http, service, session.user, "made while the token was refused")
    await asyncio.wait_for(refused.wait(), 20)
    blocked = False
    await expect_(connection).to_have_attribute("data-state", "live")
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    assert opened and "last_event_id=" in opened[0], opened
    drop_expected_stream_errors(session.console_errors)


async def test_another_user_sees_none_of_the_first_users_jobs(signed_in: Any) -> None:
    first = (await signed_in()).page
    second = (await signed_in()).page
    await expect_(second.get_by_test_id("jobs-empty")).to_be_visible()
    mine = await submit(first, prompt="only for the first user", extra={"fal_emulator": {"queue_ms": 300, "run_ms": 300}})
    await expect_(card(first, mine)).to_have_attribute("data-status", "completed")
    theirs = await submit(second, prompt="the second user's own")
    await expect_(card(second, theirs)).to_have_attribute("data-status", "completed")
    # The second user's stream delivered its own, later job: the first user's came before it, if at all.
    assert await card(second, mine).count() == 0
    await second.reload()
    await expect_(card(second, theirs)).to_have_attribute("data-status", "completed")
    assert await second.locator("[data-request-id]").count() == 1
    assert await card(second, mine).count() == 0
    assert await card(first, theirs).count() == 0


async def test_phone_size_fits_without_horizontal_scrolling(signed_in: Any) -> None:
    page = (await signed_in(viewport={"width": 375, "height": 740})).page
    await expect_(page.get_by_test_id("job-form")).to_be_visible()
    await expect_(page.get_by_test_id("jobs")).to_be_attached()
    request_id = await submit(page, prompt="a long prompt " * 12, num_images=4,
                              extra={"fal_emulator": {"queue_ms": 200, "run_ms": 200}})
    await submit(page, kind="video", prompt="a video on a phone", extra={"fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    images = card(page, request_id).get_by_test_id("job-image")
    await expect_(images).to_have_count(4)
    for index in range(4):  # lazy-loaded thumbnails: bring each into view so the screenshot shows it
        await images.nth(index).scroll_into_view_if_needed()
        await expect_(images.nth(index)).to_have_js_property("complete", True)
    await expect_(page.locator('[data-request-id][data-status="completed"]')).to_have_count(2)
    await expect_(page.get_by_test_id("jobs")).to_be_visible()
    width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone: {width}px wide"
