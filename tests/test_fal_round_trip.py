"""The fal round trip end to end: the service under uvicorn, the emulator on its own port, the real
fal-client between them, signed webhooks over real HTTP, the real Postgres."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from typing import Any

import asyncpg
import httpx
import pytest

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer

TERMINAL = ("completed", "failed", "cancelled")


async def submit(http: httpx.AsyncClient, url: str, user: NewUser, *, type: str = "image",
                 model_id: str = "fal-ai/flux/dev", **faults: Any) -> dict[str, Any]:
    model_input: dict[str, Any] = {"prompt": "a red fox in the snow"}
    if faults:
        model_input["fal_emulator"] = faults
    response = await http.post(f"{url}/api/jobs", json={"type": type, "model_id": model_id, "input": model_input},
                               headers=bearer(user))
    assert response.status_code == 202, response.text
    return response.json()


async def wait_until_terminal(http: httpx.AsyncClient, url: str, user: NewUser, request_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await http.get(f"{url}/api/jobs/{request_id}", headers=bearer(user))).json()
        if job["status"] in TERMINAL:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {request_id} still {job['status']} after {timeout}s")


async def events(pool: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT version, status, data FROM fal_job_events WHERE request_id = $1 ORDER BY id", request_id)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


async def test_image_job_completes_through_its_webhook(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    created = await submit(http, service.url, user, queue_ms=150, run_ms=200, logs=2)
    assert created["status"] == "pending" and created["mode"] == "webhook" and created["version"] == 1
    request_id = created["request_id"]
    assert created["links"] == {
        "self": f"/api/jobs/{request_id}", "events": f"/api/jobs/{request_id}/events",
        "result": f"/api/jobs/{request_id}/result", "cancel": f"/api/jobs/{request_id}/cancel",
    }
    job = await wait_until_terminal(http, service.url, user, request_id)
    assert job["status"] == "completed"
    image = job["result"]["images"][0]
    assert job["result"]["seed"] > 2**53
    png = (await http.get(image["url"])).content
    assert png_size(png) == (image["width"], image["height"])
    deliveries = fal.deliveries_for(request_id)
    assert [d.status_code for d in deliveries] == [200], "completed by one accepted webhook"
    statuses = [e["status"] for e in await events(pool, request_id)]
    assert statuses[0] == "pending" and statuses[-1] == "completed" and "in_progress" in statuses
    result = await http.get(f"{service.url}/api/jobs/{request_id}/result", headers=bearer(user))
    assert result.status_code == 200 and f'"seed":{job["result"]["seed"]}' in result.text


async def test_video_job_completes_through_its_webhook(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    created = await submit(http, service.url, user, type="video", model_id="fal-ai/kling-video/v2.1/master/text-to-video")
    job = await wait_until_terminal(http, service.url, user, created["request_id"])
    assert job["status"] == "completed"
    video = job["result"]["video"]
    assert video["content_type"] == "video/mp4"
    mp4 = (await http.get(video["url"])).content
    assert mp4[4:8] == b"ftyp" and len(mp4) == video["file_size"]
    assert [d.status_code for d in fal.deliveries_for(created["request_id"])] == [200]


async def test_without_app_url_the_service_follows_the_job_itself(polling_service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    created = await submit(http, polling_service.url, user, queue_ms=200, run_ms=200, logs=2)
    assert created["mode"] == "polling"
    job = await wait_until_terminal(http, polling_service.url, user, created["request_id"])
    assert job["status"] == "completed" and job["result"]["images"]
    assert fal.deliveries_for(created["request_id"]) == [], "no webhook was asked for"
    statuses = [e["status"] for e in await events(pool, created["request_id"])]
    assert statuses[-1] == "completed" and "in_progress" in statuses


async def test_a_failed_run_in_polling_mode_is_failed_with_fals_detail(polling_service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    created = await submit(http, polling_service.url, user, outcome="error")
    job = await wait_until_terminal(http, polling_service.url, user, created["request_id"])
    assert job["status"] == "failed" and job["error"]
    assert job["result"], "fal's 422 detail is kept"


async def test_duplicates_and_shuffled_deliveries_across_jobs(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    rng = random.Random(7)
    outcomes = ["ok", "error", "ok", "ok", "error", "ok"]
    created = [
        await submit(http, service.url, user, duplicates=10, webhook_delay_ms=rng.randint(0, 300), outcome=outcome)
        for outcome in outcomes
    ]
    for job, outcome in zip(created, outcomes, strict=True):
        final = await wait_until_terminal(http, service.url, user, job["request_id"])
        assert final["status"] == ("completed" if outcome == "ok" else "failed")
    for job in created:
        request_id = job["request_id"]
        await fal.wait_until(lambda request_id=request_id: len(fal.deliveries_for(request_id)) >= 10)
        assert [d.status_code for d in fal.deliveries_for(request_id)] == [200] * 10, "every duplicate is ACKed"
        rows = await events(pool, request_id)
        assert [e["version"] for e in rows] == list(range(1, len(rows) + 1))
        terminal = [e for i, e in enumerate(rows) if e["status"] in TERMINAL and (i == 0 or rows[i - 1]["status"] not in TERMINAL)]
        assert len(terminal) == 1, "one event per accepted change: the nine duplicates added none"
        # What follows the terminal event is each output's copy settling: one event per output.
        after = rows[rows.index(terminal[0]) + 1:]
        assert len(after) <= len(terminal[0]["data"]["outputs"])
        assert all(e["status"] == terminal[0]["status"] for e in after)
        final = await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user))
        assert final.json()["version"] == rows[-1]["version"]


async def test_error_outcome_becomes_failed_with_the_422_detail(service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    created = await submit(http, service.url, user, outcome="error")
    job = await wait_until_terminal(http, service.url, user, created["request_id"])
    assert job["status"] == "failed"
    assert "422" in job["error"]
    assert job["result"]["detail"], "the validation detail fal sent is kept"
    result = await http.get(f"{service.url}/api/jobs/{created['request_id']}/result", headers=bearer(user))
    assert result.status_code == 409 and "failed" in result.json()["message"]


async def test_payload_error_fetches_the_result_from_fal(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser) -> None:
    created = await submit(http, service.url, user, outcome="payload_error")
    job = await wait_until_terminal(http, service.url, user, created["request_id"])
    assert job["status"] == "completed"
    assert job["result"]["images"], "the output came from fal's result endpoint, not the webhook"
    body = fal.webhook_body(fal.requests[created["request_id"]])
    assert body.payload is None and body.payload_error, "the webhook itself carried no output"


async def test_webhook_before_the_job_row_is_adopted(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    created = await submit(http, service.url, user, webhook_before_submit_response=True, queue_ms=0, run_ms=0)
    request_id = created["request_id"]
    deliveries = fal.deliveries_for(request_id)
    assert deliveries and deliveries[0].status_code == 200, "the early webhook was ACKed (parked), not refused"
    job = await wait_until_terminal(http, service.url, user, request_id)
    assert job["status"] == "completed" and job["result"]["images"]
    assert await pool.fetchval("SELECT count(*) FROM fal_early_webhooks WHERE request_id = $1", request_id) == 0


async def test_fal_refusing_the_submit_is_a_502_and_leaves_no_job(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    response = await http.post(
        f"{service.url}/api/jobs",
        json={"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x", "fal_emulator": {"submit_status": 500}}},
        headers=bearer(user),
    )
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "upstream_error" and "fal refused the submit: 500" in body["message"]
    assert await pool.fetchval("SELECT count(*) FROM fal_jobs WHERE user_id = $1", user.user_id) == 0


async def test_cancel_a_queued_job_then_conflicts(service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    created = await submit(http, service.url, user, queue_ms=5000)
    request_id = created["request_id"]
    cancelled = await http.post(f"{service.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await http.post(f"{service.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]

    done = await submit(http, service.url, user)
    await wait_until_terminal(http, service.url, user, done["request_id"])
    late = await http.post(f"{service.url}/api/jobs/{done['request_id']}/cancel", headers=bearer(user))
    assert late.status_code == 409 and "already completed" in late.json()["message"]


async def test_cancel_of_another_users_job_is_404(service: RunningServer, http: httpx.AsyncClient, user: NewUser, other_user: NewUser) -> None:
    created = await submit(http, service.url, user, queue_ms=2000)
    response = await http.post(f"{service.url}/api/jobs/{created['request_id']}/cancel", headers=bearer(other_user))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"type": "audio", "model_id": "fal-ai/flux/dev", "input": {}}, "type"),
        ({"type": "image", "model_id": "flux", "input": {}}, "model_id: 'flux' is not of the form owner/app[/path]"),
        ({"type": "image", "model_id": "someone/else", "input": {}}, "model_id: 'someone/else' is not allowed here"),
        ({"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x" * 70_000}}, "input: "),
        ({"type": "image", "model_id": "fal-ai/flux/dev", "input": [1, 2]}, "input"),
        ({"type": "image", "model_id": "fal-ai/flux/dev", "input": {}, "extra": 1}, "extra"),
        ({"model_id": "fal-ai/flux/dev"}, "type"),
    ],
)
async def test_bad_submissions_are_400_naming_the_field(service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, body: dict[str, Any], fragment: str) -> None:
    response = await http.post(f"{service.url}/api/jobs", json=body, headers=bearer(user))
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]
    assert await pool.fetchval("SELECT count(*) FROM fal_jobs WHERE user_id = $1", user.user_id) == 0


async def test_a_body_that_is_not_json_is_400(service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    response = await http.post(f"{service.url}/api/jobs", content=b"{not json", headers={**bearer(user), "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
