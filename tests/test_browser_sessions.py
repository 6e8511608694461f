"""Browser sign-in and sessions over real HTTP: one-time links, cookie flags, CSRF, sign-out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx

from service.auth.api_keys import NewUser, create_user
from service.auth.browser_sessions import SESSION_COOKIE, issue_sign_in_token
from service.db.pool import create_pool
from tests.conftest import RunningServer, free_socket, scratch_database, service_settings, start_uvicorn


@contextlib.asynccontextmanager
async def signed_in(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    token = await issue_sign_in_token(pool, user.user_id)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        yield await _land(browser, token), token


async def _land(browser: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    landing = await browser.get(f"/?token={token}")
    assert landing.status_code == 303 and landing.headers["location"] == "/"
    cookie = landing.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert token not in landing.headers["set-cookie"], "the cookie is a session id, not the link's token"
    return browser


async def test_a_sign_in_link_works_once_and_sets_a_session(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    async with signed_in(service, pool, user) as (browser, token):
        session = (await browser.get("/api/session")).json()
        assert session["user_id"] == user.user_id and session["name"] == user.name and session["csrf_token"]
        assert session["local_emulator"] is False  # a FAL_KEY is set: the page shows no emulator tag
        assert (await browser.get("/api/jobs")).status_code == 200
        page = await browser.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        async with httpx.AsyncClient(base_url=service.url) as stranger:
            again = await stranger.get(f"/?token={token}")
            assert again.status_code == 303 and again.headers["location"] == "/#sign-in-link-invalid"
            assert (await stranger.get("/api/session")).status_code == 401


async def test_state_changes_from_a_session_need_the_csrf_token(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    async with signed_in(service, pool, user) as (browser, _):
        csrf = (await browser.get("/api/session")).json()["csrf_token"]
        job = {"type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x"}}
        forged = await browser.post("/api/jobs", json=job)
        assert forged.status_code == 403 and forged.json()["error"] == "forbidden"
        wrong = await browser.post("/api/jobs", json=job, headers={"X-CSRF-Token": "nope"})
        assert wrong.status_code == 403
        created = await browser.post("/api/jobs", json=job, headers={"X-CSRF-Token": csrf})
        assert created.status_code == 202, created.text
        token = await browser.post("/api/stream-tokens", json={"scope": "user"}, headers={"X-CSRF-Token": csrf})
        assert token.status_code == 201
        old_cookie = browser.cookies[SESSION_COOKIE]
        out = await browser.post("/api/session/sign-out", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200
        # The browser is told to forget the cookie, but a stolen copy must be dead on the server too.
        await assert_cookie_refused(service, old_cookie, csrf)


async def test_an_expired_session_cookie_is_refused(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    async with signed_in(service, pool, user) as (browser, _):
        cookie = browser.cookies[SESSION_COOKIE]
        csrf = (await browser.get("/api/session")).json()["csrf_token"]
        assert (await browser.get("/api/jobs")).status_code == 200
        # The seven days pass: the row's expiry is moved into the past, the cookie stays as it was.
        moved = await pool.execute("UPDATE fal_browser_sessions SET expires_at = now() - interval '1 second' "
                                   "WHERE user_id = $1 AND expires_at > now()", user.user_id)
        assert moved == "UPDATE 1"
        await assert_cookie_refused(service, cookie, csrf)


async def assert_cookie_refused(service: RunningServer, cookie: str, csrf: str) -> None:
    """Replays a session cookie from a fresh client: every way in answers 401."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10, cookies={SESSION_COOKIE: cookie}) as replay:
        assert (await replay.get("/api/session")).status_code == 401
        listed = await replay.get("/api/jobs")
        assert listed.status_code == 401 and listed.json()["error"] == "not_authenticated", listed.text
        token = await replay.post("/api/stream-tokens", json={"scope": "user"}, headers={"X-CSRF-Token": csrf})
        assert token.status_code == 401


async def test_models_list_names_each_kind(service: RunningServer, http: httpx.AsyncClient) -> None:
    models = (await http.get(f"{service.url}/api/models")).json()
    kinds = {m["model_id"]: m["type"] for m in models}
    assert kinds["fal-ai/flux/dev"] == "image" and kinds["fal-ai/minimax/video-01"] == "video"


async def test_a_job_type_must_match_its_model(service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    response = await http.post(f"{service.url}/api/jobs", headers={"Authorization": f"Bearer {user.api_key}"},
                               json={"type": "image", "model_id": "fal-ai/minimax/video-01", "input": {}})
    assert response.status_code == 400 and response.json()["message"].startswith("type:")


@dataclass
class EmulatedService:
    """The service with no FAL_KEY (the emulator mounted in it), on a database of its own: its
    sweep asks its own emulator about every open job, which would fail other tests' jobs."""

    running: RunningServer
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def emulated_service(server_dsn: str) -> AsyncIterator[EmulatedService]:
    from service.app import create_app

    async with scratch_database(server_dsn) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=4)
        sock = free_socket()
        settings = service_settings(dsn, PORT=str(sock.getsockname()[1]), FAL_EMULATOR="1", RECONCILE_INTERVAL_S="3600")
        running = await start_uvicorn(create_app(settings), sock)
        try:
            yield EmulatedService(running, pool)
        finally:
            await running.stop()
            await pool.close()


async def test_the_session_says_when_jobs_go_to_the_local_emulator(server_dsn: str) -> None:
    async with emulated_service(server_dsn) as emulated:
        user = await create_user(emulated.pool, "emulated")
        async with signed_in(emulated.running, emulated.pool, user) as (browser, _):
            assert (await browser.get("/api/session")).json()["local_emulator"] is True


def test_run_s_emulator_counts_as_the_local_emulator() -> None:
    """`run` starts the emulator beside the service and hands it a key, URLs and the media base."""
    run_s = {"FAL_KEY": "emulator:abc", "FAL_QUEUE_URL": "http://127.0.0.1:9/", "EMULATOR_MEDIA_URL": "http://127.0.0.1:9/media"}
    assert service_settings("postgresql://x@127.0.0.1/x", **run_s).local_emulator
    assert service_settings("postgresql://x@127.0.0.1/x", FAL_EMULATOR="1").local_emulator
    assert not service_settings("postgresql://x@127.0.0.1/x", FAL_KEY="key:secret").local_emulator
