"""`check`: the static checks, ruff on the project and mypy on service/, configured in pyproject.toml,
and `tsc --noEmit` over the TypeScript client in clients/js (service/cli/node.py).

They run from the project's virtualenv (the dev set, which `python3 -m service` installs for this
command as for `test`), so every machine checks with the versions the lock file pins.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from service.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ruff", ("-m", "ruff", "check", ".")),
    ("mypy", ("-m", "mypy")),
    ("tsc", ("-m", "service.cli.node", "typecheck")),
)
"""Each check's name and its arguments to this interpreter (mypy's files come from pyproject.toml)."""


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    return run_checks(CHECKS)


def run_checks(checks: Sequence[tuple[str, Sequence[str]]]) -> int:
    """Run every check, even after one fails, so one run lists all that is wrong; 1 when any failed."""
    failed = [name for name, arguments in checks
              if subprocess.run([sys.executable, *arguments], cwd=PROJECT_ROOT, check=False).returncode != 0]
    if failed:
        print(f"fal-jobs: check failed: {', '.join(failed)} (its output above says what to fix)", file=sys.stderr)
        return 1
    print("fal-jobs: checks passed: " + ", ".join(name for name, _ in checks), file=sys.stderr)
    return 0
