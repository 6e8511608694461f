"""Webhook intake benchmark: fal's signed "OK" webhooks against the service, next to the raw
database floor for the same work, with and without the NOTIFY trigger.

    python bench/webhooks.py [--n 3000] [--concurrency 16] [--database-url URL]
                             [--warmup 200] [--client httpx|raw] [--profile-service FILE]

Postgres is --database-url, else DATABASE_URL, else an embedded pgserver in a temporary folder.
The bench creates a database `fal_jobs_bench_<random>` there, applies the migrations, and drops
it at the end (also on errors). Everything talks to 127.0.0.1 (or a local socket) only.

Phases, all on the same database:
  1. the service (`python -m service run`, a separate process) receives N signed webhooks, one per
     pending job, `--concurrency` in flight over keep-alive connections; ACK latency is send ->
     response. Afterwards every job must be `completed`, version 2, with exactly 2 events.
  2. the raw floor: per job one UPDATE fal_jobs (its trigger writes the event) with plain
     asyncpg and C connections (C = 4, 8, 16).
  3. the service's own intake code (WebhookIntake.receive, the same SQL and Python as the route)
     without HTTP or signature checking, on a pool of 10 like the service's: it splits the gap
     between (1) and (2) into "database path" and "HTTP + verification".
  4. (1) and (2) again with the `fal_job_events_notify` trigger disabled (re-enabled afterwards).

The service logs at WARNING, so the per-request log line is not in its CPU; the environment
variable BENCH_SERVICE_LOG_LEVEL=INFO runs it at the production level (one JSON line per request).

--profile-service FILE runs the service under cProfile, switched on only for phase 1 (SIGUSR1 /
SIGUSR2), writes the stats to FILE and prints the top entries. Profiling slows the service down:
its numbers are then not the benchmark's.

Where each part lives: this file holds the flags and the order of the phases; bench/webhooks_jobs.py
the pending jobs and their checks; webhooks_load.py the signed webhooks and the two clients;
webhooks_phases.py the measured phases; webhooks_measures.py the results and CPU readings;
webhooks_report.py the table; harness.py what every bench shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    BenchFailure,
    Emulator,
    Service,
    add_processes_argument,
    open_server,
    scratch_database,
    start_emulator,
    start_service,
)
from bench.webhooks_jobs import Database, check_completed, create_jobs, set_trigger  # noqa: E402
from bench.webhooks_load import WEBHOOK_PATH, Post, RawHttpClient, fire_webhooks, httpx_post, sign_webhooks  # noqa: E402
from bench.webhooks_measures import Result  # noqa: E402
from bench.webhooks_phases import RAW_CONCURRENCIES, intake_phase, raw_phase, service_phase  # noqa: E402
from bench.webhooks_report import cpu_line, print_profile, print_report, row  # noqa: E402
from service.db.pool import create_pool  # noqa: E402


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _block_sizes(args: argparse.Namespace) -> dict[str, int]:
    """How many pending jobs each phase's block holds, by block name."""
    n, raw_warmup = args.n, max(args.concurrency, 64)
    sizes = {"warmup": args.warmup, "service_on": n}
    if not args.service_only:
        sizes |= {"service_off": n, "intake_on": n, "intake_warmup": raw_warmup}
    for trigger in ("on", "off") if not args.service_only else ():
        for c in RAW_CONCURRENCIES:
            sizes[f"raw_{trigger}_{c}"] = n
            sizes[f"raw_{trigger}_{c}_warmup"] = max(raw_warmup, 4 * c)
    return sizes


def _print_service_only(args: argparse.Namespace, result: Result, checks: list[str], ncpu: int) -> None:
    print(row(result))
    print(cpu_line(result, ncpu))
    print("\n".join(checks))
    if args.profile_service:
        print_profile(args.profile_service)


async def bench(args: argparse.Namespace, database: Database, log_dir: Path) -> None:
    concurrency, ncpu = args.concurrency, os.cpu_count() or 1
    fal_key = f"bench-fal-key:{uuid.uuid4().hex}"
    sizes = _block_sizes(args)
    pool = await create_pool(database.dsn, min_size=1, max_size=2, statement_timeout_s=120)
    emulator: Emulator | None = None
    service: Service | None = None
    trigger_disabled = False
    checks: list[str] = []
    try:
        version = await pool.fetchval("SHOW server_version")
        pg_settings = {name: await pool.fetchval(f"SHOW {name}") for name in ("synchronous_commit", "fsync")}
        started = time.perf_counter()
        blocks = await create_jobs(pool, sizes)
        log(f"{sum(sizes.values())} pending jobs created in {time.perf_counter() - started:.1f} s")

        emulator = await start_emulator(fal_key)
        service = await start_service(database.dsn, emulator.emulator, fal_key, log_dir / "service.log",
                                      processes=args.processes, profile_path=args.profile_service)
        log(f"service pid {service.pid} ({args.processes} process(es)) ready at {service.url}")

        results: dict[str, Result] = {}
        async with contextlib.AsyncExitStack() as stack:
            raw_client: RawHttpClient | None = None
            if args.client == "raw":
                raw_client = await stack.enter_async_context(RawHttpClient(service.url, WEBHOOK_PATH, concurrency))
                post: Post = raw_client.post
            else:
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                client = await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=30))
                post = httpx_post(client, f"{service.url}{WEBHOOK_PATH}")
            await fire_webhooks(post, sign_webhooks(emulator.emulator, blocks["warmup"].request_ids), concurrency)
            checks.append(await check_completed(pool, blocks["warmup"], "warm-up webhooks"))

            if args.profile_service:
                service.process.send_signal(signal.SIGUSR1)
                await asyncio.sleep(0.2)
            results["service_on"] = await service_phase(post, service, emulator.emulator, blocks["service_on"],
                                                        concurrency, "on", pool, ncpu)
            if args.profile_service:
                service.process.send_signal(signal.SIGUSR2)
            checks.append(await check_completed(pool, blocks["service_on"], "service webhooks, trigger on"))
            log(row(results["service_on"]))

            for c in RAW_CONCURRENCIES if not args.service_only else ():
                results[f"raw_on_{c}"] = await raw_phase(database.dsn, blocks[f"raw_on_{c}"],
                                                         blocks[f"raw_on_{c}_warmup"], c, "on", pool, ncpu)
                checks.append(await check_completed(pool, blocks[f"raw_on_{c}"], f"raw C={c}, trigger on"))
                log(row(results[f'raw_on_{c}']))

            if args.service_only:
                await stack.aclose()
                await service.stop()
                service = None
                _print_service_only(args, results["service_on"], checks, ncpu)
                return
            results["intake_on"] = await intake_phase(database.dsn, blocks["intake_on"], blocks["intake_warmup"],
                                                      concurrency, "on", pool, ncpu)
            checks.append(await check_completed(pool, blocks["intake_on"], "intake without HTTP, trigger on"))
            log(row(results["intake_on"]))

            await set_trigger(pool, enabled=False)
            trigger_disabled = True
            if raw_client is not None:
                await raw_client.reconnect()
            results["service_off"] = await service_phase(post, service, emulator.emulator, blocks["service_off"],
                                                         concurrency, "off", pool, ncpu)
            checks.append(await check_completed(pool, blocks["service_off"], "service webhooks, trigger off"))
            log(row(results["service_off"]))
            for c in RAW_CONCURRENCIES:
                results[f"raw_off_{c}"] = await raw_phase(database.dsn, blocks[f"raw_off_{c}"],
                                                          blocks[f"raw_off_{c}_warmup"], c, "off", pool, ncpu)
                checks.append(await check_completed(pool, blocks[f"raw_off_{c}"], f"raw C={c}, trigger off"))
                log(row(results[f'raw_off_{c}']))
            await set_trigger(pool, enabled=True)
            trigger_disabled = False

        await service.stop()
        if service.process.returncode not in (0, -signal.SIGINT):
            log(f"warning: the service exited with {service.process.returncode}")
        service = None
    finally:
        if trigger_disabled:
            with contextlib.suppress(Exception):
                await set_trigger(pool, enabled=True)
        if service is not None:
            await service.stop()
        if emulator is not None:
            await emulator.stop()
        await pool.close()

    print_report(args, results, checks, version, pg_settings, database.embedded is not None, ncpu)


async def main_async(args: argparse.Namespace) -> int:
    server_dsn, embedded = await asyncio.to_thread(open_server, args.database_url or os.environ.get("DATABASE_URL"))
    try:
        async with scratch_database(server_dsn, "fal_jobs_bench", log) as (name, dsn):
            with tempfile.TemporaryDirectory(prefix="fal-jobs-bench-") as log_dir:
                await bench(args, Database(server_dsn, dsn, name, embedded), Path(log_dir))
        return 0
    except BenchFailure as failure:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.cleanup)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="webhooks (and raw transactions) per measured phase")
    parser.add_argument("--concurrency", type=int, default=16, help="webhooks in flight at once")
    parser.add_argument("--database-url", default=None,
                        help="a Postgres server to create the bench database on (default: DATABASE_URL, "
                             "else an embedded pgserver)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up webhooks before measuring")
    parser.add_argument("--client", choices=("httpx", "raw"), default="raw",
                        help="load generator: a minimal raw HTTP/1.1 keep-alive client (default; it costs the 2 cores "
                             "far less than the service), or one httpx.AsyncClient")
    parser.add_argument("--profile-service", metavar="FILE", default=None,
                        help="run the service under cProfile during the trigger-on webhook phase; stats to FILE")
    parser.add_argument("--service-only", action="store_true",
                        help="only the service's trigger-on phase (its rate, latency and CPU per webhook): a quick "
                             "before/after of a change to the webhook path")
    add_processes_argument(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 100_000 or not 1 <= args.concurrency <= 256 or not 1 <= args.warmup <= 10_000:
        parser.error("--n must be 1..100000, --concurrency 1..256, --warmup 1..10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
