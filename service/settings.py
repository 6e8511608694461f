"""The one settings object: typed, read from the environment and an optional `.env` file.

A bad value stops start-up with a message that names the variable; a secret's value never
appears in such a message.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

DEFAULT_ALLOWED_MODELS = (
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
    "fal-ai/kling-video/v2.1/master/text-to-video",
    "fal-ai/minimax/video-01",
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    """None means: start the embedded PostgreSQL whose data lives in `embedded_pgdata`."""
    listen_database_url: str | None = None
    """Where the LISTEN connection goes (past a transaction-mode pooler); defaults to database_url."""
    app_url: str | None = None
    """Public base URL that fal can reach; None means no webhooks: the service follows jobs itself."""
    fal_key: str | None = None
    """None means: use the local fal emulator mounted inside the service."""
    fal_queue_url: str = "https://queue.fal.run"
    fal_jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: LogLevel = "INFO"
    allowed_models: tuple[str, ...] = DEFAULT_ALLOWED_MODELS
    stream_token_secret: str = ""
    embedded_pgdata: str = str(PROJECT_ROOT / ".pgdata")
    reconcile_interval_s: float = 60.0
    reconcile_after_s: float = 300.0
    """A job open this long without news is asked about at fal by the sweep."""
    sse_heartbeat_s: float = 15.0
    stream_token_ttl_s: int = 900
    max_followers: int = 200
    """Status streams to fal held open at once by one process; more jobs wait their turn."""

    @property
    def uses_emulator(self) -> bool:
        return self.fal_key is None

    @property
    def local_url(self) -> str:
        """How this process reaches itself (the in-process emulator sends webhooks here)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: must be an http(s) URL such as https://example.com, got {value!r}")
    return value.rstrip("/")


def _database_url(name: str, value: str) -> str:
    if urlsplit(value).scheme not in ("postgres", "postgresql"):
        # The value may hold a password: name the variable, never echo it.
        raise SettingsError(f"{name}: must be a postgresql:// URL")
    return value


def _port(name: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise SettingsError(f"{name}: must be an integer between 1 and 65535, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"{name}: must be an integer between 1 and 65535, got {value!r}")
    return port


def _positive(name: str, value: str, kind: type[float] | type[int]) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise SettingsError(f"{name}: must be a positive {kind.__name__}, got {value!r}")
    return number


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, optional `export ` and quotes. The environment wins over it."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f".env line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    env: dict[str, str] = read_dotenv(dotenv if dotenv is not None else PROJECT_ROOT / ".env")
    env.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value not in (None, "") else None

    kwargs: dict[str, object] = {}
    if (value := get("DATABASE_URL")) is not None:
        kwargs["database_url"] = _database_url("DATABASE_URL", value)
    if (value := get("LISTEN_DATABASE_URL")) is not None:
        kwargs["listen_database_url"] = _database_url("LISTEN_DATABASE_URL", value)
    if (value := get("APP_URL")) is not None:
        kwargs["app_url"] = _url("APP_URL", value)
    elif (value := get("NEXT_PUBLIC_APP_URL")) is not None:
        kwargs["app_url"] = _url("NEXT_PUBLIC_APP_URL", value)
    if (value := get("FAL_KEY")) is not None:
        kwargs["fal_key"] = value
    if (value := get("FAL_QUEUE_URL")) is not None:
        kwargs["fal_queue_url"] = _url("FAL_QUEUE_URL", value)
    if (value := get("FAL_JWKS_URL")) is not None:
        kwargs["fal_jwks_url"] = _url("FAL_JWKS_URL", value)
    if (value := get("HOST")) is not None:
        kwargs["host"] = value
    if (value := get("PORT")) is not None:
        kwargs["port"] = _port("PORT", value)
    if (value := get("LOG_LEVEL")) is not None:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, got {value!r}")
        kwargs["log_level"] = level
    if (value := get("ALLOWED_MODELS")) is not None:
        models = tuple(m.strip() for m in value.split(",") if m.strip())
        if not models:
            raise SettingsError("ALLOWED_MODELS: must list at least one model id, comma-separated")
        kwargs["allowed_models"] = models
    if (value := get("STREAM_TOKEN_SECRET")) is not None:
        if len(value) < 32:
            raise SettingsError("STREAM_TOKEN_SECRET: must be at least 32 characters long")
        kwargs["stream_token_secret"] = value
    else:
        # A per-process secret: tokens then do not survive a restart or cross processes,
        # which is why a deployment with several processes must set it.
        kwargs["stream_token_secret"] = secrets.token_urlsafe(32)
    for name, field, kind in (
        ("RECONCILE_INTERVAL_S", "reconcile_interval_s", float),
        ("RECONCILE_AFTER_S", "reconcile_after_s", float),
        ("MAX_FOLLOWERS", "max_followers", int),
        ("SSE_HEARTBEAT_S", "sse_heartbeat_s", float),
        ("STREAM_TOKEN_TTL_S", "stream_token_ttl_s", int),
    ):
        if (value := get(name)) is not None:
            kwargs[field] = _positive(name, value, kind)
    if (value := get("EMBEDDED_PGDATA")) is not None:
        kwargs["embedded_pgdata"] = value
    return Settings(**kwargs)  # type: ignore[arg-type]
