"""The command line: run, migrate, test, users, keys, outputs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from service.serving import check_can_serve, pool_size_for, process_count, serve
from service.settings import PROJECT_ROOT, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import asyncpg


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from service.db.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.embedded_pgdata)


def _migrated_database_url(settings: Settings, *, wait_s: float | None = None) -> str:
    """The database's DSN once it answers (within MIGRATE_WAIT_S) and has every migration."""
    from service.db.migrations import apply_migrations, wait_for_database

    wait_s = settings.migrate_wait_s if wait_s is None else wait_s
    dsn = _database_url(settings)
    wait_for_database(dsn, wait_s=wait_s, on_wait=lambda: print(
        f"fal-jobs: waiting up to {wait_s:g} s for the database to answer", file=sys.stderr, flush=True))
    apply_migrations(dsn)
    return dsn


def _migrate_in_background(settings: Settings, dsn: str) -> None:
    """`run` with its database down: serve at once (not ready, /readyz names the database), and
    apply the migrations, then print the sign-in link, the moment the database answers."""
    import threading

    from service.db.migrations import MigrationError

    def work() -> None:
        while True:
            try:
                _migrated_database_url(settings, wait_s=365 * 24 * 3600)
                asyncio.run(_welcome(settings, dsn))
                return
            except MigrationError as error:
                print(f"fal-jobs: {error}; trying again", file=sys.stderr, flush=True)
                time.sleep(1)

    threading.Thread(target=work, name="migrate-when-reachable", daemon=True).start()


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The demo and the development server: the database (embedded when DATABASE_URL is unset),
    migrations, a sign-in link, the fal emulator when FAL_KEY is unset, then the service."""
    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from service.db.migrations import database_reachable

    dsn = _database_url(settings)
    if asyncio.run(database_reachable(dsn)):
        _migrated_database_url(settings)
        asyncio.run(_welcome(settings, dsn))
    else:
        print("fal-jobs: the database does not answer: serving anyway (not ready); migrations run once it does",
              file=sys.stderr, flush=True)
        _migrate_in_background(settings, dsn)
    # The app factory reads its settings from the environment; hand it the server we resolved.
    os.environ["DATABASE_URL"] = dsn
    where = "embedded PostgreSQL in " + settings.embedded_pgdata if not settings.database_url else "DATABASE_URL"
    with contextlib.ExitStack() as stack:
        if settings.uses_emulator:
            stack.enter_context(_standalone_emulator(settings))
            settings = load_settings()
        processes = _fit_processes(settings, dsn)
        print(f"fal-jobs: serving on http://{settings.host}:{settings.port} with {processes} process(es) "
              f"(database: {where})", file=sys.stderr, flush=True)
        serve(settings, processes=processes)
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """What the Procfile runs: the service alone, WEB_CONCURRENCY processes behind one port."""
    from service.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    check_can_serve(settings)  # before any worker starts: a refusal must end the command, not loop
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL: not set; 'serve' needs the database (use 'run' for the embedded one)")
    serve(settings, processes=_fit_processes(settings, settings.database_url))
    return 0


def _fit_processes(settings: Settings, dsn: str) -> int:
    """The process count, with each process's pool shrunk (DATABASE_POOL_MAX) so that all of them
    fit under Postgres's max_connections."""
    from service.db.pool import is_unavailable

    processes = process_count(settings)
    try:
        pool_max = asyncio.run(pool_size_for(dsn, processes, settings.database_pool_max))
    except Exception as error:
        if not is_unavailable(error):
            raise
        # Postgres is down: serve anyway (not ready until it answers) with the configured pools.
        print(f"fal-jobs: the database does not answer ({type(error).__name__}); each pool may hold "
              f"{settings.database_pool_max} connections", file=sys.stderr, flush=True)
        pool_max = settings.database_pool_max
    if pool_max < settings.database_pool_max:
        print(f"fal-jobs: {processes} processes: each pool holds at most {pool_max} connections "
              "to stay under Postgres's max_connections", file=sys.stderr)
    os.environ["DATABASE_POOL_MAX"] = str(pool_max)
    return processes


@contextlib.contextmanager
def _standalone_emulator(settings: Settings) -> Iterator[None]:
    """The local fal for the demo, in a process of its own: it keeps its requests in memory, so
    every service process must talk to the same one, as they would to fal. Paced like fal, pinned
    as our fal account, and stopped with us."""
    import secrets
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "emulator:" + secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "service.emulator", "--port", str(port), "--pace",
         os.environ.get("EMULATOR_PACE", "demo"), "--heartbeat-s", "15"],
        env={**os.environ, "FAL_KEY": key}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if emulator.poll() is not None:
                raise SystemExit(f"fal-jobs: the fal emulator exited at start (code {emulator.returncode})")
            try:
                if httpx.get(f"{base}/.well-known/jwks.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("fal-jobs: the fal emulator did not start within 30 s")
            time.sleep(0.1)
        os.environ.update({
            "FAL_KEY": key, "FAL_QUEUE_URL": base, "FAL_JWKS_URL": f"{base}/.well-known/jwks.json",
            "FAL_WEBHOOK_USER_ID": "fal-emulator-user",
            # Its media is copied into our store like fal's, though it is plain http on loopback.
            "EMULATOR_MEDIA_URL": f"{base}/media",
            # Webhooks come back to us, as fal's would to APP_URL.
            "APP_URL": settings.app_url or settings.local_url,
        })
        print("\n".join([
            "fal-jobs: ************************************************************************",
            "fal-jobs: FAL_KEY is not set: serving with the LOCAL fal EMULATOR. Jobs never reach",
            f"fal-jobs: fal.ai, cost nothing and make test images ({base}).",
            "fal-jobs: Set FAL_KEY to your fal.ai key for real jobs.",
            "fal-jobs: ************************************************************************",
        ]), file=sys.stderr, flush=True)
        yield
    finally:
        emulator.terminate()
        try:
            emulator.wait(10)
        except subprocess.TimeoutExpired:
            emulator.kill()


DEMO_USER = "demo"


async def _welcome(settings: Settings, dsn: str) -> None:
    """With no user yet, create a local demo user; print a one-time sign-in link for it (on the
    terminal, like Jupyter's ?token= link; never through the logger)."""
    from service.auth.api_keys import create_user
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        demo_id = await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", DEMO_USER)
        if demo_id is None:
            if await pool.fetchval("SELECT count(*) FROM fal_users"):
                return
            demo = await create_user(pool, DEMO_USER)
            demo_id = demo.user_id
            # Its API key is not printed: the browser never needs one ('users create' makes keys).
            print(f"fal-jobs: created the local user '{DEMO_USER}'", file=sys.stderr)
        token = await issue_sign_in_token(pool, demo_id)
    finally:
        await pool.close()
    base = settings.app_url or settings.local_url
    print(f"fal-jobs: open this one-time link to sign in: {base}/?token={token}", file=sys.stderr, flush=True)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrated_database_url(settings)
    print("fal-jobs: migrations applied", file=sys.stderr)
    return 0


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


def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    import pytest

    os.chdir(PROJECT_ROOT)
    _ensure_chromium()
    return int(pytest.main(["-q", *args.pytest_args]))


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.api_keys import create_user
    from service.db.pool import create_pool
    from service.errors import DomainError

    dsn = _migrated_database_url(settings)

    async def create() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user = await create_user(pool, args.name)
        except DomainError as exc:
            print(f"fal-jobs: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
        print(f"user {user.name} ({user.user_id}) created. Its API key, shown only this once:", file=sys.stderr)
        print(user.api_key)
        return 0

    return asyncio.run(create())


def cmd_users_sign_in(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.browser_sessions import issue_sign_in_token
    from service.db.pool import create_pool

    dsn = _migrated_database_url(settings)

    async def issue() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            user_id = await pool.fetchval("SELECT id FROM fal_users WHERE name = $1", args.name)
            if user_id is None:
                print(f"fal-jobs: no user named {args.name!r}", file=sys.stderr)
                return 1
            token = await issue_sign_in_token(pool, user_id)
        finally:
            await pool.close()
        print(f"{settings.app_url or settings.local_url}/?token={token}")
        return 0

    return asyncio.run(issue())


def _with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[int]]) -> int:
    """Run `work` on a one-connection pool of the (migrated) database; a domain error is a message
    and exit code 1, never a traceback."""
    from service.db.pool import create_pool
    from service.errors import DomainError

    dsn = _migrated_database_url(settings)

    async def run() -> int:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            return await work(pool)
        except DomainError as exc:
            print(f"fal-jobs: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()

    return asyncio.run(run())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import list_users

    async def work(pool: asyncpg.Pool) -> int:
        print(f"{'name':20} {'created':16} {'disabled':16} {'keys':>4} {'open':>4}  limits (open/min/streams)")
        for user in await list_users(pool):
            limits = "/".join(str(v) if v else "-" for v in (user.max_open_jobs, user.max_jobs_per_minute, user.max_streams))
            print(f"{user.name:20} {_when(user.created_at):16} {_when(user.disabled_at):16} "
                  f"{user.active_keys:>4} {user.open_jobs:>4}  {limits}")
        return 0

    return _with_pool(settings, work)


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import set_disabled

    disable = args.users_command == "disable"

    async def work(pool: asyncpg.Pool) -> int:
        await set_disabled(pool, args.name, disable)
        print(f"fal-jobs: user {args.name} {'disabled: its keys, sessions and streams stop working' if disable else 'enabled'}",
              file=sys.stderr)
        return 0

    return _with_pool(settings, work)


def cmd_users_limits(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.users import UserLimits, set_limits

    async def work(pool: asyncpg.Pool) -> int:
        await set_limits(pool, args.name, UserLimits(max_open_jobs=args.max_open_jobs,
                                                     max_jobs_per_minute=args.jobs_per_minute,
                                                     max_streams=args.max_streams))
        print(f"fal-jobs: limits of {args.name} set (unset ones follow the settings)", file=sys.stderr)
        return 0

    return _with_pool(settings, work)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.api_keys import create_key, list_keys, revoke_key

    async def work(pool: asyncpg.Pool) -> int:
        if args.keys_command == "create":
            key = await create_key(pool, args.name)
            print(f"a new API key for {args.name}, shown only this once:", file=sys.stderr)
            print(key)
        elif args.keys_command == "list":
            for info in await list_keys(pool, args.name):
                state = f"revoked {_when(info.revoked_at)}" if info.revoked_at else "active"
                print(f"{info.prefix:16} created {_when(info.created_at)}  {state}")
        else:
            info = await revoke_key(pool, args.prefix)
            print(f"fal-jobs: key {info.prefix} revoked; its requests get 401 and its streams close within seconds",
                  file=sys.stderr)
        return 0

    return _with_pool(settings, work)


def cmd_outputs_retry(settings: Settings, args: argparse.Namespace) -> int:
    from service.outputs.upkeep import redrive_failed

    async def work(pool: asyncpg.Pool) -> int:
        total = 0
        while batch := await redrive_failed(pool, fal_copy_lifetime_s=settings.fal_copy_lifetime_s,
                                            retryable_after_s=None, request_id=args.job, by="command"):
            for output in batch:
                print(f"{output.request_id} {output.index} was: {output.error or '-'}")
            total += len(batch)
        print(f"fal-jobs: {total} failed output(s) set pending again; the service's copy workers take them "
              "(only outputs whose fal copy lives, by FAL_MEDIA_EXPIRY_S or fal's 7 days)", file=sys.stderr)
        return 0

    return _with_pool(settings, work)


def cmd_outputs_gc(settings: Settings, args: argparse.Namespace) -> int:
    from service.outputs.store import MediaStore
    from service.outputs.upkeep import orphans

    store = MediaStore.open(settings.media_store_url, settings.media_dir)

    async def work(pool: asyncpg.Pool) -> int:
        found = removed = size = 0
        async for obj in orphans(pool, store, older_than_s=args.older_than_h * 3600):
            found += 1
            size += obj.size
            if args.delete:
                await store.delete(obj.key)
                removed += 1
            print(f"{obj.key} {obj.size} {obj.last_modified.isoformat(timespec='seconds')}"
                  f"{' deleted' if args.delete else ''}")
        what = "deleted" if args.delete else "found (run again with --delete to remove them)"
        print(f"fal-jobs: {found} object(s) under outputs/ that no output names, {size} bytes, older than "
              f"{args.older_than_h:g} h in {store.description}: {what}", file=sys.stderr)
        if removed:
            from service import metrics

            metrics.output_orphan_removed("gc", removed)
        return 0

    try:
        return _with_pool(settings, work)
    finally:
        store.close()


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _hours(text: str) -> float:
    value = float(text)
    if not value >= 1:  # nan too: a younger object may be a copy whose outcome is being written
        raise argparse.ArgumentTypeError("must be at least 1 (hours)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="fal-jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="apply migrations and serve (embedded Postgres when DATABASE_URL is unset)")
    commands.add_parser("serve", help="serve only (the Procfile's web process): WEB_CONCURRENCY processes")
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("test", help="run the test suite; every argument after it goes to pytest")
    users = commands.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user and print its API key once")
    create.add_argument("name")
    sign_in = users.add_parser("sign-in", help="print a one-time browser sign-in link for a user")
    sign_in.add_argument("name")
    users.add_parser("list", help="list users with their keys, open jobs and own limits")
    users.add_parser("disable", help="disable a user: keys, sessions and streams stop working").add_argument("name")
    users.add_parser("enable", help="enable a disabled user again").add_argument("name")
    limits = users.add_parser("limits", help="set a user's own limits (unset ones follow the settings)")
    limits.add_argument("name")
    limits.add_argument("--max-open-jobs", type=_positive, help="instead of MAX_OPEN_JOBS_PER_USER")
    limits.add_argument("--jobs-per-minute", type=_positive, help="instead of MAX_JOBS_PER_MINUTE")
    limits.add_argument("--max-streams", type=_positive, help="instead of MAX_STREAMS_PER_USER")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys.add_parser("create", help="make another API key for a user and print it once").add_argument("name")
    keys.add_parser("list", help="list a user's keys by prefix").add_argument("name")
    keys.add_parser("revoke", help="revoke the key with this prefix (as 'keys list' shows it)").add_argument("prefix")
    outputs = commands.add_parser("outputs", help="the durable copies of outputs").add_subparsers(
        dest="outputs_command", required=True)
    retry = outputs.add_parser("retry", help="set failed outputs pending again (those whose fal copy lives) and "
                                             "print them; the service's copy workers take them")
    retry.add_argument("--job", metavar="REQUEST_ID", help="only this job's outputs")
    gc = outputs.add_parser("gc", help="list store objects under outputs/ that no output names (dry run)")
    gc.add_argument("--delete", action="store_true", help="remove them")
    gc.add_argument("--older-than-h", type=_hours, default=24.0,
                    help="only objects last written this many hours ago or more (default 24, at least 1)")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        # Everything after `test` is pytest's (`test -k x`, `test tests/a.py -x`); a leading `--` is accepted too.
        rest = argv[1:]
        args = argparse.Namespace(command="test", pytest_args=rest[1:] if rest[:1] == ["--"] else rest)
    else:
        args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return _dispatch(settings, args)
    except SettingsError as exc:
        print(f"fal-jobs: configuration error: {exc}", file=sys.stderr)
        return 2


def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    handlers = {"run": cmd_run, "serve": cmd_serve, "migrate": cmd_migrate, "test": cmd_test, "keys": cmd_keys}
    if args.command == "users":
        user_handlers = {"create": cmd_users_create, "sign-in": cmd_users_sign_in, "list": cmd_users_list,
                         "disable": cmd_users_disable, "enable": cmd_users_disable, "limits": cmd_users_limits}
        return user_handlers[args.users_command](settings, args)
    if args.command == "outputs":
        return {"retry": cmd_outputs_retry, "gc": cmd_outputs_gc}[args.outputs_command](settings, args)
    return handlers[args.command](settings, args)
