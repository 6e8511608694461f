"""Keys and sessions an operator can manage: the CLI lists, creates, revokes and disables; a revoked
key, a disabled user or a signed-out session gets 401 on its next request, and what it held open
(streams, stream tokens it minted) ends within seconds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx

from service.auth.api_keys import NewUser
from service.auth.browser_sessions import issue_sign_in_token
from tests.conftest import RunningServer, bearer
from tests.sse import SseReader

ROOT = Path(__file__).resolve().parent.parent
CREDENTIAL_CHECK_DEADLINE_S = 10
"""The service checks every 2 s; a loaded machine gets slack."""


async def ended(stream: SseReader) -> None:
    """The server closes the stream within the deadline (whatever it still sent before)."""
    async with asyncio.timeout(CREDENTIAL_CHECK_DEADLINE_S):
        await stream.ended.wait()


async def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


async def job_for(http: httpx.AsyncClient, service: RunningServer, headers: dict[str, str]) -> dict[str, object]:
    answer = await http.post(f"{service.url}/api/jobs", headers=headers, json={
        "type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x", "fal_emulator": {"queue_ms": 60_000}}})
    assert answer.status_code == 202, answer.text
    return answer.json()


async def test_keys_are_listed_created_and_revoked_and_a_revoked_keys_streams_end(
    database_url: str, service: RunningServer, http: httpx.AsyncClient, user: NewUser,
) -> None:
    made = await cli(database_url, "keys", "create", user.name)
    assert made.returncode == 0, made.stderr
    second_key = made.stdout.strip()
    assert second_key.startswith("fj_") and second_key not in made.stderr
    second = {"Authorization": f"Bearer {second_key}"}
    listed = await cli(database_url, "keys", "list", user.name)
    assert listed.returncode == 0 and second_key[:12] in listed.stdout and user.api_key[:8] in listed.stdout
    assert second_key[12:] not in listed.stdout, "a listing shows prefixes, never keys"

    job = await job_for(http, service, second)
    minted_token = job["stream_token"]
    async with SseReader(http, f"{service.url}/api/events", second) as stream:
        assert (await stream.next()).event == "ready"
        revoked = await cli(database_url, "keys", "revoke", second_key[:12])
        assert revoked.returncode == 0, revoked.stderr
        await ended(stream)
    answer = await http.get(f"{service.url}/api/jobs", headers=second)
    assert answer.status_code == 401 and "revoked" in answer.json()["message"]
    by_token = await http.get(f"{service.url}/api/jobs/{job['request_id']}/events?token={minted_token}")
    assert by_token.status_code == 401
    # The user's other key is untouched.
    assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 200


async def test_cli_answers_bad_names_and_prefixes_with_a_message_and_exit_code_1(database_url: str) -> None:
    for args in (("keys", "create", "nobody-here"), ("keys", "revoke", "fj_zzzzzzzzz"), ("users", "disable", "nobody-here"),
                 ("keys", "revoke", "fj")):
        done = await cli(database_url, *args)
        assert done.returncode == 1 and done.stderr.startswith("fal-jobs: ") and "Traceback" not in done.stderr, (args, done.stderr)


async def test_a_disabled_user_is_refused_everywhere_until_enabled(
    database_url: str, service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    token = await issue_sign_in_token(pool, user.user_id)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        await browser.get(f"/?token={token}")
        assert (await browser.get("/api/session")).status_code == 200
        async with SseReader(http, f"{service.url}/api/events", bearer(user)) as stream:
            assert (await stream.next()).event == "ready"
            disabled = await cli(database_url, "users", "disable", user.name)
            assert disabled.returncode == 0, disabled.stderr
            await ended(stream)
        assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 401
        assert (await browser.get("/api/session")).status_code == 401
        listed = await cli(database_url, "users", "list")
        line = next(line for line in listed.stdout.splitlines() if line.startswith(user.name))
        assert line.split()[3] != "-", line  # the disabled column has a date
        enabled = await cli(database_url, "users", "enable", user.name)
        assert enabled.returncode == 0
        assert (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).status_code == 200


async def test_sign_out_ends_the_sessions_streams_tokens_and_cookie(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    token = await issue_sign_in_token(pool, user.user_id)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        await browser.get(f"/?token={token}")
        session = (await browser.get("/api/session")).json()
        cookie = browser.cookies.get("fal_jobs_session")
        assert cookie
        minted = (await browser.post("/api/stream-tokens", json={"scope": "user"},
                                     headers={"X-CSRF-Token": session["csrf_token"]})).json()
        async with SseReader(http, f"{service.url}{minted['url']}") as stream:
            assert (await stream.next()).event == "ready"
            out = await browser.post("/api/session/sign-out", headers={"X-CSRF-Token": session["csrf_token"]})
            assert out.status_code == 200
            await ended(stream)
    # Replaying the old cookie, as a stolen copy would: the server ended the session.
    async with httpx.AsyncClient(base_url=service.url, timeout=10, cookies={"fal_jobs_session": cookie}) as replay:
        assert (await replay.get("/api/session")).status_code == 401
        assert (await replay.get("/api/jobs")).status_code == 401
    assert (await http.get(f"{service.url}{minted['url']}")).status_code == 401


async def test_expired_sessions_stop_working(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    token = await issue_sign_in_token(pool, user.user_id)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        await browser.get(f"/?token={token}")
        assert (await browser.get("/api/jobs")).status_code == 200
        await pool.execute("UPDATE fal_browser_sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                           user.user_id)
        assert (await browser.get("/api/jobs")).status_code == 401
