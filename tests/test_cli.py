"""The CLI as a person runs it: exit codes and the messages that say what went wrong."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest

from service.testing import loopback_socket as free_socket
from service.testing import migrated_database

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("FAL_KEY", "APP_URL")}
    environment.update(DATABASE_URL=database_url, **env)
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


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


def test_check_runs_ruff_mypy_and_tsc_and_all_pass(database_url: str) -> None:
    checked = cli("check", database_url=database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "fal-jobs: checks passed: ruff, mypy, tsc" in checked.stderr
    assert "Success: no issues found" in checked.stdout, checked.stdout


def test_check_runs_every_check_and_fails_naming_the_ones_that_failed(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli.check import run_checks

    code = run_checks([("first", ("-c", "raise SystemExit(3)")), ("second", ("-c", "print('ran')")),
                       ("third", ("-c", "raise SystemExit(1)"))])
    assert code == 1
    assert capsys.readouterr().err.strip() == "fal-jobs: check failed: first, third (its output above says what to fix)"


def _environment(**env: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("FAL_KEY", "APP_URL", "DATABASE_URL", "PORT", "LOG_FORMAT", "WEB_CONCURRENCY")}
    environment.update(env)
    return environment


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_busy_port_is_refused_in_one_sentence_before_anything_starts(command: str, tmp_path: Path) -> None:
    other = free_socket()
    other.listen()  # another server holds the port
    port = other.getsockname()[1]
    pgdata = tmp_path / "pgdata"
    # `run` with nothing configured would start an embedded Postgres here; `serve` needs a database URL.
    database = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"} if command == "serve" else {}
    try:
        refused = subprocess.run([sys.executable, "-m", "service", command], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120, check=False, env=_environment(
                                     PORT=str(port), EMBEDDED_PGDATA=str(pgdata), FAL_EMULATOR="1", **database))
    finally:
        other.close()
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()  # one sentence: no traceback, no log line, no sign-in link
    assert re.fullmatch(rf"fal-jobs: port {port} on 127\.0\.0\.1 is already in use \(another fal-jobs\?\); "
                        r"set PORT=\d+ \(or in \.env\) to use another", line), line
    assert not pgdata.exists(), "no database was started"


@pytest.mark.parametrize("command", ["run", "serve"])
def test_help_lists_the_settings_that_matter(command: str) -> None:
    shown = subprocess.run([sys.executable, "-m", "service", command, "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    for setting in ("HOST, PORT", ".env", "DATABASE_URL", "FAL_KEY", "APP_URL", "WEB_CONCURRENCY"):
        assert setting in shown.stdout, (setting, shown.stdout)


def test_user_names_compare_without_case_and_a_taken_one_points_to_keys_create(database_url: str) -> None:
    name = f"Case-{uuid.uuid4().hex[:8]}"
    created = cli("users", "create", name, database_url=database_url)
    assert created.returncode == 0, created.stderr
    again = cli("users", "create", name.upper(), database_url=database_url)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == (f"fal-jobs: name: a user named {name!r} already exists; to give it another "
                                    f"API key: python3 -m service keys create {name}")
    # Every command finds the user by any spelling of its name.
    key = cli("keys", "create", name.lower(), database_url=database_url)
    assert key.returncode == 0 and key.stdout.startswith("fj_"), key.stderr
    listed = cli("keys", "list", name.upper(), database_url=database_url)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed.stderr
    link = cli("users", "sign-in", name.lower(), database_url=database_url, APP_URL="https://jobs.example.com")
    assert link.returncode == 0 and link.stdout.startswith("https://jobs.example.com/?token="), link.stderr
    users = cli("users", "list", database_url=database_url)
    assert [line.split()[0] for line in users.stdout.splitlines()].count(name) == 1


def test_the_migration_keeps_the_earliest_of_names_that_differ_only_in_case(server_dsn: str) -> None:
    from piccolo_migrations import fal_jobs_2026_12_05t09_00_00_000000_user_names_without_case as migration

    async def check(dsn: str) -> list[str]:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DROP INDEX fal_users_name_lower")  # as before the migration
            for age, name in enumerate(("bob", "BOB", "Bob", "carol")):
                await connection.execute("INSERT INTO fal_users (id, name, created_at) VALUES ($1, $2, now() - $3 * "
                                         "interval '1 minute')", str(uuid.uuid4()), name, 10 - age)
            await connection.execute(migration.FORWARDS_SQL)
            rows = await connection.fetch("SELECT id, name FROM fal_users ORDER BY created_at, id")
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.execute("INSERT INTO fal_users (id, name) VALUES ('x', 'CAROL')")
        finally:
            await connection.close()
        names = [row["name"] for row in rows]
        assert names[1:3] == [f"BOB-{rows[1]['id']}", f"Bob-{rows[2]['id']}"]
        return names

    with migrated_database(server_dsn, "fal_jobs_cases") as dsn:
        assert [name.partition("-")[0] for name in asyncio.run(check(dsn))] == ["bob", "BOB", "Bob", "carol"]


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], starts: str, timeout: float = 180) -> list[str]:
    """The log's lines once one starting with `starts` is there (the service's start-up takes a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if any(line.startswith(starts) for line in lines):
            return lines
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no line {starts!r}: {log.read_text()}")


def test_run_prints_where_it_is_and_the_sign_in_link_last(server_dsn: str, tmp_path: Path) -> None:
    """Two processes and the emulator: once every one has started, one block, last; the emulator's own
    lines (its random port) stay off the terminal; no line twice; the demo user has no hidden key."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    with migrated_database(server_dsn, "fal_jobs_run") as dsn:
        env = _environment(DATABASE_URL=dsn, PORT=str(port), LOG_LEVEL="INFO", WEB_CONCURRENCY="2")
        process = subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env,
                                   stdout=log.open("ab"), stderr=subprocess.STDOUT)
        try:
            # Read before any request is made: a request would log a line of its own after the block.
            lines = _wait_for_line(log, process, "fal-jobs: FAL_KEY is not set")
            # Another shell, without this one's PORT: the link is to the running service all the same.
            link = cli("users", "sign-in", "demo", database_url=dsn)
            assert link.returncode == 0 and link.stdout.startswith(f"{url}/?token="), (link.stdout, link.stderr)
            assert httpx.get(link.stdout.strip()).status_code == 303
            keys = cli("keys", "list", "demo", database_url=dsn)
            assert (keys.returncode, keys.stdout) == (0, ""), "the demo user was made without an API key"
            made = cli("keys", "create", "demo", database_url=dsn)
            assert made.returncode == 0 and made.stdout.startswith("fj_"), made.stderr
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0, log.read_text()
    ready, sign_in, emulator = lines[-3:]
    assert ready == f"fal-jobs: ready at {url} (2 processes; database: DATABASE_URL)", lines
    assert sign_in.startswith(f"fal-jobs: open this one-time link to sign in: {url}/?token="), lines
    assert emulator.startswith("fal-jobs: FAL_KEY is not set: jobs go to the local fal emulator, which makes "
                               "test images and videos"), lines
    entries = [msgspec.json.decode(line) for line in lines if not line.startswith("fal-jobs: ")]
    # Every start-up line came before the block: both processes', and the fal-jobs start-up line
    # names the emulator.
    assert sum(entry["msg"] == "Application startup complete." for entry in entries) == 2, lines
    started = [entry for entry in entries if entry["msg"] == "fal-jobs started"]
    assert [(entry["fal"], entry["webhooks"]) for entry in started] == [("emulator", True)] * 2, started
    # The only address on screen is the service's: no emulator line, no "Uvicorn running on".
    assert not [line for line in lines if "Uvicorn running on" in line or "emulator listening" in line], lines
    assert set(re.findall(r"http://127\.0\.0\.1:(\d+)", "\n".join(lines))) == {str(port)}, lines
    # No line twice (the workers' own lines carry their pid, or come once per worker, as counted above).
    once = [line for line in lines if line.startswith("fal-jobs: ")] + [
        str(entry["msg"]) for entry in entries if entry["logger"] not in ("uvicorn.error", "service.app")]
    assert len(once) == len(set(once)), lines


def test_the_emulators_log_joins_ours_with_its_info_lines_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    from service.cli.local_fal import _relay_log

    said = [{"ts": "t", "level": "info", "logger": "uvicorn.error", "msg": "Uvicorn running on http://127.0.0.1:1"},
            {"ts": "t", "level": "warning", "logger": "service.emulator", "msg": "webhook failed", "attempt": 2}]
    stream = io.BytesIO(b"".join(msgspec.json.encode(entry) + b"\n" for entry in said) + b"Traceback (most recent)\n")
    with caplog.at_level(logging.DEBUG):
        _relay_log(stream)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("fal-emulator.uvicorn.error", logging.DEBUG, "Uvicorn running on http://127.0.0.1:1"),
        ("fal-emulator.service.emulator", logging.WARNING, "webhook failed"),
        ("fal-emulator", logging.WARNING, "Traceback (most recent)"),
    ]
    assert caplog.records[1].__dict__["attempt"] == 2
