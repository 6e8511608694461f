"""Errors that say what to do, over real HTTP against the live service: a body that is not JSON, a
value outside an enum, a field in the wrong place, a method a route lacks, an output asked for too
early; and the 202's Location."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from service.auth.api_keys import NewUser
from tests.conftest import bearer
from tests.test_read_api import assert_error, make_job

IMAGE = {"type": "image", "model_id": "fal-ai/flux/dev"}


def json_headers(user: NewUser) -> dict[str, str]:
    return {**bearer(user), "Content-Type": "application/json"}


@pytest.mark.parametrize("body", ['{"type": "image",', '{"type": image}', "{'type': 'image'}"])
async def test_a_body_that_is_not_json_says_so(service_url: str, http: httpx.AsyncClient, user: NewUser, body: str) -> None:
    response = await http.post(f"{service_url}/api/jobs", content=body, headers=json_headers(user))
    assert_error(response, 400, "body: not valid JSON")
    assert "send one JSON object" in response.json()["message"]


async def test_a_missing_body_says_so(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    response = await http.post(f"{service_url}/api/jobs", content=b"", headers=json_headers(user))
    assert_error(response, 400, "body: missing; send a JSON object")


async def test_an_enum_error_lists_the_allowed_values(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    job = await http.post(f"{service_url}/api/jobs", json={**IMAGE, "type": "picture"}, headers=bearer(user))
    assert_error(job, 400, "type: Invalid enum value 'picture'; expected one of 'image', 'video'")
    # Any Literal field of any body, not only a job's type.
    token = await http.post(f"{service_url}/api/stream-tokens", json={"scope": "everything"}, headers=bearer(user))
    assert_error(token, 400, "scope: Invalid enum value 'everything'; expected one of 'job', 'tag', 'user'")


async def test_a_prompt_beside_input_is_told_to_go_inside(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    response = await http.post(f"{service_url}/api/jobs", json={**IMAGE, "prompt": "a red fox"}, headers=bearer(user))
    assert_error(response, 400, "body: unknown field `prompt`; model parameters go inside `input`")
    assert '"input": {"prompt": ' in response.json()["message"]


async def test_an_unknown_field_elsewhere_names_the_fields(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    response = await http.post(f"{service_url}/api/stream-tokens", json={"scope": "user", "job": "x"}, headers=bearer(user))
    assert_error(response, 400, "body: unknown field `job`; the fields are `scope`, `request_id`, `tag`")


@pytest.mark.parametrize(
    ("method", "path", "use", "allow"),
    [("GET", "/api/jobs/abc/cancel", "POST", "OPTIONS, POST"), ("PUT", "/api/jobs", "GET or POST", "GET, OPTIONS, POST"),
     ("DELETE", "/healthz", "GET", "GET, OPTIONS"), ("POST", "/static/app.js", "GET", "GET, HEAD, OPTIONS")],
)
async def test_405_names_the_allowed_methods(service_url: str, http: httpx.AsyncClient, user: NewUser,
                                             method: str, path: str, use: str, allow: str) -> None:
    response = await http.request(method, f"{service_url}{path}", headers=bearer(user))
    assert_error(response, 405, f"{method} is not allowed on {path}; use {use}")
    assert response.headers["allow"] == allow
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("status", [None, "in_progress"])
async def test_outputs_of_an_unfinished_job_are_409_naming_its_state(
    service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, status: str | None,
) -> None:
    request_id = await make_job(pool, user, status=status)
    state = status or "pending"
    download = await http.get(f"{service_url}/api/jobs/{request_id}/outputs/0", headers=bearer(user))
    assert_error(download, 409, f"job '{request_id}' is {state}; its outputs exist once it is completed")
    assert "?wait=" in download.json()["message"]
    link = await http.post(f"{service_url}/api/jobs/{request_id}/outputs/0/link", headers=bearer(user))
    assert_error(link, 409, f"is {state}")


async def test_outputs_of_a_failed_job_are_409_and_of_a_completed_one_404(
    service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser,
) -> None:
    failed = await make_job(pool, user, status="failed")
    assert_error(await http.get(f"{service_url}/api/jobs/{failed}/outputs/0", headers=bearer(user)),
                 409, f"job '{failed}' is failed; only a completed job has outputs")
    completed = await make_job(pool, user, status="completed")  # its result holds no media
    assert_error(await http.get(f"{service_url}/api/jobs/{completed}/outputs/0", headers=bearer(user)),
                 404, f"output 0 of job '{completed}' not found")
    # Another user's unfinished job is theirs to know about: 404, not 409.
    pending = await make_job(pool, other_user)
    assert_error(await http.get(f"{service_url}/api/jobs/{pending}/outputs/0", headers=bearer(user)),
                 404, "not found")


async def test_a_created_job_answers_with_its_location(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    body = {**IMAGE, "input": {"prompt": "a red fox", "fal_emulator": {"queue_ms": 0, "run_ms": 0}}}
    created = await http.post(f"{service_url}/api/jobs", json=body, headers=bearer(user))
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == job["links"]["self"] == f"/api/jobs/{job['request_id']}"
    found = await http.get(f"{service_url}{created.headers['location']}", headers=bearer(user))
    assert found.status_code == 200 and found.json()["request_id"] == job["request_id"]
