"""The local fal emulator that `run` starts when FAL_KEY is unset."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.settings import Settings

START_TIMEOUT_S = 30
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
"""What `extra=` may not set (logging refuses it)."""


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
        # Its log (uvicorn's lines, with its random port) joins ours, lowered to debug: the terminal
        # shows the service's address alone. Below debug we drop what it says at info anyway.
        env={**os.environ, "FAL_KEY": key, "LOG_FORMAT": "json",
             "LOG_LEVEL": "DEBUG" if logging.getLogger().isEnabledFor(logging.DEBUG) else "WARNING"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    threading.Thread(target=_relay_log, args=(emulator.stderr,), name="fal-emulator-log", daemon=True).start()
    try:
        _wait_until_up(emulator, base)
        os.environ.update({
            "FAL_KEY": key, "FAL_QUEUE_URL": base, "FAL_API_URL": base, "FAL_JWKS_URL": f"{base}/.well-known/jwks.json",
            # Input files go to its storage and CDN endpoints (INPUT_DELIVERY=fal_cdn).
            "FAL_REST_URL": base, "FAL_CDN_URL": base,
            # Model input schemas come from it too, as from fal's per-endpoint OpenAPI.
            "FAL_SCHEMA_URL": f"{base}/api/openapi/queue/openapi.json",
            "FAL_WEBHOOK_USER_ID": "fal-emulator-user",
            # Its media is copied into our store like fal's, though it is plain http on loopback.
            "EMULATOR_MEDIA_URL": f"{base}/media",
            # Webhooks come back to us, as fal's would to APP_URL.
            "APP_URL": settings.app_url or settings.local_url,
        })
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


def _relay_log(stream: IO[bytes] | None) -> None:
    """Each line the emulator logs, into our log stream under `fal-emulator.<its logger>`: its debug
    and info lines at debug, its warnings and errors as they are; a line that is not its JSON (a
    crash's traceback) as a warning."""
    for raw in stream or ():
        line = raw.decode("utf-8", "replace").rstrip()
        try:
            entry = msgspec.json.decode(line, type=dict[str, object])
        except msgspec.DecodeError:
            entry = {}
        message = entry.pop("msg", None)
        if not isinstance(message, str):
            if line:
                logging.getLogger("fal-emulator").warning("%s", line, extra={"action": "fal_emulator.output"})
            continue
        level = logging.getLevelName(str(entry.pop("level", "info")).upper())
        level = logging.DEBUG if not isinstance(level, int) or level <= logging.INFO else level
        name = f"fal-emulator.{entry.pop('logger', 'emulator')}"
        extra = {key: value for key, value in entry.items() if key != "ts" and key not in _RECORD_ATTRS}
        extra.setdefault("action", "fal_emulator.log")
        logging.getLogger(name).log(level, "%s", message, extra=extra)
