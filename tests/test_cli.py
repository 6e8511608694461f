"""The CLI as a person runs it: exit codes and the messages that say what went wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, database_url: str, limit_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("FAL_KEY", "APP_URL")}
    environment.update(DATABASE_URL=database_url, **env)
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=limit_s, check=False)


def test_migrate_then_users_create_and_sign_in(database_url: str) -> None:
    migrated = cli("migrate", database_url=database_url)
    assert (migrated.returncode, migrated.stderr.strip().splitlines()[-1]) == (0, "fal-jobs: migrations applied")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = cli("users", "create", name, database_url=database_url)
    assert created.returncode == 0 and created.stdout.strip().startswith("fj_"), created.stderr
    again = cli("users", "create", name, database_url=database_url)
    assert again.returncode == 1 and name in again.stderr and again.stdout == "", again.stderr
    link = cli("users", "sign-in", name, database_url=database_url, APP_URL="https://jobs.example.com")
    assert link.returncode == 0 and link.stdout.startswith("https://jobs.example.com/?token="), link.stderr


def test_sign_in_for_a_user_that_does_not_exist(database_url: str) -> None:
    missing = cli("users", "sign-in", "nobody-at-all", database_url=database_url)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no user named 'nobody-at-all'" in missing.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("frobnicate",), "invalid choice: 'frobnicate'"),
    (("users",), "required: users_command"),
    (("users", "sign-in"), "required: name"),
])
def test_bad_arguments_exit_2_with_usage(database_url: str, args: tuple[str, ...], message: str) -> None:
    bad = cli(*args, database_url=database_url)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: python -m service") and message in bad.stderr, bad.stderr


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_numeric_setting_of_nan_or_inf_stops_the_cli_naming_the_variable(database_url: str, value: str) -> None:
    refused = cli("migrate", database_url=database_url, RECONCILE_INTERVAL_S=value)
    assert refused.returncode == 2 and "configuration error: RECONCILE_INTERVAL_S" in refused.stderr, refused.stderr
    assert value not in refused.stderr.split("RECONCILE_INTERVAL_S", 1)[1], "the message names the rule, not the value"


CHECK_LIMIT_S = 360
"""A first check installs the example's node_modules (next: about a minute on a loaded machine)."""


@pytest.mark.timeout(CHECK_LIMIT_S + 30)
def test_check_runs_ruff_mypy_and_tsc_over_the_package_and_the_example_and_all_pass(database_url: str) -> None:
    checked = cli("check", database_url=database_url, limit_s=CHECK_LIMIT_S)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "fal-jobs: checks passed: ruff, mypy, tsc, tsc examples/nextjs" in checked.stderr
    assert "Success: no issues found" in checked.stdout, checked.stdout


def test_check_runs_every_check_and_fails_naming_the_ones_that_failed(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli.check import run_checks

    code = run_checks([("first", ("-c", "raise SystemExit(3)")), ("second", ("-c", "print('ran')")),
                       ("third", ("-c", "raise SystemExit(1)"))])
    assert code == 1
    assert capsys.readouterr().err.strip() == "fal-jobs: check failed: first, third (its output above says what to fix)"
