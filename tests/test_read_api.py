"""The read API over real HTTP: the service under uvicorn, the real Postgres."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from service.auth.api_keys import NewUser
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import apply_change, create_job
from tests.conftest import bearer

BIG_SEED = 196619188014358660


async def make_job(pool: asyncpg.Pool, user: NewUser, *, type: str = "image", status: str | None = None) -> str:
    request_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, model_id="fal-ai/flux/dev",
                                            type=type, input={"prompt": "a lighthouse"}, mode="webhook"))  # type: ignore[arg-type]
        if status is not None:
            await apply_change(connection, request_id, JobChange(status=status, result={"seed": BIG_SEED}))  # type: ignore[arg-type]
    return request_id


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str)
    assert fragment in body["message"], body


async def test_get_job_returns_it_with_integers_exact(service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    request_id = await make_job(pool, user, status="completed")
    response = await http.get(f"{service_url}/api/jobs/{request_id}", headers=bearer(user))
    assert response.status_code == 200
    assert f'"seed":{BIG_SEED}' in response.text  # not rounded through a float
    job = response.json()
    assert (job["request_id"], job["status"], job["version"]) == (request_id, "completed", 2)
    assert response.headers["x-request-id"]


async def test_another_users_job_is_404_not_403(service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    request_id = await make_job(pool, user)
    theirs = await http.get(f"{service_url}/api/jobs/{request_id}", headers=bearer(other_user))
    missing = await http.get(f"{service_url}/api/jobs/{uuid.uuid4()}", headers=bearer(other_user))
    assert_error(theirs, 404, "not found")
    assert theirs.json()["message"].replace(request_id, "ID") == missing.json()["message"].replace(missing.url.path.rsplit("/", 1)[1], "ID")


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "missing"), ({"Authorization": "Basic abc"}, "Bearer"), ({"Authorization": "Bearer fj_nope"}, "unknown or revoked API key")],
)
async def test_missing_or_wrong_key_is_401(service_url: str, http: httpx.AsyncClient, headers: dict[str, str], fragment: str) -> None:
    response = await http.get(f"{service_url}/api/jobs", headers=headers)
    assert_error(response, 401, fragment)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_list_is_newest_first_with_keyset_pagination(service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser) -> None:
    mine = [await make_job(pool, user) for _ in range(7)]
    await make_job(pool, other_user)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await http.get(f"{service_url}/api/jobs", params=params, headers=bearer(user))).json()
        seen += [job["request_id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(mine))
    assert pages == 3


async def test_list_filters_by_status_and_type(service_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser) -> None:
    image_done = await make_job(pool, user, status="completed")
    video_pending = await make_job(pool, user, type="video")
    await make_job(pool, user, status="failed")

    async def ids(**params: str) -> list[str]:
        response = await http.get(f"{service_url}/api/jobs", params=params, headers=bearer(user))
        return [job["request_id"] for job in response.json()["jobs"]]

    assert await ids(status="completed") == [image_done]
    assert await ids(type="video") == [video_pending]
    assert await ids(status="pending", type="image") == []


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("status=done", "status: unknown status 'done'"), ("type=audio", "type: unknown type"),
     ("limit=0", "limit: must be between"), ("limit=ten", "limit"), ("cursor=not-a-cursor", "cursor: not a cursor"),
     ("cursor=WzEsMl0", "cursor: not a cursor")],
)
async def test_bad_list_parameters_are_named(service_url: str, http: httpx.AsyncClient, user: NewUser, query: str, fragment: str) -> None:
    assert_error(await http.get(f"{service_url}/api/jobs?{query}", headers=bearer(user)), 400, fragment)


async def test_malformed_request_id_is_400(service_url: str, http: httpx.AsyncClient, user: NewUser) -> None:
    assert_error(await http.get(f"{service_url}/api/jobs/{'x' * 200}", headers=bearer(user)), 400, "request_id: malformed")
    assert_error(await http.get(f"{service_url}/api/jobs/a%20b", headers=bearer(user)), 400, "request_id: malformed")


async def test_unknown_route_and_method_use_the_error_shape(service_url: str, http: httpx.AsyncClient) -> None:
    assert_error(await http.get(f"{service_url}/api/nothing"), 404, "no route")
    response = await http.delete(f"{service_url}/healthz")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


async def test_health_readiness_and_openapi(service_url: str, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{service_url}/healthz")).json()["status"] == "ok"
    ready = await http.get(f"{service_url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "migrations": "ok", "listener": "ok"}
    schema = (await http.get(f"{service_url}/schema/openapi.json")).json()
    assert "/api/jobs/{request_id}" in schema["paths"]


async def test_readyz_is_503_when_migrations_are_missing(server_dsn: str, http: httpx.AsyncClient) -> None:
    from service.app import create_app
    from tests.conftest import _with_database, serve, service_settings

    name = f"fal_jobs_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        running = await serve(lambda url: create_app(service_settings(_with_database(server_dsn, name))))
        try:
            response = await http.get(f"{running.url}/readyz")
            assert response.status_code == 503
            assert "not applied" in response.json()["checks"]["migrations"]
        finally:
            await running.stop()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
