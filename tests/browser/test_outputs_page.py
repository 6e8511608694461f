"""The page with durable outputs: a service whose emulator is mounted (as `python3 -m service run`
has it), so its copies are stored; the card switches to our copy, offers a download, and shows a
deleted job's media as deleted."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from service.auth.api_keys import create_user
from service.auth.browser_sessions import issue_sign_in_token
from service.db.pool import create_pool
from tests.browser.conftest import SCREENSHOTS, TIMEOUT_MS, watch_console
from tests.conftest import RunningServer, bearer
from tests.test_outputs import fresh_database, start_service


def expect_(locator: Any) -> Any:
    from playwright.async_api import expect

    return expect(locator)


@pytest_asyncio.fixture(loop_scope="session")
async def mounted(server_dsn: str) -> AsyncIterator[tuple[RunningServer, Any]]:
    async with fresh_database(server_dsn) as database_url:
        pool = await create_pool(database_url, min_size=1, max_size=3)
        running = await start_service(database_url, Path(tempfile.mkdtemp(prefix="fal-jobs-media-page-")))
        try:
            yield running, pool
        finally:
            await running.stop()
            await pool.close()


async def test_card_shows_the_durable_copy_with_a_download_and_then_deletion(
    browser: Any, mounted: tuple[RunningServer, Any], http: httpx.AsyncClient,
) -> None:
    running, pool = mounted
    user = await create_user(pool, "page-outputs")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    watch_console(page, errors, user.name)
    try:
        await page.goto(f"{running.url}/?token={await issue_sign_in_token(pool, user.user_id)}")
        await expect_(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        created = await http.post(f"{running.url}/api/jobs", headers=bearer(user), json={
            "type": "image", "model_id": "fal-ai/flux/dev",
            "input": {"prompt": "a durable fox", "num_images": 2, "image_size": {"width": 96, "height": 64},
                      "fal_emulator": {"queue_ms": 100, "run_ms": 100}}})
        request_id = created.json()["request_id"]
        card = page.locator(f'[data-request-id="{request_id}"]')
        downloads = card.get_by_test_id("job-download")
        await expect_(downloads).to_have_count(2)
        images = card.get_by_test_id("job-image")
        for index in range(2):
            image = images.nth(index)
            await expect_(image).to_have_attribute("src", f"{running.url}/api/jobs/{request_id}/outputs/{index}")
            await image.scroll_into_view_if_needed()
            await expect_(image).to_have_js_property("complete", True)
            assert await image.evaluate("img => img.naturalWidth") == 96
        async with page.expect_download() as download_info:
            await downloads.first.click()
        download = await download_info.value
        assert download.suggested_filename == f"{request_id}-0.png"
        assert Path(await download.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "outputs-stored.png"), full_page=True)
        deleted = await http.delete(f"{running.url}/api/jobs/{request_id}", headers=bearer(user))
        assert deleted.status_code == 200
        await expect_(card.get_by_test_id("job-media-deleted")).to_have_text("Media deleted.")
        await expect_(card).to_have_attribute("data-status", "deleted")
        await expect_(card.get_by_test_id("job-image")).to_have_count(0)
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "outputs-durable-copy.png"), full_page=True)
        await context.close()
    assert not errors, "the page logged console errors:\n" + "\n".join(errors)
