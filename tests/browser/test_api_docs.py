"""The API reference (/schema) in Chromium against the live service, with its real CSP: Swagger UI
starts, lists every operation of /schema/openapi.json, runs one, and the page breaks no CSP rule,
logs no console error and asks for nothing outside the service."""

from __future__ import annotations

from typing import Any

import httpx

from service.auth.api_keys import NewUser
from tests.conftest import RunningServer

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Every CSP violation the page meets, recorded from its first script on (Playwright's init scripts
# run whatever the page's CSP says, so the recorder itself is not blocked).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.effectiveDirective} blocked ${event.blockedURI || "inline"} (${event.sourceFile}:${event.lineNumber})`);
});
"""

LISTED_OPERATIONS = """
() => [...document.querySelectorAll(".opblock")].map((block) => [
  block.querySelector(".opblock-summary-method").textContent.trim().toLowerCase(),
  block.querySelector(".opblock-summary-path").dataset.path,
])
"""


def expect_(locator: Any) -> Any:
    from playwright.async_api import expect

    return expect(locator)


def operation(page: Any, method: str, path: str) -> Any:
    return page.locator(f".opblock-{method}", has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))


async def try_it(page: Any, method: str, path: str) -> Any:
    """Open an operation, press Try it out and Execute; its block, holding the live answer."""
    block = operation(page, method, path)
    await block.locator(".opblock-summary").click()
    await block.get_by_role("button", name="Try it out").click()
    await block.get_by_role("button", name="Execute").click()
    return block


async def test_the_reference_lists_every_operation_under_the_real_csp(
    signed_in: Any, service: RunningServer, http: httpx.AsyncClient, user: NewUser,
) -> None:
    document = (await http.get(f"{service.url}/schema/openapi.json")).json()
    operations = {(method, path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}
    assert len(operations) > 10, operations  # the document is the real one, not an empty stand-in

    page, _ = await signed_in.fresh_page()  # its console errors (CSP reports among them) fail the test
    outside: list[str] = []

    async def refuse_outside(route: Any) -> None:
        outside.append(route.request.url)
        await route.abort()

    # No network beyond the service: a request anywhere else fails, and is recorded.
    await page.context.route(lambda url: not url.startswith(service.url), refuse_outside)
    await page.add_init_script(RECORD_VIOLATIONS)
    answer = await page.goto(f"{service.url}/schema")
    assert answer is not None and answer.status == 200
    await expect_(page.locator(".swagger-ui .info .title")).to_contain_text("fal-jobs")
    await expect_(page.locator(".opblock")).to_have_count(len(operations))
    listed = await page.evaluate(LISTED_OPERATIONS)
    assert sorted(map(tuple, listed)) == sorted(operations)

    # Calls run from the page: one open, then one with an API key given through Authorize.
    health = await try_it(page, "get", "/healthz")
    await expect_(health.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
    await expect_(health.locator(".live-responses-table")).to_contain_text('"status": "ok"')
    await page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".dialog-ux")
    await dialog.locator("input").first.fill(user.api_key)
    await dialog.get_by_role("button", name="Apply credentials").first.click()
    await dialog.get_by_role("button", name="Close", exact=True).first.click()
    jobs = await try_it(page, "get", "/api/jobs")
    await expect_(jobs.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
    await expect_(jobs.locator(".live-responses-table")).to_contain_text('"jobs"')
    # The schemas section draws widgets of its own (expanders, type tags): open one too.
    await page.locator("section.models").get_by_role("button", name="ErrorBody", exact=True).click()
    await expect_(page.locator("section.models")).to_contain_text("The one error shape of every failure.")

    assert await page.evaluate("window.__violations") == []
    assert outside == []
