"""The README's run command, as a newcomer uses it: embedded Postgres, the CLI beside the running
service, Ctrl-C, and a restart that finds the data still there."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_socket

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def embedded_env() -> dict[str, str]:
    pgdata = Path(tempfile.mkdtemp(prefix="fal-jobs-quickstart-")) / "pgdata"
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "FAL_KEY", "APP_URL")}
    # INFO: the request log is written, so the test below can check what it holds.
    env.update(EMBEDDED_PGDATA=str(pgdata), PORT=str(port), LOG_LEVEL="INFO")
    yield env
    shutil.rmtree(pgdata.parent, ignore_errors=True)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not become ready")


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return process.wait(timeout=30)


def test_run_command_uses_embedded_postgres_and_keeps_data_across_restarts(embedded_env: dict[str, str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{embedded_env['PORT']}"
    pgdata = Path(embedded_env["EMBEDDED_PGDATA"])
    log = tmp_path / "service.log"

    service = start(embedded_env, log)
    try:
        ready = wait_ready(url, service)
        assert log.read_text().count("embedded postgres ready") == 1, "each start-up line once"
        # With no user yet, it made a local demo user and printed a one-time sign-in link.
        links = re.findall(r"open this one-time link to sign in: (\S+)", log.read_text())
        assert len(links) == 1 and links[0].startswith(f"{url}/?token=")
        signed_in = httpx.get(links[0])
        assert signed_in.status_code == 303 and "fal_jobs_session=" in signed_in.headers["set-cookie"]
        assert httpx.get(f"{url}/api/session", cookies=signed_in.cookies).json()["name"] == "demo"
        assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "listener": "ok"}
        # The CLI attaches to the same embedded server while the service runs.
        created = subprocess.run([sys.executable, "-m", "service", "users", "create", "alice"], cwd=ROOT,
                                 env=embedded_env, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        api_key = created.stdout.strip()
        assert api_key.startswith("fj_") and api_key not in created.stderr
        auth = {"Authorization": f"Bearer {api_key}"}
        # Nothing configured: the local fal emulator (a process run starts beside the service) answers, webhooks included.
        created = httpx.post(f"{url}/api/jobs", headers=auth, timeout=30,
                             json={"type": "image", "model_id": "fal-ai/flux/schnell", "input": {"prompt": "a kite"}})
        assert created.status_code == 202, created.text
        job = created.json()
        deadline = time.monotonic() + 30
        while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = httpx.get(f"{url}/api/jobs/{job['request_id']}", headers=auth).json()
        assert job["status"] == "completed" and job["mode"] == "webhook"
        assert httpx.get(job["result"]["images"][0]["url"]).headers["content-type"] == "image/png"
        # A stream token travels in the query string, as EventSource sends it.
        stream_token = created.json()["stream_token"]
        ended = httpx.get(f"{url}/api/jobs/{job['request_id']}/events?token={stream_token}", timeout=30)
        assert ended.status_code == 200 and "completed" in ended.text
    finally:
        code = stop(service)
    assert code == 0, log.read_text()
    assert not (pgdata / "postmaster.pid").exists(), "Ctrl-C stops the embedded Postgres it started"

    service = start(embedded_env, log)
    try:
        wait_ready(url, service)
        response = httpx.get(f"{url}/api/jobs", headers={"Authorization": f"Bearer {api_key}"})
        assert response.status_code == 200, "the user made before the restart is still there"
    finally:
        assert stop(service) == 0, log.read_text()
    assert_no_secret_logged(log.read_text(), api_key=api_key, sign_in_token=links[0].split("?token=")[1],
                            stream_token=stream_token, stream_path=f"/api/jobs/{job['request_id']}/events")


def assert_no_secret_logged(text: str, *, api_key: str, sign_in_token: str, stream_token: str, stream_path: str) -> None:
    lines = text.splitlines()
    requests = [json.loads(line) for line in lines if line.startswith("{") and '"msg":"request"' in line]
    paths = {entry["path"] for entry in requests}
    # The requests that carried secrets were logged, each without its query string.
    assert {"/", stream_path, "/api/jobs"} <= paths, sorted(paths)
    assert not [p for p in paths if "?" in p or "token" in p], paths
    assert api_key not in text, "a key never reaches a log line"
    assert stream_token not in text, "a stream token never reaches a log line"
    # The sign-in link is printed once, on purpose, for the person who started the service.
    [printed] = [line for line in lines if sign_in_token in line]
    assert printed.startswith("fal-jobs: open this one-time link")
