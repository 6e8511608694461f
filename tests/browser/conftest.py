"""Browser tests: Debian's Chromium driven by Playwright (async API, in the suite's event loop, so
the in-process uvicorn servers keep serving while the browser waits).

Each test gets `signed_in(...)`, which opens a fresh browser context, signs a new user in through
a one-time link, and records console errors; at the end of the test every page it opened leaves a
screenshot under test-output/screenshots/ and the test fails if any console error was logged.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser, create_user
from service.auth.browser_sessions import issue_sign_in_token
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 20_000
"""Generous on purpose: a loaded 2-core machine runs Postgres, two servers and Chromium at once."""


def find_chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.fail(
            "Chromium is missing: the browser tests drive the system's Chromium (not a Playwright download). "
            "Install it with `apt-get install -y chromium` (Debian/Ubuntu), so that `chromium` is on PATH.",
            pytrace=False,
        )
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[object]:
    executable = find_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `pip install -e '.[dev]'` (never `playwright install`).", pytrace=False)
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class SignedIn:
    user: NewUser
    context: object
    page: object
    console_errors: list[str] = field(default_factory=list)


def watch_console(page: object, errors: list[str], label: str) -> None:
    def on_console(message: object) -> None:
        if message.type == "error":  # type: ignore[attr-defined]
            location = message.location.get("url", "")  # type: ignore[attr-defined]
            errors.append(f"[{label}] console.error: {message.text} ({location})")  # type: ignore[attr-defined]

    page.on("console", on_console)  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: errors.append(f"[{label}] uncaught: {error}"))  # type: ignore[attr-defined]


@pytest_asyncio.fixture(loop_scope="session")
async def signed_in(
    request: pytest.FixtureRequest, browser: object, service: RunningServer, pool: asyncpg.Pool,
) -> AsyncIterator[Callable[..., Awaitable[SignedIn]]]:
    """`await signed_in(viewport=...)`: a new user, signed in in a fresh browser context."""
    from playwright.async_api import expect

    opened: list[SignedIn] = []
    unsigned: list[tuple[object, object, list[str]]] = []

    async def sign_in(*, viewport: dict[str, int] | None = None, name: str | None = None) -> SignedIn:
        user = await create_user(pool, name or f"browser-{uuid.uuid4().hex[:10]}")
        context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900})  # type: ignore[attr-defined]
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        session = SignedIn(user=user, context=context, page=page)
        watch_console(page, session.console_errors, user.name)
        opened.append(session)
        token = await issue_sign_in_token(pool, user.user_id)
        await page.goto(f"{service.url}/?token={token}")
        await expect(page.get_by_test_id("user-name")).to_have_text(user.name)
        await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        return session

    async def fresh_page() -> tuple[object, list[str]]:
        """A page in a context with no session at all."""
        context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        errors: list[str] = []
        watch_console(page, errors, "signed-out")
        unsigned.append((context, page, errors))
        return page, errors

    sign_in.fresh_page = fresh_page  # type: ignore[attr-defined]
    yield sign_in

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test_name = request.node.name
    pages = [(s.page, s.context) for s in opened] + [(p, c) for c, p, _ in unsigned]
    for index, (page, context) in enumerate(pages):
        suffix = "" if index == 0 else f"-{index + 1}"
        try:
            await page.screenshot(path=str(SCREENSHOTS / f"{test_name}{suffix}.png"), full_page=True)  # type: ignore[attr-defined]
        finally:
            await context.close()  # type: ignore[attr-defined]
    errors = [e for s in opened for e in s.console_errors] + [e for *_, errs in unsigned for e in errs]
    assert not errors, "the page logged console errors:\n" + "\n".join(errors)
