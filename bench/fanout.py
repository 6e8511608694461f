"""Fan-out benchmark: a fal webhook -> the Server-Sent Event stream that watches its job, with many
other subscribers connected, next to "the seed's way" (every browser polls GET /api/jobs/{id} every 2 s).

    python bench/fanout.py [--subscribers 10,1000,10000] [--broadcast 10,1000] [--pollers 10,1000]
                           [--webhooks 200] [--database-url URL] [--profile-service FILE]

Postgres is --database-url, else DATABASE_URL, else an embedded pgserver in a temporary folder.
The bench creates a database `fal_jobs_fanout_<random>` there, applies the migrations, and drops it
at the end (also on errors and Ctrl-C). All traffic goes to 127.0.0.1.

What runs where:
  * this process: the fal emulator under uvicorn (only to publish the JWKS the webhooks are signed
    with), the webhook sender, and every client. Its event loop is uvloop.
  * the service: `python -m service run`, a separate process, started afresh for every step so
    that one step's RSS is not masked by memory another step freed (CPython keeps freed memory).

Primary step, `sse-job` (S subscribers): the product's case, S browsers each watching THEIR OWN job
and mostly idle. S pending jobs are created in the database, spread over ceil(S / 100) users
(--subscribers-per-user), plus W spare ones, and S subscribers open `GET /api/jobs/{id}/events
?token=`, one per job, with a job-scoped stream token as a browser's EventSource uses (the bench
mints the tokens with the service's StreamTokens and a STREAM_TOKEN_SECRET it gives the service,
instead of S calls of POST /api/stream-tokens; the warm-up exercises that endpoint once). The step
waits until every subscriber has its job's snapshot. Then W rounds, one at a time: a random job
whose subscriber is still open gets its signed "OK" webhook, and the time runs from just before
the POST is written to that one subscriber receiving the `completed` event. A job stream ends after
its terminal event, so the bench then closes that subscriber and opens a new one on a spare pending
job (and waits for its snapshot) before the next round: S subscribers are open during every round,
and each round's event goes to exactly one of them. A short gap (--gap-ms) separates the rounds.

Secondary step, `broadcast` (S subscribers, only S in --broadcast): S clients on ONE user's stream
`GET /api/events?token=`, and W jobs of that user that all S watch, so every event is written to S
sockets. Its cost grows with S by nature (one write per subscriber); it is shown for the
per-delivery cost, not as the product's case. The W jobs are created pending *before* the
subscribers connect, so no `pending` event is fanned out during the measurement. Rounds run one at
a time: the next webhook waits for the previous round's last delivery plus the gap.

Two clocks per delivery:
  * app: time.perf_counter() when this process parsed the event. With many busy clients on one
    core it includes the wait for this process to get round to that socket (the load generator's
    own queueing), so in `broadcast` it overstates what a browser would see. In `sse-job` only one
    socket is readable per round, so app and wire agree closely.
  * wire: the kernel's receive timestamp of the segment (SO_TIMESTAMPNS, CLOCK_REALTIME) minus
    time.time_ns() taken just before the POST. On loopback that is when the service's write hit
    the socket: the service's share, without the load generator's.

The SSE clients are raw non-blocking sockets with loop.add_reader (no task, no StreamReader per
client); HTTP chunked framing and the `event:`/`id:`/`data:` lines are parsed by hand. Pollers are
asyncio Protocols driven by call_at timers: no task per client either.

Poll step (P clients): each keeps one keep-alive connection and GETs /api/jobs/{id} (Bearer API
key) every 2 s with a random phase; all follow a sequence of jobs, moving to the next job when
they see the current one completed. A webhook completes the next job every 2.5 s; the latency is
webhook POST -> the first poll response that shows `completed`.

Database load: the delta of `pg_stat_database.xact_commit` of the bench database over a window,
read from a connection to another database (so the reads do not count). Postgres flushes these
counters from each backend at most once a second (pending counts of a backend that went idle can
land up to ~10 s later), so each edge of a window is uncertain by about one second of activity;
the idle window (every subscriber open, nothing else) starts 11 s after the last database work,
so it is exact. In `sse-job` the latency window also holds the W re-subscribes (each stream open
reads the job's owner and snapshot), so its db tx are per round = one webhook + one open; the
`broadcast` rows have webhooks only.

Where each part lives: this file holds the flags and the run; bench/fanout_sse.py the raw-socket
SSE subscribers; fanout_http.py the keep-alive connection and the webhook sender; fanout_setup.py
the per-step service, users, jobs and warm-up; fanout_sse_steps.py the `sse-job` and `broadcast`
steps; fanout_poll.py the pollers and their step; fanout_meters.py the CPU and transaction
counters; fanout_report.py the tables; harness.py what every bench shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from bench.fanout_meters import XactCounter  # noqa: E402
from bench.fanout_poll import poll_step  # noqa: E402
from bench.fanout_report import BROADCAST_MODE, JOB_MODE, POLL_MODE, Row, log, print_tables  # noqa: E402
from bench.fanout_setup import Context  # noqa: E402
from bench.fanout_sse_steps import broadcast_step, job_step  # noqa: E402
from bench.harness import (  # noqa: E402
    BenchFailure,
    Emulator,
    add_processes_argument,
    open_server,
    quiet_logging,
    scratch_database,
    start_emulator,
)
from service.auth.stream_tokens import StreamTokens  # noqa: E402

OPEN_BATCH = 500


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def parse_counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return values


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    quiet_logging()
    limits = raise_nofile()
    needed = max([*args.subscribers, *args.broadcast, *args.pollers, 0]) + 200
    if limits[0] != resource.RLIM_INFINITY and limits[0] < needed:
        raise BenchFailure(f"RLIMIT_NOFILE is {limits[0]} (hard {limits[1]}); {needed} needed")
    log(f"RLIMIT_NOFILE {limits[0]} (inherited by the service)")

    server_dsn, pgserver_handle = open_server(args.database_url)
    rows: list[Row] = []
    pg_version = "?"
    log_dir = Path(tempfile.mkdtemp(prefix="fal-jobs-fanout-"))
    try:
        async with scratch_database(server_dsn, "fal_jobs_fanout", log) as (database, dsn):
            pg_version = await run_steps(args, server_dsn, database, dsn, log_dir, started + args.max_seconds, rows)
    finally:
        if pgserver_handle is not None:
            with contextlib.suppress(Exception):
                pgserver_handle.cleanup()
    order = {JOB_MODE: 0, BROADCAST_MODE: 1, POLL_MODE: 2}
    print_tables(sorted(rows, key=lambda row: order[row.mode]), os.cpu_count() or 0, pg_version, args.processes)
    print(f"\ntotal {time.monotonic() - started:.0f} s; service logs in {log_dir}")
    return 1 if any(row.error for row in rows) else 0


async def run_steps(args: argparse.Namespace, server_dsn: str, database: str, dsn: str, log_dir: Path,
                    deadline: float, rows: list[Row]) -> str:
    """Every step in turn on the scratch database, each row appended to `rows` as it ends (a failed
    or skipped step gets a row that says so); returns the server's version."""
    emulator: Emulator | None = None
    admin: asyncpg.Connection | None = None
    try:
        admin = await asyncpg.connect(server_dsn)
        pg_version = str(await admin.fetchval("SHOW server_version")).split()[0]
        fal_key = "bench-fal-key:" + uuid.uuid4().hex
        emulator = await start_emulator(fal_key)
        token_secret = secrets.token_urlsafe(32)
        ctx = Context(server_dsn, dsn, database, XactCounter(admin, database), emulator.emulator, fal_key,
                      log_dir, deadline, args, token_secret, StreamTokens(token_secret, ttl_s=3600))
        largest = max(args.subscribers) if args.subscribers else 0
        # Run order = priority (the secondary broadcast last, so that the budget never skips the
        # seed's way); printed: primary, then broadcast, then poll.
        steps: list[tuple[str, int, float, Any]] = [
            *((JOB_MODE, count, 60.0, lambda c: job_step(ctx, c, profile=bool(args.profile_service) and c == largest))
              for count in args.subscribers),
            *((POLL_MODE, count, args.poll_window_s + 20, lambda c: poll_step(ctx, c)) for count in args.pollers),
            *((BROADCAST_MODE, count, 60.0, lambda c: broadcast_step(ctx, c)) for count in args.broadcast),
        ]
        for mode, count, needs_s, step in steps:
            if ctx.remaining() < needs_s:
                rows.append(Row(mode, count, error="skipped: --max-seconds reached"))
                continue
            try:
                rows.append(await step(count))
            except (BenchFailure, OSError, TimeoutError, ConnectionError) as error:
                log(f"{mode} {count} failed: {error!r}")
                rows.append(Row(mode, count, error=f"{type(error).__name__}: {str(error)[:300]}"))
    finally:
        if emulator is not None:
            await emulator.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
    return pg_version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=parse_counts, default=parse_counts("10,1000,10000"),
                        help="primary: job-stream subscriber counts, comma-separated (default 10,1000,10000)")
    parser.add_argument("--broadcast", type=parse_counts, default=parse_counts("10,1000"),
                        help="secondary: user-stream broadcast subscriber counts (default 10,1000)")
    parser.add_argument("--subscribers-per-user", type=int, default=100,
                        help="job-stream subscribers per user in the primary steps (default 100)")
    parser.add_argument("--webhooks", type=int, default=200, help="webhooks (rounds) per SSE step (default 200)")
    parser.add_argument("--pollers", type=parse_counts, default=parse_counts("10,1000"),
                        help="polling client counts, comma-separated (default 10,1000)")
    parser.add_argument("--poll-window-s", type=float, default=20.0, help="poll measurement window (default 20)")
    parser.add_argument("--database-url", default=None, help="a Postgres server (default DATABASE_URL, else embedded)")
    parser.add_argument("--gap-ms", type=float, default=15.0,
                        help="pause after each round's last delivery (and re-subscribe) (default 15)")
    parser.add_argument("--batch", type=int, default=OPEN_BATCH, help="connections opened at a time (default 500)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to settle before reading RSS (default 1)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="idle window with every subscriber open, for db tx per waiting client (default 5)")
    parser.add_argument("--max-phase-s", type=float, default=40.0,
                        help="cap on one SSE latency phase; fewer webhooks are sent when reached (default 40)")
    parser.add_argument("--max-seconds", type=float, default=360.0,
                        help="overall budget; later steps are skipped past it (default 360)")
    parser.add_argument("--profile-service", metavar="FILE", default=None,
                        help="cProfile the service during the largest job-stream step's latency phase (slows it down)")
    add_processes_argument(parser)
    args = parser.parse_args()
    if args.webhooks <= 0 or args.batch <= 0 or args.subscribers_per_user <= 0:
        parser.error("--webhooks, --batch and --subscribers-per-user must be positive")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(args))
    except BenchFailure as failure:
        print(f"fanout: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fanout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
