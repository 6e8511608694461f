"""The page for keyboard and screen-reader users, and what it tells everyone: axe-core finds no
violation; a job's end is announced in a polite live region; the focus stays where it was used;
the model select shows whole ids; a tag says when jobs go to the local emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.auth.api_keys import create_user
from service.auth.browser_sessions import issue_sign_in_token
from service.emulator import FalEmulator
from tests.browser.conftest import TIMEOUT_MS, watch_console
from tests.browser.test_page import HELD, card, expect_, submit
from tests.conftest import bearer
from tests.test_browser_sessions import emulated_service

ACTIVE = "() => { const a = document.activeElement; return a ? (a.dataset.testid || a.dataset.requestId || a.tagName) : null; }"


async def axe_violations(page: Any) -> list[str]:
    """axe-core (bundled with axe-playwright-python: nothing is downloaded) on the page as it is."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
            for v in results.response["violations"]]


async def test_axe_finds_no_violation_with_every_kind_of_card(signed_in: Any, fal: FalEmulator) -> None:
    page = (await signed_in()).page
    done = await submit(page, prompt="a finished fox", extra={"fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    failed = await submit(page, prompt="this one fails", extra={"fal_emulator": {"outcome": "error"}})
    held = await submit(page, prompt="waiting in line", extra={"fal_emulator": HELD})
    await expect_(card(page, done)).to_have_attribute("data-status", "completed")
    await expect_(card(page, failed)).to_have_attribute("data-status", "failed")
    await expect_(card(page, held)).to_have_attribute("data-status", "pending")
    await expect_(page.get_by_test_id("announcements")).to_contain_text("Image job failed: this one fails")
    assert await axe_violations(page) == []
    # The video form too (its options and the video model's select).
    await page.get_by_test_id("type-video").check()
    assert await axe_violations(page) == []
    fal.release(held)
    fal.release(held)


async def test_a_jobs_tags_show_on_its_card_as_a_named_list(
    signed_in: Any, service: Any, http: httpx.AsyncClient,
) -> None:
    session = await signed_in()
    page = session.page
    response = await http.post(f"{service.url}/api/jobs", headers=bearer(session.user), json={
        "type": "image", "model_id": "fal-ai/flux/schnell", "tags": ["user:123", "project:9"],
        "input": {"prompt": "a tagged fox", "fal_emulator": {"queue_ms": 0, "run_ms": 0}},
    })
    assert response.status_code == 202, response.text
    tagged = card(page, response.json()["request_id"])  # arrives over the stream, not the list
    await expect_(tagged).to_have_attribute("data-status", "completed")
    tags = tagged.get_by_role("list", name="Tags")
    await expect_(tags.get_by_role("listitem")).to_have_text(["user:123", "project:9"])
    untagged = await submit(page, prompt="no tags", extra={"fal_emulator": {"queue_ms": 0, "run_ms": 0}})
    await expect_(card(page, untagged)).to_have_attribute("data-status", "completed")
    await expect_(card(page, untagged).get_by_test_id("job-tags")).to_have_count(0)
    assert await axe_violations(page) == []


async def test_axe_finds_no_violation_signed_out(signed_in: Any, service: Any) -> None:
    page, errors = await signed_in.fresh_page()
    await page.goto(f"{service.url}/")
    await expect_(page.get_by_test_id("signed-out")).to_be_visible()
    assert await axe_violations(page) == []
    errors[:] = [e for e in errors if not ("401" in e and "/api/session" in e)]


async def test_a_jobs_end_is_announced_politely(signed_in: Any, fal: FalEmulator) -> None:
    page = (await signed_in()).page
    region = page.get_by_test_id("announcements")
    assert await region.get_attribute("aria-live") == "polite"
    request_id = await submit(page, prompt="a red fox running through deep snow at dawn, film photo",
                              extra={"fal_emulator": HELD})
    await expect_(card(page, request_id)).to_have_attribute("data-status", "pending")
    assert await region.inner_text() == "", "nothing ended yet"
    fal.release(request_id)
    fal.release(request_id)
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    # The prompt in a few words (eight, then an ellipsis).
    await expect_(region).to_have_text("Image job completed: a red fox running through deep snow at…")
    cancelled = await submit(page, prompt="never mind", extra={"fal_emulator": {"hold": True}})
    await card(page, cancelled).get_by_test_id("cancel").click()
    await expect_(region).to_contain_text("Image job was cancelled: never mind")
    # A job that was over before the page listed it is no news: a reload announces nothing.
    await page.reload()
    await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    assert await region.inner_text() == ""


async def test_focus_stays_on_generate_while_and_after_it_submits(signed_in: Any) -> None:
    page = (await signed_in()).page
    await page.get_by_test_id("prompt").fill("a lighthouse, from the keyboard")
    await page.get_by_test_id("extra-input").evaluate(
        "(t, v) => { t.value = v; }", '{"fal_emulator": {"queue_ms": 0, "run_ms": 0}}')
    release = asyncio.Event()

    async def slow_submit(route: Any) -> None:
        if route.request.method == "POST":
            await release.wait()  # the request stays in flight until the test has looked at the button
        await route.continue_()

    await page.route("**/api/jobs", slow_submit)
    button = page.get_by_test_id("submit")
    await button.focus()
    await page.keyboard.press("Enter")
    await expect_(button).to_have_text("Submitting…")
    await expect_(button).to_have_attribute("aria-disabled", "true")
    assert await page.evaluate(ACTIVE) == "submit", "the busy button keeps the focus"
    await page.keyboard.press("Enter")  # a second press while busy submits nothing more
    async with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST"):
        release.set()
    await expect_(button).to_have_text("Generate")
    await expect_(page.locator('[data-request-id][data-status="completed"]')).to_have_count(1)
    assert await page.evaluate(ACTIVE) == "submit"
    assert await button.get_attribute("aria-disabled") is None


async def test_focus_stays_in_the_card_after_cancel(signed_in: Any) -> None:
    page = (await signed_in()).page
    request_id = await submit(page, prompt="cancel me with the keyboard", extra={"fal_emulator": {"hold": True}})
    job = card(page, request_id)
    cancel = job.get_by_test_id("cancel")
    await cancel.focus()
    await page.keyboard.press("Enter")
    await expect_(job).to_have_attribute("data-status", "cancelled")
    await expect_(cancel).to_be_hidden()
    # The Cancel button is gone with the job's end: its card has the focus, not the page body.
    assert await page.evaluate(ACTIVE) == request_id


async def test_the_model_select_shows_whole_ids(signed_in: Any) -> None:
    page = (await signed_in()).page
    select = page.get_by_test_id("model")
    for kind in ("image", "video"):
        await page.get_by_test_id(f"type-{kind}").check()
        options = await select.evaluate("""s => {
            const style = getComputedStyle(s);
            const pen = document.createElement("canvas").getContext("2d");
            pen.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
            // Room for text: the content box less the drop-down arrow (about 1.5em).
            const room = s.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
                         - 1.5 * parseFloat(style.fontSize);
            return [...s.options].map(o => ({value: o.value, text: o.text, title: o.title,
                                             fits: pen.measureText(o.text).width <= room}));
        }""")
        assert options, kind
        for option in options:
            assert option["text"] == option["title"] == option["value"], option
            assert option["fits"], option
        assert await select.get_attribute("title") == options[0]["value"]
    assert any(o["value"] == "fal-ai/kling-video/v2.1/master/text-to-video" for o in options)


async def test_the_emulator_tag_shows_only_without_fal_key(signed_in: Any, browser: Any, server_dsn: str) -> None:
    page = (await signed_in()).page  # the suite's service has a FAL_KEY
    await expect_(page.get_by_test_id("workspace")).to_be_visible()
    await expect_(page.get_by_test_id("emulator-tag")).to_be_hidden()

    async with emulated_service(server_dsn) as emulated:
        user = await create_user(emulated.pool, "emulated-browser")
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        try:
            page = await context.new_page()
            watch_console(page, errors, user.name)
            await page.goto(f"{emulated.running.url}/?token={await issue_sign_in_token(emulated.pool, user.user_id)}")
            tag = page.get_by_test_id("emulator-tag")
            await expect_(tag).to_be_visible()
            await expect_(tag).to_have_text("local emulator: test images")
            assert "FAL_KEY" in (await tag.get_attribute("title") or "")
            assert await axe_violations(page) == []
        finally:
            await context.close()
        assert errors == []
