"""The schema as Piccolo tables; `piccolo_migrations/` holds the migrations made from them.

Runtime queries are plain SQL over asyncpg (see `service.jobs`): the status machine needs
`SELECT ... FOR UPDATE` inside one transaction, and the hot paths stay one round trip each.
"""

from piccolo.columns import JSONB, Array, BigSerial, Integer, Numeric, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class FalUser(Table, tablename="fal_users"):
    id = Varchar(length=36, primary_key=True)
    name = Varchar(length=100, unique=True)
    created_at = Timestamptz(default=TimestamptzNow())
    disabled_at = Timestamptz(null=True, default=None)
    # Per-user overrides of the settings' limits; NULL means the setting applies.
    max_open_jobs = Integer(null=True, default=None)
    max_jobs_per_minute = Integer(null=True, default=None)
    max_streams = Integer(null=True, default=None)
    max_spend_per_day = Numeric(null=True, default=None)


class FalApiKey(Table, tablename="fal_api_keys"):
    # Only a SHA-256 of the key is kept; the key itself is shown once, at creation.
    key_hash = Varchar(length=64, primary_key=True)
    user_id = Varchar(length=36, index=True)
    prefix = Varchar(length=16)
    created_at = Timestamptz(default=TimestamptzNow())
    revoked_at = Timestamptz(null=True, default=None)


class FalJob(Table, tablename="fal_jobs"):
    request_id = Text(primary_key=True)
    user_id = Varchar(length=36)
    model_id = Text()
    type = Varchar(length=8)
    input = JSONB()
    status = Varchar(length=16, default="pending")
    queue_position = Integer(null=True, default=None)
    logs = JSONB(null=True, default=None)
    result = JSONB(null=True, default=None)
    error = Text(null=True, default=None)
    error_type = Text(null=True, default=None)
    mode = Varchar(length=8, default="webhook")
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    completed_at = Timestamptz(null=True, default=None)
    # Set with `cancelled` when fal may still run the request (cancelled while running): the
    # open-jobs limit counts the job until then, or until fal's end is seen (back to NULL).
    counts_open_until = Timestamptz(null=True, default=None)
    # The app's own labels and JSON object, fixed at creation; metadata is never sent to fal. The
    # table fal_job_tags (raw SQL: piccolo_migrations/..._tags_and_metadata.py) finds jobs by tag.
    tags = Array(base_column=Text(), default=list)
    metadata = JSONB(default="{}")
    # The job's JobCost: our estimate of fal's bill (raw migration ..._costs.py).
    cost = JSONB(null=True, default=None)


class FalJobEvent(Table, tablename="fal_job_events"):
    # Append-only: one row per accepted change, written in the same statement as the change by the
    # fal_jobs_write_event trigger (piccolo_migrations/..._events_by_trigger.py).
    id = BigSerial(primary_key=True)
    request_id = Text()
    user_id = Varchar(length=36)
    version = Integer()
    status = Varchar(length=16)
    data = JSONB()
    created_at = Timestamptz(default=TimestamptzNow())


class FalEarlyWebhook(Table, tablename="fal_early_webhooks"):
    # A verified webhook whose job row was not there yet: a fast model can beat the INSERT of the
    # request that submitted it. Kept until the job row appears and it has been applied.
    id = BigSerial(primary_key=True)
    request_id = Text(index=True)
    body = JSONB()
    received_at = Timestamptz(default=TimestamptzNow())


class FalSignInToken(Table, tablename="fal_sign_in_tokens"):
    # A one-time link that turns into a browser session; only its hash is kept.
    token_hash = Varchar(length=64, primary_key=True)
    user_id = Varchar(length=36)
    expires_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)


class FalBrowserSession(Table, tablename="fal_browser_sessions"):
    # The cookie holds the session id; only its hash is kept. csrf_token guards state changes.
    id_hash = Varchar(length=64, primary_key=True)
    user_id = Varchar(length=36, index=True)
    csrf_token = Varchar(length=64)
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz()


class FalJobReservation(Table, tablename="fal_job_reservations"):
    # One row per accepted create, written before anything is sent to fal: the spend limits count
    # these, and an Idempotency-Key finds the job its first request made (request_id, once written).
    id = BigSerial(primary_key=True)
    user_id = Varchar(length=36)
    idempotency_key = Text(null=True, default=None)
    body_sha256 = Varchar(length=64)
    request_id = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    estimated_cost = Numeric(null=True, default=None)  # the job's estimate, counted by budgets while it is submitted
