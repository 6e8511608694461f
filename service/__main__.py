"""`python3 -m service ...`: sets up the project's virtualenv on first use, then runs the CLI.

Only the standard library is used until we run inside `.venv`, so that a fresh machine with
nothing but python3 and pip gets from a clone to a running service in one command. Installs come
from the lock files with plain pip (`pip install -r requirements/<set>.lock`, then the project
itself with `--no-deps`): `test` and `check` install the dev set, every other command only what
serving needs. A second run skips the install unless the lock file, pyproject.toml or Python
changed.
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
LOCKS = ROOT / "requirements"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _stamp(dependency_set: str) -> Path:
    return VENV / f".fal-jobs-installed-{dependency_set}"


def _wanted_stamp(dependency_set: str) -> str:
    digest = hashlib.sha256((LOCKS / f"{dependency_set}.lock").read_bytes())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _installed(dependency_set: str) -> bool:
    """The dev set includes everything the runtime set has."""
    candidates = ("dev",) if dependency_set == "dev" else ("runtime", "dev")
    for name in candidates:
        stamp = _stamp(name)
        if stamp.exists() and stamp.read_text() == _wanted_stamp(name):
            return True
    return False


def _ensure_venv(dependency_set: str) -> None:
    if _installed(dependency_set):
        return
    # Two commands started at once (the service and the CLI, two test runs) install only once.
    with open(ROOT / ".venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _venv_python().exists():
            print("fal-jobs: creating .venv (first run only)", file=sys.stderr, flush=True)
            venv.EnvBuilder(with_pip=True).create(VENV)
        if _installed(dependency_set):
            return
        print(f"fal-jobs: installing the {dependency_set} dependencies into .venv (requirements/{dependency_set}.lock)",
              file=sys.stderr, flush=True)
        pip = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-r", str(LOCKS / f"{dependency_set}.lock")], check=True, cwd=ROOT)
        subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)], check=True, cwd=ROOT)
        _stamp(dependency_set).write_text(_wanted_stamp(dependency_set))


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def main() -> None:
    if os.environ.get("FAL_JOBS_NO_VENV") != "1":
        dependency_set = "dev" if sys.argv[1:2] in (["test"], ["check"]) else "runtime"
        if not _in_project_venv():
            _ensure_venv(dependency_set)
            os.chdir(ROOT)
            python = str(_venv_python())
            os.execv(python, [python, "-m", "service", *sys.argv[1:]])
        _ensure_venv(dependency_set)
    from service.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
