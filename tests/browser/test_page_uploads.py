"""The page's input image for a model that starts from one (image-to-video): dropped, pasted or
chosen, previewed, uploaded with a progress bar, named in the job as `upload:<id>`, and shown on
the job's card beside the video the model made from it (the emulator fetched our file)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import httpx

from service.emulator import FalEmulator
from tests.browser.test_accessibility import axe_violations
from tests.browser.test_page import card, expect_
from tests.conftest import RunningServer, bearer
from tests.test_uploads import I2V, solid_png

MAKE_FILES = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  return data;
}"""


async def files(page: Any, body: bytes, name: str, content_type: str = "image/png") -> Any:
    return await page.evaluate_handle(MAKE_FILES, [base64.b64encode(body).decode(), name, content_type])


async def choose_image_model(page: Any) -> None:
    await page.get_by_test_id("type-video").check()
    await page.get_by_test_id("model").select_option(I2V)
    await expect_(page.get_by_test_id("image-input")).to_be_visible()
    await expect_(page.get_by_test_id("aspect-ratio-field")).to_be_hidden()


async def submit_prompt(page: Any, prompt: str) -> Any:
    await page.get_by_test_id("prompt").fill(prompt)
    async with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as info:
        await page.get_by_test_id("submit").click()
    return await info.value


async def test_a_dropped_png_uploads_with_progress_and_becomes_the_video(
    signed_in: Any, service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator,
) -> None:
    session = await signed_in()
    page = session.page
    await choose_image_model(page)
    png = solid_png(32, 32, (200, 40, 90))
    release = asyncio.Event()

    async def hold_upload(route: Any) -> None:  # the bar is seen while the upload is under way
        await release.wait()
        await route.continue_()

    await page.route("**/api/uploads", hold_upload)
    dropped = await files(page, png, "red.png")
    await page.locator("main").dispatch_event("dragover", {"dataTransfer": dropped})
    await page.locator("main").dispatch_event("drop", {"dataTransfer": dropped})
    picker = page.get_by_test_id("image-input")
    await expect_(picker).to_have_attribute("data-state", "uploading")
    await expect_(page.get_by_test_id("upload-progress")).to_be_visible()
    await expect_(page.get_by_test_id("upload-status")).to_contain_text("Uploading red.png")
    await expect_(page.get_by_test_id("image-preview")).to_have_attribute("src", f"data:image/png;base64,{base64.b64encode(png).decode()}")
    assert await axe_violations(page) == []
    release.set()
    await expect_(picker).to_have_attribute("data-state", "uploaded")
    await expect_(page.get_by_test_id("upload-progress")).to_have_attribute("value", "100")
    await expect_(page.get_by_test_id("upload-status")).to_have_text("Uploaded red.png (32×32).")

    response = await submit_prompt(page, "the red square moves")
    assert response.status == 202, await response.text()
    created = await response.json()
    request_id, image_url = created["request_id"], created["input"]["image_url"]
    assert image_url.startswith("upload:")
    job = card(page, request_id)
    input_image = job.get_by_test_id("job-input-image")
    await expect_(input_image).to_have_attribute("src", f"/api/uploads/{image_url.removeprefix('upload:')}")
    await expect_(job).to_have_attribute("data-status", "completed")
    await expect_(job.get_by_test_id("job-video")).to_have_count(1)
    assert await input_image.evaluate("img => img.complete && img.naturalWidth") == 32  # the cookie opened it
    # The model fetched exactly our file and made the video from it (its colour, in the name).
    assert [f.sha256 for f in fal.input_fetches if f.request_id == request_id] == [hashlib.sha256(png).hexdigest()]
    done = (await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(session.user))).json()
    assert done["result"]["video"]["file_name"] == "from-c8285a.mp4", done
    assert await axe_violations(page) == []


async def test_a_file_that_is_no_image_is_refused_then_a_pasted_one_is_used(signed_in: Any) -> None:
    session = await signed_in()
    page = session.page
    await choose_image_model(page)
    jobs_posted: list[str] = []
    page.on("request", lambda r: jobs_posted.append(r.url) if r.method == "POST" and r.url.endswith("/api/jobs") else None)
    # An HTML page named .png: the browser calls it image/png, the service reads its bytes (415).
    await page.get_by_test_id("image-file").set_input_files(
        files=[{"name": "page.png", "mimeType": "image/png", "buffer": b"<!doctype html><p>not an image</p>"}])
    await expect_(page.get_by_test_id("image-input")).to_have_attribute("data-state", "failed")
    await page.get_by_test_id("prompt").fill("from a broken file")
    await page.get_by_test_id("submit").click()
    await expect_(page.get_by_test_id("form-error")).to_contain_text("could not be uploaded")
    assert jobs_posted == []
    # A pasted image replaces it.
    pasted = await files(page, solid_png(8, 8, (0, 90, 200)), "image.png")
    await page.get_by_test_id("prompt").evaluate(
        "(el, data) => el.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}))",
        pasted)
    await expect_(page.get_by_test_id("image-input")).to_have_attribute("data-state", "uploaded")
    response = await submit_prompt(page, "from a pasted image")
    assert response.status == 202, await response.text()
    request_id = (await response.json())["request_id"]
    await expect_(card(page, request_id)).to_have_attribute("data-status", "completed")
    # Chromium logs the 415 this test provokes on purpose; nothing else may log.
    session.console_errors[:] = [e for e in session.console_errors if not ("415" in e and "/api/uploads" in e)]


UPLOAD_IN_PAGE = """async ([b64, csrf]) => {
  const { uploadFile, FalJobsError } = await import("/static/vendor/fal-jobs-client.js");
  const file = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: "image/png" });
  const fractions = [];
  const upload = await uploadFile(file, { csrfToken: csrf, onProgress: (p) => fractions.push(p.fraction) });
  const refusal = await uploadFile(file, { csrfToken: "not-the-token" }).catch((e) => e);
  const aborted = await uploadFile(file, { csrfToken: csrf, signal: AbortSignal.abort() }).catch((e) => e);
  return { upload, fractions, refused: [refusal instanceof FalJobsError, refusal.status, refusal.error],
           aborted: aborted.name };
}"""


async def test_the_package_uploader_in_the_browser(signed_in: Any) -> None:
    """uploadFile (the page's uploader, from @fal-jobs/client) over Chromium's own XMLHttpRequest:
    the session cookie and X-CSRF-Token, progress up to the whole file, typed refusals, abort."""
    session = await signed_in()
    page = session.page
    csrf = await page.evaluate("() => fetch('/api/session').then((r) => r.json()).then((s) => s.csrf_token)")
    png = solid_png(40, 30, (1, 2, 3))
    answer = await page.evaluate(UPLOAD_IN_PAGE, [base64.b64encode(png).decode(), csrf])
    upload = answer["upload"]
    assert (upload["content_type"], upload["width"], upload["height"]) == ("image/png", 40, 30)
    assert upload["sha256"] == hashlib.sha256(png).hexdigest()
    assert answer["fractions"] and answer["fractions"][-1] == 1, answer["fractions"]
    assert answer["refused"] == [True, 403, "forbidden"], answer["refused"]
    assert answer["aborted"] == "AbortError"
    session.console_errors[:] = [e for e in session.console_errors if not ("403" in e and "/api/uploads" in e)]
