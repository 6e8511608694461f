"""The README's first job over curl, run as written: the shell blocks of "Your first job in two
minutes", in order, against `python3 -m service run` with nothing configured. A README whose
commands drift from the API fails here, not in a newcomer's terminal."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_quick_start import ROOT, embedded_env, start, stop, wait_ready

__all__ = ["embedded_env"]  # the fixture, imported for this module's test

README_PORT = "127.0.0.1:8000"


def curl_walkthrough() -> list[str]:
    """The fenced blocks of the README's curl walkthrough, from its create-a-user step to the download."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your first job in two minutes", 1)[1].split("\n## ", 1)[0]
    walkthrough = section.split("**With curl**", 1)[1]
    return re.findall(r"^```\n(.*?)^```$", walkthrough, flags=re.S | re.M)


def test_the_readme_names_the_walkthrough_steps() -> None:
    blocks = curl_walkthrough()
    joined = "\n".join(blocks)
    # Create a user, create a job (the exact body), wait for it, download its first output.
    assert blocks[0].startswith("KEY=$(python3 -m service users create"), blocks[0]
    assert '"input":{"prompt":' in joined and "?wait=" in joined and "/outputs/0" in joined, joined


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's walkthrough uses curl, not installed here")
def test_the_readme_curl_walkthrough_makes_an_image(embedded_env: dict[str, str], tmp_path: Path) -> None:
    port = embedded_env["PORT"]
    url = f"http://127.0.0.1:{port}"
    script = "set -euo pipefail\n" + "\n".join(
        block.replace(README_PORT, f"127.0.0.1:{port}") for block in curl_walkthrough()
    )
    log = tmp_path / "service.log"
    service = start(embedded_env, log)
    try:
        wait_ready(url, service)
        # Run where a newcomer would: the CLI found through the project (PYTHONPATH stands in for
        # being in the clone's folder, so the download lands in tmp_path, not in the repository).
        env = {**embedded_env, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    finally:
        assert stop(service) == 0, log.read_text()
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    waited = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert waited and waited[-1]["status"] == "completed", done.stdout
    image = (tmp_path / "fox.png").read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n"), image[:64]
