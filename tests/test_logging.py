"""One log stream: under `python3 -m service run` every logged line (uvicorn's included) is JSON, a
request's line carries its method, path, status and request id, and no query string or token
reaches it; a 500's traceback carries the request id the error body points to."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import get

from service.logging import JsonFormatter, RequestIdFilter, TextFormatter, redact
from tests.conftest import RunningServer, free_socket, service_settings, start_uvicorn
from tests.test_quick_start import stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line the loggers wrote; the CLI's own `fal-jobs: ...` notices are terminal prints."""
    lines = [line for line in text.splitlines() if line and not line.startswith("fal-jobs: ")]
    return [msgspec.json.decode(line) for line in lines]


def test_run_logs_json_lines_with_the_request_id(database_url: str, tmp_path: Path) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FAL_KEY", "APP_URL", "LOG_FORMAT")}
    env.update(DATABASE_URL=database_url, PORT=str(port), LOG_LEVEL="INFO")
    log = tmp_path / "service.log"
    process = subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        response = httpx.get(f"{url}/api/jobs/abc?token=sekrit-token-value",
                             headers={"X-Request-Id": "probe-1234", "Authorization": "Bearer fj_notakeyatall123"})
        assert response.status_code == 401 and response.headers["x-request-id"] == "probe-1234"
        deadline = time.monotonic() + 10
        while "probe-1234" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert stop(process) == 0, log.read_text()
    text = log.read_text()
    entries = json_lines(text)  # raises on any line that is not JSON
    started = [e for e in entries if e["logger"] == "uvicorn.error" and "Started server process" in str(e["msg"])]
    # uvicorn's own lines, from each worker `run` starts (and the emulator's, at debug), are JSON too.
    assert len(started) >= 1 and all("color_message" not in entry for entry in started), text
    request = [e for e in entries if e.get("request_id") == "probe-1234" and e["msg"] == "request"]
    assert len(request) == 1, text
    assert request[0]["method"] == "GET" and request[0]["path"] == "/api/jobs/abc" and request[0]["status"] == 401
    assert "sekrit-token-value" not in text and "fj_notakeyatall123" not in text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's output through our JSON formatter and request-id filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_a_500_traceback_carries_the_request_id(database_url: str, captured: io.StringIO) -> None:
    from service.app import create_app

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("kaboom at /boom?token=hidden-value")

    app = create_app(service_settings(database_url, LOG_LEVEL="INFO"))
    app.register(boom)
    running: RunningServer = await start_uvicorn(app, free_socket())
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{running.url}/boom", headers={"X-Request-Id": "boom-5678"})
    finally:
        await running.stop()
    assert response.status_code == 500
    assert response.json() == {"status": 500, "error": "internal_error",
                               "message": "internal error; the request id in X-Request-Id finds the log line"}
    assert response.headers["x-request-id"] == "boom-5678"
    entries = [msgspec.json.decode(line) for line in captured.getvalue().splitlines()]
    errors = [e for e in entries if e["level"] == "error" and e.get("request_id") == "boom-5678"]
    assert len(errors) == 1 and "RuntimeError" in errors[0]["exc"]
    assert "hidden-value" not in captured.getvalue()


def test_secrets_and_query_strings_are_masked() -> None:
    assert redact("GET /api/events?token=abc.def HTTP/1.1") == "GET /api/events?[redacted] HTTP/1.1"
    assert redact("Authorization: Bearer fj_abcdefghijkl") == "Authorization: Bearer [redacted]"
    assert redact("header Key abc:def") == "header Key [redacted]"
    assert redact("leaked fj_abcdefghijklmnop here") == "leaked [redacted] here"
    assert redact("https://x.test/a?b=c") == "https://x.test/a?[redacted]"
    assert redact("a plain line, no secrets") == "a plain line, no secrets"


def test_text_format_is_one_readable_line() -> None:
    record = logging.makeLogRecord({"name": "service.x", "levelname": "INFO", "msg": "hello", "request_id": "r1"})
    assert TextFormatter().format(record).endswith("INFO    service.x: hello request_id=r1")
