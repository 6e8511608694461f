"""The one settings object: typed, read from the environment and an optional `.env` file.

Every field is read from the variable named as the field in upper case (`max_followers` from
`MAX_FOLLOWERS`), converted and checked by msgspec against the field's type and constraints. A bad
value stops start-up with a message that names the variable and never echoes the value, so a
password in a URL cannot leak into a log.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_type_hints

import msgspec
from dotenv.parser import parse_stream

if TYPE_CHECKING:
    from collections.abc import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FAL_QUEUE_URL_DEFAULT = "https://queue.fal.run"
FAL_JWKS_URL_DEFAULT = "https://rest.fal.ai/.well-known/jwks.json"
FAL_API_URL_DEFAULT = "https://api.fal.ai"
"""fal's Platform API (prices: `GET /v1/models/pricing`)."""
FAL_REST_URL_DEFAULT = "https://rest.fal.ai"
FAL_CDN_URL_DEFAULT = "https://v3.fal.media"
FAL_SCHEMA_URL_DEFAULT = "https://fal.ai/api/openapi/queue/openapi.json"
"""fal's public OpenAPI of one endpoint, asked for with `?endpoint_id=<model id>`."""
FAL_MEDIA_LIFETIME_S = 7 * 24 * 3600
"""fal keeps generated media at least this long unless asked otherwise (its FAQ)."""

DEFAULT_ALLOWED_MODELS = (
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
    "fal-ai/kling-video/v2.1/master/text-to-video",
    "fal-ai/kling-video/v2.1/master/image-to-video",
    "fal-ai/minimax/video-01",
    "fal-ai/flux/dev/image-to-image",
)


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _meta(hint: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(**constraints, extra={"hint": hint})


HttpUrl = Annotated[str, _meta("must be an http(s) URL such as https://example.com", pattern=r"^https?://[^/\s]+")]
PostgresUrl = Annotated[str, _meta("must be a postgresql:// URL", pattern=r"^postgres(ql)?://")]
Port = Annotated[int, _meta("must be an integer between 1 and 65535", ge=1, le=65535)]
# Upper bounds keep `inf` (and absurd values) out; `nan` fails every comparison.
Seconds = Annotated[float, _meta("must be a number of seconds above 0 (at most a year)", gt=0, le=31_536_000)]
Count = Annotated[int, _meta("must be a whole number above 0", gt=0, le=1_000_000_000)]
Secret = Annotated[str, _meta("must be at least 32 characters long", min_length=32)]
Flag = Annotated[bool, _meta("must be 1 or 0 (true or false)")]
Pace = Annotated[Literal["fast", "demo"], _meta("must be fast or demo")]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"], _meta("must be one of DEBUG, INFO, WARNING, ERROR")
]
StoreUrl = Annotated[
    str, _meta("must be an object store URL: s3://bucket/prefix, gs://…, az://…, file:///path or memory:///",
               pattern=r"^(s3|s3a|gs|az|abfs|abfss|azure|file|memory)://")
]
Money = Annotated[float, _meta("must be an amount above 0 (in the price's currency, e.g. 25 or 2.50)",
                                gt=0, le=1_000_000_000)]
Bytes = Annotated[int, _meta("must be a number of bytes above 0", gt=0, le=2**50)]
Hosts = Annotated[tuple[str, ...], _meta("must list host names, comma-separated")]
LogFormat = Annotated[Literal["json", "text"], _meta("must be json or text")]
InputDelivery = Annotated[Literal["signed_url", "fal_cdn"], _meta("must be signed_url or fal_cdn")]
ModelIds = Annotated[
    tuple[str, ...], _meta("must list at least one model id, comma-separated", min_length=1)
]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: PostgresUrl | None = None
    """None means: start the embedded PostgreSQL whose data lives in `embedded_pgdata`."""
    listen_database_url: PostgresUrl | None = None
    """Where the LISTEN connection goes (past a transaction-mode pooler); defaults to database_url."""
    app_url: HttpUrl | None = None
    """Public base URL that fal can reach; None means no webhooks: the service follows jobs itself."""
    fal_key: str | None = None
    """None means: the local fal emulator, which only `run` or an explicit FAL_EMULATOR=1 allows."""
    fal_emulator: Flag = False
    """Serve the local fal emulator although this is not `run` (development only: nothing reaches fal)."""
    emulator_pace: Pace = "fast"
    """How long the emulator's jobs take: `demo` (what `run` uses) shows seconds in queue and running."""
    fal_queue_url: HttpUrl | None = None
    """Unset: fal's own (FAL_QUEUE_URL_DEFAULT), or the mounted emulator's."""
    fal_jwks_url: HttpUrl | None = None
    """Unset: fal's own (FAL_JWKS_URL_DEFAULT), or the mounted emulator's."""
    fal_api_url: HttpUrl | None = None
    """Unset: fal's own (FAL_API_URL_DEFAULT), or the mounted emulator's. Prices are read there."""
    pricing_ttl_s: Seconds = 3600.0
    """How long prices read from fal stand before they are read again."""
    fal_rest_url: HttpUrl | None = None
    """fal's REST API (storage tokens). Unset: fal's own (FAL_REST_URL_DEFAULT), or the mounted emulator's."""
    fal_cdn_url: HttpUrl | None = None
    """fal's CDN (input uploads). Unset: fal's own (FAL_CDN_URL_DEFAULT), or the mounted emulator's."""
    fal_schema_url: HttpUrl | None = None
    """fal's per-endpoint OpenAPI (model input schemas). Unset: fal's own (FAL_SCHEMA_URL_DEFAULT), or the mounted emulator's."""
    fal_schema_ttl_s: Seconds = 3600.0
    """A model's input schema is read from fal again after this long (kept in memory meanwhile)."""
    fal_webhook_user_id: str | None = None
    """Our fal account's user id: webhooks signed for any other account are refused (401)."""
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies whose X-Forwarded-For/-Proto uvicorn trusts (comma-separated IPs or CIDRs, or *)."""
    max_open_jobs_per_user: Count = 10
    max_jobs_per_minute: Count = 60
    max_spend_per_day: Money | None = None
    """Per user, in the price's currency, over a rolling 24 h of estimates and final costs; None: no budget."""
    cancel_hold_max_s: Seconds = 1800.0
    """A job cancelled while fal ran it counts against max_open_jobs_per_user until fal reports its
    end, and at most this long: longer than the longest run of an allowed model (fal may let a
    cancelled request run to its end), while a slot whose end is never seen comes back."""
    max_streams_per_user: Count = 50
    """Open SSE streams per API key or browser session in one process; as many concurrent ?wait=."""
    max_downloads_per_user: Count = 20
    """Output downloads in progress per API key or browser session in one process (a signed link's:
    per output it opens). Above a browser's 6 connections per host, with room for HTTP/2."""
    max_connections: Count = 20_000
    """Connections (and requests in flight) one process takes; past it uvicorn answers 503. Room for
    many thousands of idle streams, and a ceiling on what clients that read nothing can pin."""
    host: str = "127.0.0.1"
    port: Port = 8000
    log_level: LogLevel = "INFO"
    log_format: LogFormat | None = None
    """None: text on a terminal, else JSON (one object per line)."""
    metrics_token: str | None = None
    """When set, /metrics asks for `Authorization: Bearer <metrics_token>`."""
    event_retention_days: Count = 30
    """Events older than this are deleted by the sweep, except each job's latest."""
    delivery_log_retention_days: Count = 14
    """Delivery-log rows (webhooks received, sweep decisions) older than this are deleted by the sweep."""
    allowed_models: ModelIds = DEFAULT_ALLOWED_MODELS
    stream_token_secret: Secret = msgspec.field(default_factory=lambda: secrets.token_urlsafe(32))
    """Unset: a per-process secret, so tokens do not survive a restart or cross processes."""
    embedded_pgdata: str = str(PROJECT_ROOT / ".pgdata")
    reconcile_interval_s: Seconds = 60.0
    reconcile_after_s: Seconds = 300.0
    """A job open this long without news is asked about at fal by the sweep."""
    sse_heartbeat_s: Seconds = 15.0
    stream_token_ttl_s: Count = 900
    web_concurrency: Count | None = None
    """Service processes behind the one port; unset: the usable cores, at most 8."""
    database_pool_max: Count = 10
    """Connections each process's pool may open (lowered to fit max_connections with many processes)."""
    max_followers: Count = 200
    """Status streams to fal held open at once by one process; more jobs wait their turn."""
    media_store_url: StoreUrl | None = None
    """Where durable copies of outputs live; None means the local folder `media_dir`."""
    media_dir: str = str(PROJECT_ROOT / ".media")
    media_hosts: Hosts = ("fal.media",)
    """Hosts (with their subdomains) whose media is copied; nothing else is fetched."""
    max_output_bytes: Bytes = 2 * 1024**3
    output_workers: Count = 4
    """Copies one process makes at once."""
    fal_media_expiry_s: Count | None = None
    """Asks fal to delete its copy of a request's media this long after it is made."""
    output_store_retry_max_s: Seconds = 300.0
    """The longest wait between two tries of a copy that failed at our store (2 s, doubling up
    to this); such tries go on for as long as fal keeps its copy."""
    output_redrive_after_s: Seconds = 3600.0
    """A copy that spent its budget of transient failures is set pending again by the sweep this
    long after it failed, while fal keeps its copy."""
    max_upload_bytes: Bytes = 50 * 1024**2
    """The largest upload (413 past it, the rest unread)."""
    max_upload_pixels: Count = 40_000_000
    """The most pixels an uploaded image's header may claim (422 past it; nothing is decoded)."""
    max_upload_bytes_per_day: Bytes = 2 * 1024**3
    """Bytes one user may upload per UTC day, counted in the database across processes (429 past it)."""
    upload_retention_days: Count = 30
    """Uploads are removed by the sweep this long after their last upload, unless an open job uses them."""
    input_delivery: InputDelivery = "fal_cdn"
    """How a job's `upload:<id>` inputs reach fal: `fal_cdn`, uploaded to fal's CDN as fal-client does;
    `signed_url`, a signed link to our copy under APP_URL (fal fetches it from us)."""
    input_url_ttl_s: Count = 6 * 3600
    """How long a signed input link opens the upload: room for a job to wait in fal's queue."""
    emulator_media_url: HttpUrl | None = None
    """The local emulator's media base (`run` sets it): copied although it is http on loopback."""
    fal_call_timeout_s: Seconds = 30.0
    """A status or cancel call to fal ends within this, fal-client's own retries included."""
    db_connect_timeout_s: Seconds = 1.5
    """Opening a connection to Postgres ends within this (the pool's, the LISTEN one, the sweep's)."""
    db_acquire_timeout_s: Seconds = 1.5
    """A request waits this long for a pooled connection, then answers 503."""
    db_statement_timeout_s: Seconds = 2.0
    """Every statement on a pooled connection ends within this (the server's statement_timeout), else 503."""
    db_lock_timeout_s: Seconds = 1.0
    """A statement waiting this long for a row lock (a row held by a long transaction) gives up,
    freeing what it locked, and answers 503; keep it below DB_STATEMENT_TIMEOUT_S."""
    db_idle_in_transaction_timeout_s: Seconds = 5.0
    """Postgres ends a pooled session that sits this long inside a transaction, freeing its locks."""
    gap_timeout_s: Seconds = 30.0
    """An event id missing this long stops holding back later ones; it is read again until its
    transaction ends, and its event is delivered late should it commit."""
    migrate_wait_s: Seconds = 60.0
    """How long `migrate` (and the CLI) waits for a database that does not answer yet."""

    def __post_init__(self) -> None:
        # URLs are joined with paths later; one spelling, without the trailing slash.
        for name in ("app_url", "fal_queue_url", "fal_jwks_url", "fal_api_url", "fal_rest_url", "fal_cdn_url"):
            value = getattr(self, name)
            if value is not None and value.endswith("/"):
                msgspec.structs.force_setattr(self, name, value.rstrip("/"))

    @property
    def fal_copy_lifetime_s(self) -> int:
        """How long fal keeps its copy of an output, as far as we know: what we asked for, else
        its documented least (7 days)."""
        return self.fal_media_expiry_s or FAL_MEDIA_LIFETIME_S

    @property
    def uses_emulator(self) -> bool:
        return self.fal_key is None

    @property
    def local_emulator(self) -> bool:
        """Jobs go to a local fal emulator: the one mounted in this process (no FAL_KEY), or the one
        `run` starts beside us, which hands us a key and URLs of its own and its media base
        (EMULATOR_MEDIA_URL), which gives it away."""
        return self.uses_emulator or self.emulator_media_url is not None

    @property
    def is_https(self) -> bool:
        """Served to the public over TLS (behind a proxy): cookies get Secure, responses HSTS."""
        return self.app_url is not None and self.app_url.startswith("https://")

    @property
    def local_url(self) -> str:
        """How this process reaches itself (the in-process emulator sends webhooks here)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


ALIASES: dict[str, tuple[str, ...]] = {"app_url": ("NEXT_PUBLIC_APP_URL",)}
"""Other names a field is read from, after its own (the seed's Next.js name for the public URL)."""

_FIELD_TYPES = get_type_hints(Settings, include_extras=True)


def _normalize(field: str, value: str) -> object:
    """The few spellings msgspec would not take from an environment string as they are."""
    if field == "log_level":
        return value.upper()
    if field == "log_format":
        return value.lower()
    if field in ("allowed_models", "media_hosts"):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _hint(field: str) -> str:
    for arg in get_args(_FIELD_TYPES[field]):
        for inner in (arg, *get_args(arg)):
            extra = getattr(inner, "extra", None)
            if extra and "hint" in extra:
                return extra["hint"]
    return "has the wrong type"


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as python-dotenv reads them (`#` comments, `export `, quotes)."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    with path.open() as stream:
        for binding in parse_stream(stream):
            if binding.error:
                raise SettingsError(f".env line {binding.original.line}: expected KEY=VALUE")
            if binding.key is not None:
                values[binding.key] = binding.value or ""
    return values


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Settings:
    env: dict[str, str] = read_dotenv(dotenv if dotenv is not None else PROJECT_ROOT / ".env")
    env.update(os.environ if environ is None else environ)

    raw: dict[str, object] = {}
    source: dict[str, str] = {}
    for field in Settings.__struct_fields__:
        for name in (field.upper(), *ALIASES.get(field, ())):
            if env.get(name):  # unset and empty both mean: the default
                raw[field], source[field] = _normalize(field, env[name]), name
                break
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.field`"; name the variable instead, and never echo the value.
        field = str(exc).rpartition("$.")[2].strip("`")
        name = source.get(field, field.upper())
        raise SettingsError(f"{name}: {_hint(field)}") from None
