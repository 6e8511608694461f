"""A deploy is safe by default: no fake fal without asking for it, the emulator never stalls the
service, transport security behind a proxy, webhooks only from our own fal account, and every
input Postgres or fal cannot take refused by name. Real processes, real Postgres, real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import msgspec

from service.auth.api_keys import NewUser
from service.auth.browser_sessions import issue_sign_in_token
from service.emulator import FalEmulator
from service.emulator.signing import signed_headers
from tests.conftest import RunningServer, bearer, fal_settings, free_socket, serve, service_settings

ROOT = Path(__file__).resolve().parent.parent


def procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web: line")


def procfile_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "APP_URL", "NEXT_PUBLIC_"))}
    bin_dir = str(Path(os.sys.executable).parent)  # type: ignore[attr-defined]
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}", "DATABASE_URL": database_url, "PORT": str(port),
            "LOG_LEVEL": "WARNING", **extra}


async def test_the_procfile_refuses_to_serve_the_emulator_without_fal_key(database_url: str) -> None:
    port = free_socket().getsockname()[1]
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", procfile_web_command()], env=procfile_env(database_url, port), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "FAL_KEY" in done.stderr and "FAL_EMULATOR=1" in done.stderr, done.stderr


async def test_the_procfile_serves_the_emulator_only_when_asked(database_url: str, http: httpx.AsyncClient) -> None:
    port = free_socket().getsockname()[1]
    process = subprocess.Popen(
        ["bash", "-c", procfile_web_command()], env=procfile_env(database_url, port, FAL_EMULATOR="1"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Procfile's web process never became ready"
            await asyncio.sleep(0.2)
        jwks = await http.get(f"http://127.0.0.1:{port}/fal-emulator/.well-known/jwks.json")
        assert jwks.status_code == 200 and jwks.json()["keys"]
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(process.wait, 30) == 0


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def test_the_emulators_largest_images_do_not_stall_the_service(database_url: str, user: NewUser) -> None:
    from service.app import create_app

    running = await serve(lambda url: create_app(service_settings(database_url, PORT=url.rsplit(":", 1)[1])))
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=60, limits=httpx.Limits(max_connections=64)) as http:

            async def timed_list() -> float:
                started = time.perf_counter()
                answer = await http.get("/api/jobs", headers=bearer(user))
                assert answer.status_code == 200
                return time.perf_counter() - started

            for _ in range(20):  # warm up connections and caches
                await timed_list()
            idle = [await timed_list() for _ in range(150)]

            async def fetch_image(seed: int) -> None:
                # A new seed each time: nothing comes from a cache.
                answer = await http.get(f"/fal-emulator/media/image/2048x2048/{seed}.png")
                assert answer.status_code == 200 and answer.content[:8] == b"\x89PNG\r\n\x1a\n"

            first_seed = 10_000 + uuid.uuid4().int % 10_000_000
            seeds = iter(range(first_seed, first_seed + 200))

            async def fetch_all() -> None:
                # 40 a second (the stall was seen at a dozen a second), each on its own connection
                # when need be, as strangers on the internet would send them.
                fetches = []
                for seed in seeds:
                    fetches.append(asyncio.ensure_future(fetch_image(seed)))
                    await asyncio.sleep(1 / 40)
                await asyncio.gather(*fetches)

            busy: list[float] = []
            images_task = asyncio.ensure_future(fetch_all())
            while not images_task.done():
                busy.append(await timed_list())
            await images_task
        assert len(busy) >= 20, "the images finished before enough reads were measured"
        ratio = _p99(busy) / _p99(idle)
        print(f"GET /api/jobs p99 idle {_p99(idle) * 1000:.2f} ms, during 200 2048x2048 renders "
              f"{_p99(busy) * 1000:.2f} ms ({len(busy)} reads): {ratio:.2f}x")
        assert ratio <= 5, f"p99 under image load is {ratio:.1f}x the idle p99"
    finally:
        await running.stop()


async def test_https_app_url_means_secure_cookies_hsts_and_strict_headers_everywhere(
    database_url: str, fal: FalEmulator, pool: asyncpg.Pool, user: NewUser,
) -> None:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, None, APP_URL="https://jobs.example.com")))
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as browser:
            token = await issue_sign_in_token(pool, user.user_id)
            landing = await browser.get(f"/?token={token}")
            assert landing.status_code == 303
            assert "secure" in landing.headers["set-cookie"].lower().split("; ")
            for path in ("/", "/static/app.js", "/static/app.css", "/api/models"):
                answer = await browser.get(path)
                assert answer.status_code == 200, path
                assert answer.headers["strict-transport-security"].startswith("max-age="), path
                assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
                assert answer.headers["x-content-type-options"] == "nosniff", path
                assert answer.headers["referrer-policy"] == "no-referrer", path
    finally:
        await running.stop()


async def test_plain_http_gets_no_hsts_and_no_secure_flag(service: RunningServer, pool: asyncpg.Pool, user: NewUser) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        landing = await browser.get(f"/?token={await issue_sign_in_token(pool, user.user_id)}")
        assert "secure" not in landing.headers["set-cookie"].lower().split("; ")
        page = await browser.get("/")
        assert "strict-transport-security" not in page.headers
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_forwarded_proto_is_trusted_only_from_forwarded_allow_ips(
    database_url: str, fal: FalEmulator, pool: asyncpg.Pool, user: NewUser, tmp_path: Path,
) -> None:
    """`run` passes FORWARDED_ALLOW_IPS to uvicorn: a proxy it trusts makes the cookie Secure, one
    it does not trust cannot."""
    from tests.processes import fal_env, start_process, wait_ready

    for allowed, expect_secure in (("127.0.0.1", True), ("10.9.9.9", False)):
        with free_socket() as sock:
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        env = fal_env(database_url, fal, port, FORWARDED_ALLOW_IPS=allowed)
        del env["APP_URL"]  # the scheme comes from the proxy's header alone
        process = start_process(env, tmp_path / f"{allowed}.log")
        try:
            await asyncio.to_thread(wait_ready, url, process, tmp_path / f"{allowed}.log")
            token = await issue_sign_in_token(pool, user.user_id)
            async with httpx.AsyncClient(base_url=url, timeout=10) as browser:
                landing = await browser.get(f"/?token={token}", headers={"X-Forwarded-Proto": "https"})
            assert ("secure" in landing.headers["set-cookie"].lower().split("; ")) is expect_secure, allowed
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)


def _webhook_body(request_id: str, **fields: object) -> bytes:
    return msgspec.json.encode({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                                "payload": {"seed": 7}, **fields})


async def test_a_webhook_signed_for_another_fal_account_is_refused_and_stores_nothing(
    database_url: str, fal: FalEmulator, pool: asyncpg.Pool, http: httpx.AsyncClient, user: NewUser,
) -> None:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, url, FAL_WEBHOOK_USER_ID="acct-ours")))
    try:
        created = await http.post(f"{running.url}/api/jobs", headers=bearer(user), json={
            "type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x", "fal_emulator": {"queue_ms": 60_000}}})
        assert created.status_code == 202
        request_id = created.json()["request_id"]
        unknown = str(uuid.uuid4())
        for target in (request_id, unknown):
            body = _webhook_body(target)
            headers = signed_headers(fal.keyset.current, request_id=target, user_id="acct-someone-else",
                                     timestamp=int(time.time()), body=body)
            refused = await http.post(f"{running.url}/api/webhooks/fal", content=body, headers=headers)
            assert refused.status_code == 401 and "another fal account" in refused.json()["message"]
        assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", request_id) == "pending"
        assert await pool.fetchval("SELECT count(*) FROM fal_early_webhooks WHERE request_id = $1", unknown) == 0
        body = _webhook_body(request_id)
        headers = signed_headers(fal.keyset.current, request_id=request_id, user_id="acct-ours",
                                 timestamp=int(time.time()), body=body)
        ours = await http.post(f"{running.url}/api/webhooks/fal", content=body, headers=headers)
        assert ours.status_code == 200 and ours.json()["outcome"] == "applied"
    finally:
        await running.stop()


async def test_the_change_goes_to_the_signed_request_id_never_the_bodys(
    service: RunningServer, fal: FalEmulator, pool: asyncpg.Pool, http: httpx.AsyncClient, user: NewUser,
) -> None:
    created = await http.post(f"{service.url}/api/jobs", headers=bearer(user), json={
        "type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "x", "fal_emulator": {"queue_ms": 60_000}}})
    victim = created.json()["request_id"]
    signed_for = str(uuid.uuid4())  # a request of the sender's own
    body = _webhook_body(victim, gateway_request_id=signed_for, payload={"seed": 666})
    headers = signed_headers(fal.keyset.current, request_id=signed_for, user_id="u", timestamp=int(time.time()), body=body)
    answer = await http.post(f"{service.url}/api/webhooks/fal", content=body, headers=headers)
    assert answer.status_code == 200 and answer.json() == {"request_id": signed_for, "outcome": "parked"}
    assert await pool.fetchval("SELECT status FROM fal_jobs WHERE request_id = $1", victim) == "pending"


async def test_inputs_postgres_or_fal_cannot_take_are_4xx_naming_the_field(
    service: RunningServer, fal: FalEmulator, pool: asyncpg.Pool, http: httpx.AsyncClient, user: NewUser,
) -> None:
    submitted_before = len(fal.submissions)
    url = f"{service.url}/api/jobs"
    nul = await http.post(url, headers=bearer(user), json={
        "type": "image", "model_id": "fal-ai/flux/dev", "input": {"prompt": "a\u0000b", "loras": [{"path": "x"}]}})
    assert nul.status_code == 400 and nul.json()["message"].startswith("input.prompt: contains a NUL"), nul.text
    nested = await http.post(url, headers=bearer(user), json={
        "type": "image", "model_id": "fal-ai/flux/dev", "input": {"loras": [{"path": "ok"}, {"pa\u0000th": "x"}]}})
    assert nested.status_code == 400 and nested.json()["message"].startswith("input.loras[1] (a key)"), nested.text
    surrogate = await http.post(url, headers={**bearer(user), "content-type": "application/json"},
                                content=b'{"type":"image","model_id":"fal-ai/flux/dev","input":{"prompt":"\\ud800"}}')
    assert surrogate.status_code == 400 and surrogate.json()["error"] == "invalid_request", surrogate.text
    too_big = await http.post(url, headers={**bearer(user), "content-type": "application/json"},
                              content=b'{"type":"image","model_id":"fal-ai/flux/dev","input":{"prompt":"' + b"x" * 200_000 + b'"}}')
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large", too_big.text
    assert len(fal.submissions) == submitted_before, "nothing refused may reach fal"

    odd_key = await http.post(f"{service.url}/api/jobs", headers={**bearer(user), "Authorization": "Bearer fj_\xe9t\xe9".encode("latin-1")},
                              json={"type": "image", "model_id": "fal-ai/flux/dev"})
    assert odd_key.status_code == 401 and odd_key.json()["error"] == "not_authenticated"
    huge_key = await http.get(f"{service.url}/api/jobs", headers={"Authorization": "Bearer " + "k" * 4000})
    assert huge_key.status_code == 401
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as browser:
        await browser.get(f"/?token={await issue_sign_in_token(pool, user.user_id)}")
        csrf = await browser.post("/api/jobs", headers={"X-CSRF-Token": "t\xf6ken".encode("latin-1")},
                                  json={"type": "image", "model_id": "fal-ai/flux/dev"})
        assert csrf.status_code == 403 and csrf.json()["error"] == "forbidden"
    bad_key = await http.post(url, headers={**bearer(user), "Idempotency-Key": "x" * 300},
                              json={"type": "image", "model_id": "fal-ai/flux/dev"})
    assert bad_key.status_code == 400 and bad_key.json()["message"].startswith("idempotency-key:")
