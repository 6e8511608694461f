"""A large Schemathesis run against the live service: all checks, all phases, thousands of cases.

The suite's own run (tests/test_openapi.py) is bounded to fit its time; this one is for a closing
note or a release. It starts the service as its own process (`python -m service run`) on a
scratch database, creates a user, runs `st run`, prints Schemathesis' summary and a one-line
result, and drops the database. Nothing here asserts; the exit code is Schemathesis'.

    .venv/bin/python bench/schemathesis.py --max-examples 250 --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import admin_execute, free_port, open_server, with_database  # noqa: E402
from service.auth.api_keys import create_user  # noqa: E402
from service.db.migrations import apply_migrations  # noqa: E402
from service.db.pool import create_pool  # noqa: E402
from tests.test_openapi import run_schemathesis  # noqa: E402


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


async def main_async(args: argparse.Namespace) -> int:
    server_dsn, embedded = open_server(args.database_url)
    name = f"fal_jobs_schemathesis_{uuid.uuid4().hex[:8]}"
    await admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    process = None
    try:
        apply_migrations(dsn)
        pool = await create_pool(dsn, min_size=1, max_size=1)
        user = await create_user(pool, "schemathesis")
        await pool.close()
        port = free_port()
        # The emulator at its fast pace: `run`'s demo pace keeps jobs open for seconds, and every
        # ?wait=300 case on an open job would hold a Schemathesis worker that long.
        env = {**os.environ, "DATABASE_URL": dsn, "PORT": str(port), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
               "EMULATOR_PACE": "fast"}
        env.pop("FAL_KEY", None)
        env.pop("APP_URL", None)
        log = open(args.log, "wb")  # noqa: SIM115 - the service writes here until it stops
        process = subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, url, process)
        started = time.monotonic()
        code, output = await run_schemathesis(url, user.api_key, max_examples=args.max_examples, seed=args.seed,
                                              extra=("--request-timeout", "60"))
        elapsed = time.monotonic() - started
        report = output[output.index("FAILURES"):] if "FAILURES" in output else output.split("SUMMARY")[-1]
        print(report.strip())
        generated = re.search(r"(\d+) generated", output)
        passed = re.search(r"(\d+) passed", output.split("Test cases:")[-1])
        failures = re.search(r"(\d+) unique failures?", output)
        print(f"\nschemathesis: {generated[1] if generated else '?'} cases generated, {passed[1] if passed else 0} passed, "
              f"{failures[1] if failures else 0} failures, all checks, phases examples/coverage/fuzzing/stateful, "
              f"max-examples {args.max_examples}, {elapsed:.0f} s, exit {code}")
        return code
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        await admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=250, help="Schemathesis cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="fix Schemathesis' seed to replay a run")
    parser.add_argument("--database-url", default=None, help="a Postgres server (else DATABASE_URL, else embedded)")
    parser.add_argument("--log", default=os.path.join(tempfile.gettempdir(), "fal-jobs-schemathesis-service.log"),
                        help="where the service's log lines go")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
