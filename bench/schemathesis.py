"""A large Schemathesis run against the live service: all checks, all phases, thousands of cases.

The suite's own run (tests/test_openapi.py) is bounded to fit its time; this script runs that same
test, on the same live service (uvicorn on a loopback port, the real Postgres, the emulator on its
own port), with many more cases per operation and a random seed, then prints Schemathesis'
summary and a one-line result. Nothing here asserts; the exit code is the test's.

    .venv/bin/python bench/schemathesis.py --max-examples 300 --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=300, help="Schemathesis cases per operation and phase")
    parser.add_argument("--seed", default="random", help="an integer to replay a run; random by default")
    parser.add_argument("--database-url", default=None, help="a Postgres server (else DATABASE_URL, else embedded)")
    args = parser.parse_args()
    env = {**os.environ, "SCHEMATHESIS_MAX_EXAMPLES": str(args.max_examples), "SCHEMATHESIS_SEED": args.seed}
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_openapi.py",
         "-k", "schemathesis_finds_no_failure"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    output = done.stdout + done.stderr
    print(output[output.index("SUMMARY"):] if "SUMMARY" in output else output[-6000:])
    generated = re.search(r"(\d+) generated", output)
    passed = re.search(r"(\d+) passed,", output.split("Test cases:")[-1])
    failures = re.search(r"(\d+) unique failures?", output)
    seed = re.search(r"Seed: (\d+)", output)
    print(f"schemathesis: {generated[1] if generated else '?'} cases generated, {passed[1] if passed else '?'} passed, "
          f"{failures[1] if failures else 0} failures; all checks, phases examples/coverage/fuzzing/stateful, "
          f"max-examples {args.max_examples}, seed {seed[1] if seed else '?'}, {time.monotonic() - started:.0f} s, "
          f"exit {done.returncode}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
