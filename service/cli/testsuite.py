"""`test`: the test suite under pytest, with the browser its browser tests drive."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from service.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import argparse


def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    import pytest

    os.chdir(PROJECT_ROOT)
    _ensure_chromium()
    return int(pytest.main(["-q", *args.pytest_args]))


def _ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium (a browser download is impossible here). Install
    it when missing and we may; otherwise those tests fail saying so."""
    import shutil
    import subprocess

    if shutil.which("chromium") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print("fal-jobs: installing Debian's chromium for the browser tests", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"fal-jobs: {' '.join(command)} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return
