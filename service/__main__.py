"""`python3 -m service ...`: sets up the project's virtualenv on first use, then runs the CLI.

Only the standard library is used until we run inside `.venv`, so that a fresh machine with
nothing but python3 and pip gets from a clone to a running service in one command. A second run
skips the install unless pyproject.toml changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".fal-jobs-installed"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted_stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _ensure_venv() -> None:
    wanted = _wanted_stamp()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    # Two commands started at once (the service and the CLI, two test runs) install only once.
    with open(ROOT / ".venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _venv_python().exists():
            print("fal-jobs: creating .venv (first run only)", file=sys.stderr, flush=True)
            venv.EnvBuilder(with_pip=True).create(VENV)
        if STAMP.exists() and STAMP.read_text() == wanted:
            return
        print("fal-jobs: installing dependencies into .venv", file=sys.stderr, flush=True)
        pip = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
        STAMP.write_text(wanted)


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def main() -> None:
    if os.environ.get("FAL_JOBS_NO_VENV") != "1":
        if not _in_project_venv():
            _ensure_venv()
            os.chdir(ROOT)
            python = str(_venv_python())
            os.execv(python, [python, "-m", "service", *sys.argv[1:]])
        _ensure_venv()
    from service.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
