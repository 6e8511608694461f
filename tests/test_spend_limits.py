"""Limits that protect money hold across processes and cost nothing when they refuse; a create
retried with its Idempotency-Key is submitted to fal once. Counted at the emulator, over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.auth.api_keys import NewUser, hash_key
from service.auth.callers import KEY
from service.auth.users import UserLimits, set_limits
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer
from tests.processes import service_processes
from tests.sse import SseReader

LONG = {"fal_emulator": {"queue_ms": 120_000}}
"""Jobs that stay open for the whole test."""


def job_body(prompt: str = "a fox", **extra: object) -> dict[str, object]:
    return {"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": prompt, **LONG, **extra}}


def submitted(fal: FalEmulator, user_marker: str) -> int:
    return sum(1 for record in fal.submissions if record.request_id and
               fal.requests[record.request_id].input.get("prompt", "").startswith(user_marker))


async def test_a_retried_create_with_its_idempotency_key_answers_the_same_job_and_submits_once(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    url, marker = f"{service.url}/api/jobs", f"idem-{user.name}"
    headers = {**bearer(user), "Idempotency-Key": "create-1"}
    first = await http.post(url, headers=headers, json=job_body(marker))
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # The same body, its keys in another order and spaced otherwise, is the same request.
    again = await http.post(url, headers={**headers, "content-type": "application/json"},
                            content=f'{{"input": {{"fal_emulator": {{"queue_ms": 120000}}, "prompt": "{marker}"}},'
                                    f' "model_id": "fal-ai/flux/dev", "type": "image"}}'.encode())
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["request_id"] == first.json()["request_id"]
    assert submitted(fal, marker) == 1
    other_body = await http.post(url, headers=headers, json=job_body(marker + " and a hen"))
    assert other_body.status_code == 422 and other_body.json()["error"] == "idempotency_key_reused"
    other_key = await http.post(url, headers={**bearer(user), "Idempotency-Key": "create-2"}, json=job_body(marker))
    assert other_key.status_code == 202 and other_key.json()["request_id"] != first.json()["request_id"]
    assert submitted(fal, marker) == 2


async def test_an_idempotency_key_reused_for_another_model_or_type_answers_422_not_the_first_job(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    url, marker = f"{service.url}/api/jobs", f"idem-model-{user.name}"
    headers = {**bearer(user), "Idempotency-Key": "create-1"}
    first = await http.post(url, headers=headers, json=job_body(marker))
    assert first.status_code == 202
    same_input = job_body(marker)["input"]
    for model_id, job_type in (("fal-ai/flux/schnell", "image"), ("fal-ai/minimax/video-01", "video")):
        other = await http.post(url, headers=headers, json={"type": job_type, "model_id": model_id, "input": same_input})
        assert (other.status_code, other.json().get("error")) == (422, "idempotency_key_reused"), other.text
    assert submitted(fal, marker) == 1


async def test_twenty_racing_creates_with_one_key_submit_to_fal_once(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    marker = f"race-{user.name}"
    headers = {**bearer(user), "Idempotency-Key": f"race-{user.user_id}"}
    answers = await asyncio.gather(*(http.post(f"{service.url}/api/jobs", headers=headers, json=job_body(marker))
                                     for _ in range(20)))
    codes = sorted(answer.status_code for answer in answers)
    assert set(codes) <= {202, 409}, codes
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 409)
    created = {a.json()["request_id"] for a in answers if a.status_code == 202}
    assert len(created) == 1 and submitted(fal, marker) == 1
    # Whoever was told to retry gets the one job, replayed.
    retried = await http.post(f"{service.url}/api/jobs", headers=headers, json=job_body(marker))
    assert retried.status_code == 202 and retried.json()["request_id"] in created
    assert retried.headers["idempotent-replayed"] == "true"
    assert submitted(fal, marker) == 1


async def test_two_processes_together_keep_the_open_job_limit_under_fifty_concurrent_creates(
    database_url: str, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser, tmp_path: Path,
) -> None:
    async with service_processes(database_url, fal, tmp_path, MAX_OPEN_JOBS_PER_USER="10",
                                 MAX_JOBS_PER_MINUTE="1000") as processes:
        urls = [each.url for each in processes]
        marker = f"limit-{user.name}"
        answers = await asyncio.gather(*(
            http.post(f"{urls[i % 2]}/api/jobs", headers=bearer(user), json=job_body(f"{marker} {i}"))
            for i in range(50)
        ))
        codes = [answer.status_code for answer in answers]
        assert codes.count(202) == 10 and codes.count(429) == 40, codes
        refused = [a for a in answers if a.status_code == 429]
        assert all(a.headers["retry-after"].isdigit() for a in refused)
        assert "MAX_OPEN_JOBS_PER_USER" in refused[0].json()["message"]
        assert submitted(fal, marker) == 10, "a refused create must not reach fal"


async def test_jobs_per_minute_answers_429_with_retry_after_and_a_users_own_limit(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    await set_limits(pool, user.name, UserLimits(max_jobs_per_minute=2))
    marker = f"rate-{user.name}"
    for i in range(2):
        assert (await http.post(f"{service.url}/api/jobs", headers=bearer(user), json=job_body(f"{marker} {i}"))).status_code == 202
    over = await http.post(f"{service.url}/api/jobs", headers=bearer(user), json=job_body(f"{marker} 3"))
    assert over.status_code == 429 and "MAX_JOBS_PER_MINUTE" in over.json()["message"]
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert submitted(fal, marker) == 2


async def test_streams_and_waits_per_key_are_limited(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    await set_limits(pool, user.name, UserLimits(max_streams=2))
    job = (await http.post(f"{service.url}/api/jobs", headers=bearer(user), json=job_body("streams"))).json()
    events = f"{service.url}/api/jobs/{job['request_id']}/events"
    async with SseReader(http, events, bearer(user)) as one, SseReader(http, f"{service.url}/api/events", bearer(user)) as two:
        await one.next_job()
        assert (await two.next()).event == "ready"
        third = await http.get(events, headers=bearer(user))
        assert third.status_code == 429 and "MAX_STREAMS_PER_USER" in third.json()["message"]
        assert third.headers["retry-after"].isdigit()
    # Closed streams give their places back (the server notices the disconnect).
    async with asyncio.timeout(10):
        while True:
            async with SseReader(http, events, bearer(user)) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.05)
    url = f"{service.url}/api/jobs/{job['request_id']}?wait=30"
    waits = [asyncio.ensure_future(http.get(url, headers=bearer(user))) for _ in range(2)]
    async with asyncio.timeout(10):
        while service.app.state.admission.held(KEY + hash_key(user.api_key), "wait") < 2:
            await asyncio.sleep(0.02)
    third_wait = await http.get(url, headers=bearer(user))
    assert third_wait.status_code == 429 and third_wait.headers["retry-after"].isdigit()
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)


@pytest.mark.parametrize("limit", ["0", "-1", "nan", "inf"])
def test_limit_settings_must_be_positive_whole_numbers(limit: str) -> None:
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"^MAX_OPEN_JOBS_PER_USER: must be a whole number above 0"):
        load_settings({"MAX_OPEN_JOBS_PER_USER": limit}, dotenv=Path("/nonexistent/.env"))


class DropFirstResponse(httpx.AsyncBaseTransport):
    """Real HTTP to the service, but the first answer is lost on the way back (a dropped
    connection after the server did the work): what makes a naive retry pay twice."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.dropped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        if request.method == "POST" and self.dropped == 0:
            await response.aread()
            self.dropped += 1
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_the_python_client_retries_a_create_safely_after_a_lost_answer(
    service: RunningServer, fal: FalEmulator, user: NewUser,
) -> None:
    from service.client import FalJobsClient

    transport = DropFirstResponse()
    marker = f"client-{user.name}"
    async with httpx.AsyncClient(transport=transport, timeout=30) as http, \
            FalJobsClient(service.url, user.api_key, http=http, reconnect_delay_s=0.01) as client:
        job = await client.create_job("image", "fal-ai/flux/dev", {"prompt": marker, **LONG})
    assert transport.dropped == 1 and job.status == "pending"
    assert submitted(fal, marker) == 1, "the retry must answer the first job, not submit a second"


async def test_every_refusal_by_a_limit_shows_in_the_metrics(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    from service import metrics

    def refused(limit: str) -> float:
        return metrics.LIMIT_REFUSALS.labels(limit)._value.get()

    before = refused("jobs_per_minute"), refused("streams")
    await set_limits(pool, user.name, UserLimits(max_jobs_per_minute=1, max_streams=1))
    assert (await http.post(f"{service.url}/api/jobs", headers=bearer(user), json=job_body("m1"))).status_code == 202
    assert (await http.post(f"{service.url}/api/jobs", headers=bearer(user), json=job_body("m2"))).status_code == 429
    async with SseReader(http, f"{service.url}/api/events", bearer(user)) as one:
        assert (await one.next()).event == "ready"
        assert (await http.get(f"{service.url}/api/events", headers=bearer(user))).status_code == 429
    assert (refused("jobs_per_minute"), refused("streams")) == (before[0] + 1, before[1] + 1)
    scraped = (await http.get(f"{service.url}/metrics")).text
    assert 'fal_jobs_limit_refusals_total{limit="streams"}' in scraped
