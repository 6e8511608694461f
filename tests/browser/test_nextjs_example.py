"""The Next.js example (examples/nextjs) as its users get it: installed by `npm ci`, built by
`next build`, served by `next start` on its own origin against the live service, and driven in
Chromium: Generate, then the job goes from queued to running to its finished image, followed live by
useFalJob over the service's event stream (another origin: CORS) with the token the app's server
minted. The app's server made the job with the end user's tag and hands stream tokens only for that
user's jobs.

Selected with `-m nextjs` (left out with `-m "not nextjs"`). On two busy cores the first run installs
next (`npm ci`, about 30 s) and builds the app (`next build`, about 30 s); later runs reuse node_modules
while the lock file is the same, and `next build` reuses its cache in .next/cache (about 5 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser, create_user
from service.cli.node import NEXTJS_EXAMPLE, build_client, ensure_node_modules, node_env, node_executable
from service.emulator import FAULTS_KEY, FalEmulator, create_emulator_app
from service.emulator.wire import SubmitResponse
from service.testing import loopback_socket
from tests.browser.conftest import SCREENSHOTS, TIMEOUT_MS, watch_console
from tests.browser.test_accessibility import axe_violations
from tests.conftest import FAL_KEY, RunningServer, bearer, fal_settings, serve

pytestmark = pytest.mark.nextjs
live = pytest.mark.asyncio(loop_scope="session")

BUILD_LIMIT_S = 420
START_LIMIT_S = 60


class HoldingFal(FalEmulator):
    """fal that holds every request at the end of its queue and of its run until the test releases it,
    so that the page's states are seen one by one whatever the machine's load (the app sends only a
    prompt: the hold is this fal's own)."""

    async def submit(self, model_path: str, model_input: dict[str, Any], webhook_url: str | None,
                     lifecycle_preference: str | None = None) -> SubmitResponse:
        held = {**model_input, FAULTS_KEY: {"queue_ms": 0, "hold": True}}
        return await super().submit(model_path, held, webhook_url, lifecycle_preference)


def _run_next(*args: str, limit_s: float) -> None:
    done = subprocess.run([str(node_executable()), str(NEXTJS_EXAMPLE / "node_modules" / ".bin" / "next"), *args],
                          cwd=NEXTJS_EXAMPLE, env=node_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=limit_s, check=False)
    assert done.returncode == 0, f"next {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"


def build_example() -> None:
    """npm ci (unless node_modules came from this lock), then next build, every time (Turbopack's
    own cache in .next/cache makes a build of unchanged sources take seconds)."""
    build_client()  # the example links clients/js: its dist/ must be this src/'s
    ensure_node_modules(NEXTJS_EXAMPLE)
    _run_next("build", limit_s=BUILD_LIMIT_S)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def holding_fal() -> AsyncIterator[HoldingFal]:
    holder: dict[str, HoldingFal] = {}

    def build(url: str) -> object:
        holder["emulator"] = HoldingFal(url, FAL_KEY, retry_schedule_s=(0.05, 0.1, 0.2, 0.4), webhook_timeout_s=5)
        return create_emulator_app(holder["emulator"])

    running = await serve(build)
    yield holder["emulator"]
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def example_service(database_url: str, holding_fal: HoldingFal) -> AsyncIterator[RunningServer]:
    """The service with webhooks, copying outputs from this fal into a folder of its own."""
    from service.app import create_app

    media = tempfile.mkdtemp(prefix="fal-jobs-nextjs-media-")
    running = await serve(lambda url: create_app(fal_settings(
        database_url, holding_fal, url, MEDIA_DIR=media, EMULATOR_MEDIA_URL=holding_fal.media_base)))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app_owner(pool: asyncpg.Pool) -> NewUser:
    """The app's account on the service: its server holds this API key, for all of its end users."""
    return await create_user(pool, f"nextjs-{uuid.uuid4().hex[:10]}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def example_url(example_service: RunningServer, app_owner: NewUser) -> AsyncIterator[str]:
    """`next start` on a free port of its own (so another origin than the service's), once built."""
    await asyncio.to_thread(build_example)
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = node_env({**os.environ, "FAL_JOBS_URL": example_service.url, "FAL_JOBS_API_KEY": app_owner.api_key})
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(node_executable()), str(NEXTJS_EXAMPLE / "node_modules" / ".bin" / "next"), "start",
             "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=NEXTJS_EXAMPLE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            await _until_serving(url, process, log)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait)


async def _until_serving(url: str, process: subprocess.Popen[bytes], log: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            async with asyncio.timeout(START_LIMIT_S):
                while True:
                    if process.poll() is not None:
                        log.seek(0)
                        raise AssertionError(f"next start exited ({process.returncode}):\n{log.read().decode()[-4000:]}")
                    try:
                        if (await client.get(f"{url}/api/stream-token")).status_code == 401:  # no user yet
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
        except TimeoutError:
            log.seek(0)
            raise AssertionError(f"next start did not serve within {START_LIMIT_S} s:\n{log.read().decode()[-4000:]}") from None


@pytest_asyncio.fixture(loop_scope="session")
async def browser_context(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, list[str]]]:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    yield context, errors
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for index, page in enumerate(context.pages):
        await page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-{index + 1}.png"), full_page=True)
    await context.close()
    assert not errors, "the example logged console errors:\n" + "\n".join(errors)


@live
@pytest.mark.timeout(BUILD_LIMIT_S + START_LIMIT_S + 120)
async def test_the_example_shows_a_job_live_from_queued_to_its_image(
    browser_context: tuple[Any, list[str]], example_url: str, example_service: RunningServer, app_owner: NewUser,
    holding_fal: HoldingFal, http: httpx.AsyncClient,
) -> None:
    from playwright.async_api import expect

    context, errors = browser_context
    page = await context.new_page()
    watch_console(page, errors, "nextjs")
    await page.goto(example_url)
    await page.get_by_label("Prompt").fill("a lighthouse at dusk")
    await page.get_by_role("button", name="Generate").click()

    card = page.get_by_test_id("job")
    await expect(card).to_have_attribute("data-status", "pending")
    await expect(card).to_have_attribute("data-connection", "live")  # the service's stream, from this other origin
    await expect(page.get_by_test_id("job-status")).to_have_text("Queued")
    request_id = await card.get_attribute("data-request-id")
    assert request_id

    # The app's server made it with its API key and this browser's end-user tag.
    job = (await http.get(f"{example_service.url}/api/jobs/{request_id}", headers=bearer(app_owner))).json()
    user_id = next(cookie["value"] for cookie in await context.cookies() if cookie["name"] == "example_user")
    assert job["tags"] == [f"user:{user_id}"] and job["input"]["prompt"] == "a lighthouse at dusk"

    holding_fal.release(request_id)
    await expect(card).to_have_attribute("data-status", "in_progress")
    await expect(page.get_by_test_id("job-status")).to_have_text("Running")
    holding_fal.release(request_id)
    await expect(card).to_have_attribute("data-status", "completed")
    await expect(page.get_by_test_id("job-status")).to_have_text("Done")
    done = (await http.get(f"{example_service.url}/api/jobs/{request_id}", headers=bearer(app_owner))).json()
    image = page.get_by_test_id("job-image")
    await expect(image).to_have_attribute("src", done["result"]["images"][0]["url"])
    await expect(image).to_have_js_property("complete", True)
    assert await image.evaluate("img => img.naturalWidth") > 0, "the image loaded"
    await expect(card).to_have_attribute("data-connection", "closed")  # settled: the stream ended

    # Back later: the app's server lists the user's jobs by their tag, and a finished one needs no stream.
    await page.reload()
    again = page.locator(f'[data-request-id="{request_id}"]')
    await expect(again).to_have_attribute("data-status", "completed")
    await expect(again.get_by_test_id("job-image")).to_have_attribute("src", done["result"]["images"][0]["url"])
    assert await axe_violations(page) == []


async def _opens(service: RunningServer, request_id: str, token: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "GET", f"{service.url}/api/jobs/{request_id}/events?token={token}") as answer:
        return answer.status_code


@live
@pytest.mark.timeout(BUILD_LIMIT_S + START_LIMIT_S + 120)
async def test_the_example_gives_each_user_a_token_for_their_own_jobs_only(
    browser: Any, example_url: str, example_service: RunningServer, holding_fal: HoldingFal,
) -> None:
    alice, bob = await browser.new_context(), await browser.new_context()
    made: list[str] = []
    try:
        assert (await bob.request.get(f"{example_url}/api/stream-token")).status == 401, "no user yet: no token"
        for context, prompt in ((alice, "a red fox"), (bob, "a blue fox")):
            answer = await context.request.post(f"{example_url}/api/generate", data={"prompt": prompt, "type": "image"})
            assert answer.status == 201, await answer.text()
            made.append((await answer.json())["request_id"])
        alices, bobs = made

        alice_token = (await (await alice.request.get(f"{example_url}/api/stream-token")).json())["token"]
        bob_token = (await (await bob.request.get(f"{example_url}/api/stream-token")).json())["token"]
        assert await _opens(example_service, alices, alice_token) == 200
        assert await _opens(example_service, bobs, bob_token) == 200
        assert await _opens(example_service, alices, bob_token) == 401, "one API key, but bob's token opens only bob's jobs"
        assert await _opens(example_service, bobs, alice_token) == 401

        refused = await alice.request.post(f"{example_url}/api/generate", data={"prompt": " "})
        assert refused.status == 400 and "prompt" in (await refused.json())["message"]
    finally:
        for request_id in made:  # let fal finish them: nothing held is left behind
            holding_fal.release(request_id)
            holding_fal.release(request_id)
        await alice.close()
        await bob.close()
