"""Every answer passes the one request middleware, the router's own 404 and 405 included: a log
line, a metric (unmatched requests under one route label), X-Request-Id and the security headers.
A log line is one line whatever a request's path holds, and no field carries a credential."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shlex
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.emulator import FalEmulator
from service.logging import JsonFormatter, RequestIdFilter, TextFormatter
from tests.conftest import RunningServer, fal_settings, serve

live = pytest.mark.asyncio(loop_scope="session")

SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options")


@contextlib.contextmanager
def request_lines(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """What the request middleware logs meanwhile, formatted by `formatter`."""
    logger = logging.getLogger("service.http")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def logged(stream: io.StringIO, count: int) -> list[str]:
    """The lines once `count` requests were logged (the line follows the answer's last byte)."""
    async with asyncio.timeout(10):
        while len(lines := [line for line in stream.getvalue().split("\n") if line]) < count:
            await asyncio.sleep(0.01)
    return lines


async def request_counts(http: httpx.AsyncClient, url: str) -> dict[tuple[str, str, str], float]:
    text = (await http.get(f"{url}/metrics")).text
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "fal_jobs_http_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    counts[(labels["method"], labels["route"], labels["status"])] = sample.value
    return counts


@live
async def test_unmatched_paths_and_wrong_methods_are_logged_counted_and_get_the_headers(
    service: RunningServer, http: httpx.AsyncClient,
) -> None:
    probes = [("GET", "/wp-admin/setup.php", 404), ("PUT", "/api/jobs", 405), ("DELETE", "/healthz", 405),
              ("PROPFIND", "/nope", 404)]
    before = await request_counts(http, service.url)
    with request_lines(JsonFormatter()) as stream:
        for number, (method, path, status) in enumerate(probes):
            answer = await http.request(method, service.url + path, headers={"X-Request-Id": f"probe-{number}"})
            assert answer.status_code == status, (method, path, answer.text)
            assert answer.json()["status"] == status  # the one error shape
            assert answer.headers["x-request-id"] == f"probe-{number}"
            for name in SECURITY_HEADERS:
                assert name in answer.headers, (method, path, name)
            assert answer.headers["x-content-type-options"] == "nosniff"
        entries = [msgspec.json.decode(line) for line in await logged(stream, len(probes))]
    by_id = {entry["request_id"]: entry for entry in entries if entry["msg"] == "request"}
    for number, (method, path, status) in enumerate(probes):
        entry = by_id[f"probe-{number}"]
        assert (entry["method"], entry["path"], entry["status"]) == (method, path, status)

    after = await request_counts(http, service.url)
    for method, status in (("GET", "404"), ("PUT", "405"), ("DELETE", "405"), ("other", "404")):
        key = (method, "unmatched", status)
        assert after.get(key, 0) - before.get(key, 0) == 1, (key, after)
    # Methods no route serves are counted under one label: scanners cannot add series.
    assert not any(method == "PROPFIND" for method, _, _ in after)


@live
async def test_an_unmatched_path_gets_hsts_when_served_over_https(
    database_url: str, fal: FalEmulator, http: httpx.AsyncClient,
) -> None:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(database_url, fal, None,
                                                              APP_URL="https://jobs.example.com")))
    try:
        answer = await http.get(f"{running.url}/nope")
        assert answer.status_code == 404
        assert answer.headers["strict-transport-security"] == "max-age=63072000"
        assert answer.headers["x-request-id"]
    finally:
        await running.stop()


@live
async def test_a_newline_in_a_path_forges_no_text_log_line(service: RunningServer, http: httpx.AsyncClient) -> None:
    forged = "2026-12-03T00:00:00.000+00:00 INFO    service.http: request method=POST path=/api/jobs status=202"
    with request_lines(TextFormatter()) as stream:
        answer = await http.get(f"{service.url}/api/jobs/x%0A{forged.replace(' ', '%20')}",
                                headers={"X-Request-Id": "newline-probe"})
        assert answer.status_code in (400, 401, 404)
        [line] = await logged(stream, 1)
    assert "request_id=newline-probe" in line
    assert f'path="/api/jobs/x\\n{forged}"' in line, line


def _record(**fields: object) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "service.http", "levelname": "INFO", "levelno": logging.INFO,
                                  "msg": "request", **fields})


def test_text_values_are_one_token_each() -> None:
    """The review's reproduction, with the formatter itself: the path's newline and spaces stay
    inside its value, so neither a second line nor a second `status=` field appears."""
    path = "/api/jobs/x\n2026-12-03T00:00:00.000+00:00 INFO    service.http: request method=POST path=/api/jobs status=202"
    line = TextFormatter().format(_record(method="GET", path=path, status=404, note='say "hi"\\', bell="\x07\u2028"))
    assert "\n" not in line and "\u2028" not in line
    fields = dict(token.split("=", 1) for token in shlex.split(line.partition(": request ")[2]))
    assert fields == {"method": "GET", "path": path.replace("\n", "\\n"), "status": "404", "note": 'say "hi"\\',
                      "bell": "\\u0007\\u2028"}, line
    assert " method=GET " in line  # plain values stay as they are


def test_fields_are_redacted_like_messages() -> None:
    record = _record(header="Bearer fj_abcdefghijklmnop", source="https://v3.fal.media/x.png?token=secret", n=3)
    for line in (TextFormatter().format(record), JsonFormatter().format(record)):
        assert "fj_abcdefghijklmnop" not in line and "secret" not in line, line
        assert "[redacted]" in line
