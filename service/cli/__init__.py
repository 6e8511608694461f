"""The command line: run, serve, migrate, test, check, users, keys, jobs, usage, outputs. Parsing and dispatch live
here; each family of commands in a module of its own."""

from __future__ import annotations

import argparse
import sys

from service.cli.check import cmd_check
from service.cli.database import cmd_migrate
from service.cli.jobs_usage import cmd_jobs_list, cmd_usage
from service.cli.outputs import cmd_outputs_gc, cmd_outputs_retry
from service.cli.run import cmd_run, cmd_serve
from service.cli.testsuite import cmd_test
from service.cli.users_keys import (
    cmd_keys,
    cmd_users_create,
    cmd_users_disable,
    cmd_users_grant_admin,
    cmd_users_limits,
    cmd_users_list,
    cmd_users_sign_in,
)
from service.settings import Settings, SettingsError, load_settings

_SETTINGS_HEAD = """settings, from the environment or a .env file at the top of the checkout (the environment wins);
every one is in docs/operating.md:
  HOST, PORT            where it listens (127.0.0.1, 8000)
"""
RUN_SETTINGS = _SETTINGS_HEAD + """\
  DATABASE_URL          postgresql://... (unset: an embedded PostgreSQL in EMBEDDED_PGDATA, .pgdata/)
  FAL_KEY               your fal.ai key (unset: the local fal emulator, which makes test images/videos)
  APP_URL               the public base URL fal's webhooks reach (unset: the HOST:PORT address)
  WEB_CONCURRENCY       service processes behind the port (unset: usable cores, half with a local
                        Postgres, at most 8)
  LOG_LEVEL, LOG_FORMAT INFO; text on a terminal, else json
"""
SERVE_SETTINGS = _SETTINGS_HEAD + """\
  DATABASE_URL          postgresql://... (required)
  FAL_KEY               your fal.ai key (required; FAL_EMULATOR=1 serves the local emulator instead)
  APP_URL               the public base URL fal's webhooks reach; https needs METRICS_TOKEN
  FAL_WEBHOOK_USER_ID   your fal account: webhooks signed for another are refused
  STREAM_TOKEN_SECRET   the same on every machine behind one address
  FORWARDED_ALLOW_IPS   proxies whose X-Forwarded-* headers are trusted (127.0.0.1)
  WEB_CONCURRENCY       service processes behind the port (unset: usable cores, at most 8)
  LOG_LEVEL, LOG_FORMAT INFO; text on a terminal, else json
"""


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _amount(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):  # nan too
        raise argparse.ArgumentTypeError("must be an amount above 0")
    return value


def _hours(text: str) -> float:
    value = float(text)
    if not value >= 1:  # nan too: a younger object may be a copy whose outcome is being written
        raise argparse.ArgumentTypeError("must be at least 1 (hours)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="fal-jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="apply migrations and serve (embedded Postgres when DATABASE_URL is unset)",
                        description="The demo and development server: the database (embedded when DATABASE_URL\n"
                                    "is unset), migrations, a local 'demo' user and its sign-in link, the local fal\n"
                                    "emulator when FAL_KEY is unset, then the service.",
                        epilog=RUN_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands.add_parser("serve", help="serve only (the Procfile's web process): WEB_CONCURRENCY processes",
                        description="The service alone, as the Procfile's web process runs it (the migrations\n"
                                    "are the release step's: 'migrate').",
                        epilog=SERVE_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("test", help="run the test suite; every argument after it goes to pytest")
    commands.add_parser("check", help="run the static checks: ruff on the project, mypy on service/")
    users = commands.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user and print its API key once")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="an admin: may read every job under /api/admin")
    sign_in = users.add_parser("sign-in", help="print a one-time browser sign-in link for a user")
    sign_in.add_argument("name")
    users.add_parser("list", help="list users with their keys, open jobs and own limits")
    users.add_parser("disable", help="disable a user: keys, sessions and streams stop working").add_argument("name")
    users.add_parser("enable", help="enable a disabled user again").add_argument("name")
    users.add_parser("grant-admin", help="make a user an admin (every job under /api/admin)").add_argument("name")
    users.add_parser("revoke-admin", help="make an admin an ordinary user again").add_argument("name")
    limits = users.add_parser("limits", help="set a user's own limits (unset ones follow the settings)")
    limits.add_argument("name")
    limits.add_argument("--max-open-jobs", type=_positive, help="instead of MAX_OPEN_JOBS_PER_USER")
    limits.add_argument("--jobs-per-minute", type=_positive, help="instead of MAX_JOBS_PER_MINUTE")
    limits.add_argument("--max-streams", type=_positive, help="instead of MAX_STREAMS_PER_USER")
    limits.add_argument("--spend-per-day", type=_amount, help="instead of MAX_SPEND_PER_DAY (in the price's currency)")
    jobs = commands.add_parser("jobs", help="every user's jobs").add_subparsers(dest="jobs_command", required=True)
    listing = jobs.add_parser("list", help="jobs across users, newest first")
    listing.add_argument("--status", help="pending, in_progress, completed, failed, cancelled or deleted")
    listing.add_argument("--model", help="a model id, exactly")
    listing.add_argument("--user", help="a user's name")
    listing.add_argument("--since", help="ISO 8601 time, or back from now: 90m, 24h, 7d")
    listing.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    usage = commands.add_parser("usage", help="jobs and spend per user or per model over a window")
    usage.add_argument("--since", default="7d", help="ISO 8601 time, or back from now: 24h, 7d (default 7d)")
    usage.add_argument("--by", choices=("user", "model"), default="user")
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
    handlers = {"run": cmd_run, "serve": cmd_serve, "migrate": cmd_migrate, "test": cmd_test, "check": cmd_check,
                "keys": cmd_keys, "jobs": cmd_jobs_list, "usage": cmd_usage}
    if args.command == "users":
        user_handlers = {"create": cmd_users_create, "sign-in": cmd_users_sign_in, "list": cmd_users_list,
                         "disable": cmd_users_disable, "enable": cmd_users_disable, "limits": cmd_users_limits,
                         "grant-admin": cmd_users_grant_admin, "revoke-admin": cmd_users_grant_admin}
        return user_handlers[args.users_command](settings, args)
    if args.command == "outputs":
        return {"retry": cmd_outputs_retry, "gc": cmd_outputs_gc}[args.outputs_command](settings, args)
    return handlers[args.command](settings, args)
