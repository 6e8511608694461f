"""The emulator mounted under a prefix inside another Litestar app, as the service mounts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from litestar import Litestar, asgi, get
from litestar.types import Receive, Scope, Send

from service.emulator import FalEmulator, create_emulator_app
from service.fal.signatures import JwksKeyring, WebhookVerifier

from .conftest import WebhookReceiver, auth, bound_socket, fal_against, serve

PREFIX = "/fal-emulator"


async def test_mounted_under_prefix(http: httpx.AsyncClient, receiver: WebhookReceiver) -> None:
    sock, port = bound_socket()
    emulator = FalEmulator(f"http://127.0.0.1:{port}{PREFIX}", "mount-key", default_queue_ms=10, default_run_ms=20)
    inner = create_emulator_app(emulator)

    # copy_scope=True: the inner Litestar app writes its own state into the scope.
    @asgi(PREFIX, is_mount=True, copy_scope=True)
    async def fal_emulator_mount(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(scope, receive, send)

    @get("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    # The inner app never sees lifespan events when mounted: the outer app closes the emulator.
    outer = Litestar(route_handlers=[fal_emulator_mount, health], on_shutdown=[emulator.aclose])

    async with serve(outer, sock):
        assert (await http.get(f"http://127.0.0.1:{port}/health")).json() == {"ok": "yes"}
        async with fal_against(emulator, key="mount-key") as fal:
            handle = await fal.submit("fal-ai/flux/dev", {"prompt": "mounted"}, webhook_url=receiver.url)
            assert handle.status_url.startswith(f"http://127.0.0.1:{port}{PREFIX}/fal-ai/flux/requests/")
            result = await handle.get(interval=0.02)
        image = await http.get(result["images"][0]["url"])
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        stream = await http.get(handle.status_url + "/stream", headers=auth("mount-key"))
        assert json.loads(stream.text.split("data: ", 1)[1])["status"] == "COMPLETED"
        [delivery] = await receiver.wait_for(1)
        verified = await WebhookVerifier(JwksKeyring(emulator.jwks_url, http)).verify(delivery.headers, delivery.body)
        assert verified.request_id == handle.request_id
        assert (await http.get(f"http://127.0.0.1:{port}{PREFIX}/nope/x/requests/1/status")).status_code == 401
    assert emulator.closed
    await emulator.aclose()  # a second close (e.g. also wired elsewhere) is harmless


# In a process of its own: it sets up the root logger as the service does.
KEEPS_LOGGING = """
import asyncio, logging
from litestar.testing import AsyncTestClient
from service.emulator import FalEmulator, create_emulator_app
from service.logging import configure_logging

configure_logging("INFO")

async def main():
    async with AsyncTestClient(create_emulator_app(FalEmulator("http://127.0.0.1:1", "k"))) as client:
        await client.get("/.well-known/jwks.json")

asyncio.run(main())
print(",".join(type(handler.formatter).__name__ for handler in logging.getLogger().handlers))
"""


def test_starting_the_emulator_app_keeps_the_services_json_log_handler() -> None:
    """Mounted inside the service (FAL_EMULATOR=1), its start-up must not replace the root
    handler with Litestar's default one: every later line would lose its JSON fields."""
    done = subprocess.run([sys.executable, "-c", KEEPS_LOGGING], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "JsonFormatter", done.stdout
