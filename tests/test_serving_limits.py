"""What the Procfile's web process refuses: a public deploy (an https APP_URL) does not start with
/metrics open to anyone. Real processes."""

from __future__ import annotations

import asyncio
import subprocess

from service.serving import check_can_serve
from tests.conftest import free_socket, service_settings
from tests.test_production_stance import ROOT, procfile_env, procfile_web_command

PUBLIC = {"FAL_KEY": "fal-key:secret", "APP_URL": "https://jobs.example.com"}


async def test_a_public_deploy_refuses_to_start_without_metrics_token(database_url: str) -> None:
    port = free_socket().getsockname()[1]
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", procfile_web_command()], env=procfile_env(database_url, port, **PUBLIC),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "METRICS_TOKEN" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # With a token it may; without https (development, a private network) it need not have one.
    check_can_serve(service_settings(database_url, **PUBLIC, METRICS_TOKEN="m" * 32))
    check_can_serve(service_settings(database_url, FAL_KEY="fal-key:secret", APP_URL="http://10.0.0.5:8000"))
