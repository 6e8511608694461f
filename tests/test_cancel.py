"""An honest cancel: fal's "Request was cancelled" is `cancelled`, and a retried cancel re-reads."""

from __future__ import annotations

import httpx

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from service.fal.gateway import FalGateway
from tests.conftest import FAL_KEY, RunningServer, bearer
from tests.test_fal_round_trip import submit


async def cancel_at_fal(fal: FalEmulator, request_id: str) -> None:
    """What a first cancel that reached fal but not our database leaves behind (or a cancel made
    at fal by other means): fal has cancelled the request, our row is still open."""
    gateway = FalGateway(key=FAL_KEY, queue_url=fal.base_url)
    try:
        assert await gateway.cancel("fal-ai/flux/dev", request_id) == "requested"
    finally:
        await gateway.aclose()


async def test_a_request_cancelled_at_fal_ends_cancelled_not_failed(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    request_id = (await submit(http, service.url, user, queue_ms=5000))["request_id"]
    await cancel_at_fal(fal, request_id)  # fal sends no webhook for it: the follower sees it
    job = (await http.get(f"{service.url}/api/jobs/{request_id}?wait=10", headers=bearer(user))).json()
    assert job["status"] == "cancelled", job


async def test_a_retried_cancel_answers_cancelled_not_already_completed(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    request_id = (await submit(http, service.url, user, queue_ms=5000))["request_id"]
    await cancel_at_fal(fal, request_id)
    retried = await http.post(f"{service.url}/api/jobs/{request_id}/cancel", headers=bearer(user))
    # Either this call records fal's cancellation (200), or the follower was quicker and the job
    # already reads cancelled (409 saying so); never "already completed", never failed.
    assert (retried.status_code, retried.json().get("status")) == (200, "cancelled") or (
        retried.status_code == 409 and "already cancelled" in retried.json()["message"]), retried.text
    job = (await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user))).json()
    assert job["status"] == "cancelled", job
