"""The TypeScript client's React hooks in Chromium, under StrictMode (React's development build,
which mounts, unmounts and mounts again): a job shown live from queued to its image, one stream
per mounted hook as the service counts them, and none left once the component is gone.

The page (clients/js/test/react/app.jsx, bundled by esbuild) is served on the service's own origin
by Playwright, and gets its stream tokens from this test through `window.mintToken`: the browser
never holds the API key.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser, hash_key
from service.auth.callers import KEY
from service.cli.node import JS_CLIENT, ensure_node_modules, node_env, node_executable
from service.emulator import FalEmulator
from tests.browser.conftest import SCREENSHOTS, TIMEOUT_MS, watch_console
from tests.conftest import RunningServer, bearer

live = pytest.mark.asyncio(loop_scope="session")

HELD = {"fal_emulator": {"queue_ms": 0, "hold": True}}
PAGE = "/__react_hooks__/"
HTML = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>hooks</title></head>
<body><div id="root"></div><script type="module" src="{PAGE}app.js"></script></body></html>"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hooks_bundle() -> str:
    """The page's script: the package built (npm ci's prepare, then tsc) and bundled with React."""
    await asyncio.to_thread(ensure_node_modules)
    outfile = Path(tempfile.mkdtemp(prefix="fal-jobs-react-")) / "app.js"
    for command in ([str(JS_CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
                    ["test/react/build.js", str(outfile)]):
        process = await asyncio.create_subprocess_exec(
            str(node_executable()), *command, cwd=JS_CLIENT, env=node_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        assert process.returncode == 0, f"{' '.join(command)} failed:\n{output.decode()}"
    return outfile.read_text()


@pytest_asyncio.fixture(loop_scope="session")
async def hooks_page(browser: Any, service: RunningServer, user: NewUser, http: httpx.AsyncClient,
                     hooks_bundle: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 900, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    watch_console(page, errors, "hooks")

    async def mint(scope: str, request_id: str | None = None) -> dict[str, Any]:
        body = {"scope": scope, **({"request_id": request_id} if request_id else {})}
        answer = await http.post(f"{service.url}/api/stream-tokens", json=body, headers=bearer(user))
        assert answer.status_code == 201, answer.text
        return answer.json()

    async def serve_page(route: Any) -> None:
        if route.request.url.endswith("app.js"):
            await route.fulfill(body=hooks_bundle, content_type="text/javascript")
        else:
            await route.fulfill(body=HTML, content_type="text/html")

    await page.expose_function("mintToken", mint)
    await page.route(f"{service.url}{PAGE}**", serve_page)
    await page.goto(f"{service.url}{PAGE}")
    await page.wait_for_function("() => window.falTest !== undefined")
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()
    assert not errors, "the page logged console errors:\n" + "\n".join(errors)


def streams_held(service: RunningServer, user: NewUser) -> Callable[[], Awaitable[int]]:
    """The user's streams open in the service, as it counts them (tokens open them on the key's behalf)."""
    admission = service.app.state.admission

    async def held() -> int:
        return int(admission.held(KEY + hash_key(user.api_key), "stream"))

    return held


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT_MS / 1000):
            while not await condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {TIMEOUT_MS} ms: {what}") from None


async def create(http: httpx.AsyncClient, service: RunningServer, user: NewUser, held: bool) -> str:
    body = {"type": "image", "model_id": "fal-ai/flux/schnell", "input": {"prompt": "a red fox", **(HELD if held else {})}}
    answer = await http.post(f"{service.url}/api/jobs", json=body, headers=bearer(user))
    assert answer.status_code == 202, answer.text
    return str(answer.json()["request_id"])


@live
async def test_use_fal_job_shows_a_job_live_with_one_stream_under_strict_mode(
    hooks_page: Any, service: RunningServer, user: NewUser, http: httpx.AsyncClient, fal: FalEmulator,
) -> None:
    from playwright.async_api import expect

    held = streams_held(service, user)
    request_id = await create(http, service, user, held=True)
    await hooks_page.evaluate("id => window.falTest.showJob(id)", request_id)
    job = hooks_page.get_by_test_id("job")
    await expect(job).to_have_attribute("data-connection", "live")
    await expect(hooks_page.get_by_test_id("job-status")).to_have_text("pending")
    # StrictMode mounted the hook twice: the first mount's subscription closed before it opened.
    assert await hooks_page.evaluate("window.streams") == {"opened": 1, "open": 1}
    assert await held() == 1

    fal.release(request_id)
    await expect(hooks_page.get_by_test_id("job-status")).to_have_text("in_progress")
    fal.release(request_id)
    await expect(hooks_page.get_by_test_id("job-status")).to_have_text("completed")
    done = (await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user))).json()
    await expect(hooks_page.get_by_test_id("job-image")).to_have_attribute("href", done["result"]["images"][0]["url"])
    await expect(job).to_have_attribute("data-connection", "closed")  # settled: the stream ended
    assert await hooks_page.evaluate("window.streams") == {"opened": 1, "open": 0}
    await until(lambda: _is(held, 0), "the service let the stream go")


@live
async def test_unmounting_closes_the_hooks_streams(
    hooks_page: Any, service: RunningServer, user: NewUser, http: httpx.AsyncClient, fal: FalEmulator,
) -> None:
    from playwright.async_api import expect

    held = streams_held(service, user)
    request_id = await create(http, service, user, held=True)
    await hooks_page.evaluate("id => { window.falTest.showJob(id); window.falTest.showList(); }", request_id)
    await expect(hooks_page.get_by_test_id("job")).to_have_attribute("data-connection", "live")
    await expect(hooks_page.get_by_test_id("jobs")).to_have_attribute("data-connection", "live")
    assert await hooks_page.evaluate("window.streams") == {"opened": 2, "open": 2}
    await until(lambda: _is(held, 2), "the service holds the two streams")

    # useFalJobs: a job made now appears, and follows its states.
    other = await create(http, service, user, held=False)
    item = hooks_page.locator(f'[data-request-id="{other}"]')
    await expect(item).to_have_attribute("data-status", "completed")

    await hooks_page.evaluate("() => { window.falTest.hideJob(); window.falTest.hideList(); }")
    await expect(hooks_page.get_by_test_id("job")).to_have_count(0)
    assert await hooks_page.evaluate("window.streams") == {"opened": 2, "open": 0}
    await until(lambda: _is(held, 0), "the service saw both streams close")
    fal.release(request_id)
    fal.release(request_id)


async def _is(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() == expected
