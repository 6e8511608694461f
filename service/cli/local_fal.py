"""The local fal emulator that `run` starts when FAL_KEY is unset."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.settings import Settings

START_TIMEOUT_S = 30


@contextlib.contextmanager
def standalone_emulator(settings: Settings) -> Iterator[None]:
    """The local fal for the demo, in a process of its own: it keeps its requests in memory, so
    every service process must talk to the same one, as they would to fal. Paced like fal, pinned
    as our fal account, and stopped with us."""
    import secrets
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "emulator:" + secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "service.emulator", "--port", str(port), "--pace",
         os.environ.get("EMULATOR_PACE", "demo"), "--heartbeat-s", "15"],
        env={**os.environ, "FAL_KEY": key}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(emulator, base)
        os.environ.update({
            "FAL_KEY": key, "FAL_QUEUE_URL": base, "FAL_API_URL": base, "FAL_JWKS_URL": f"{base}/.well-known/jwks.json",
            "FAL_WEBHOOK_USER_ID": "fal-emulator-user",
            # Its media is copied into our store like fal's, though it is plain http on loopback.
            "EMULATOR_MEDIA_URL": f"{base}/media",
            # Webhooks come back to us, as fal's would to APP_URL.
            "APP_URL": settings.app_url or settings.local_url,
        })
        print("\n".join([
            "fal-jobs: ************************************************************************",
            "fal-jobs: FAL_KEY is not set: serving with the LOCAL fal EMULATOR. Jobs never reach",
            f"fal-jobs: fal.ai, cost nothing and make test images ({base}).",
            "fal-jobs: Set FAL_KEY to your fal.ai key for real jobs.",
            "fal-jobs: ************************************************************************",
        ]), file=sys.stderr, flush=True)
        yield
    finally:
        emulator.terminate()
        try:
            emulator.wait(10)
        except subprocess.TimeoutExpired:
            emulator.kill()


def _wait_until_up(emulator: subprocess.Popen[bytes], base: str) -> None:
    """Until the emulator serves its JWKS; it exiting, or not answering in time, ends the command."""
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if emulator.poll() is not None:
            raise SystemExit(f"fal-jobs: the fal emulator exited at start (code {emulator.returncode})")
        try:
            if httpx.get(f"{base}/.well-known/jwks.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"fal-jobs: the fal emulator did not start within {START_TIMEOUT_S} s")
        time.sleep(0.1)
