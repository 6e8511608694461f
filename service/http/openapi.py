"""The OpenAPI document, made true: what Litestar infers from the handlers, completed in one place.

Litestar documents the success answer of each handler and its own `{status_code, detail}` shape for
a 400. What a client also needs, and Schemathesis checks against the live service
(`tests/test_openapi.py`), is added here: the three ways to authenticate, every status each route
answers with the one error shape `{status, error, message}`, the constraints the controllers
enforce (request id pattern, enums, ranges, models per job type), and the streams as
`text/event-stream`.

Those additions are written as the JSON they become. Litestar's spec classes type every field as
its own dataclasses (`Schema`, `OpenAPIResponse`, ...), but its serializer (`to_schema`) writes a
dict found in their place as it is; building the dataclasses instead would add their defaults
(`required: false`, ...) to the document. Each `type: ignore` in this module is such a dict.
"""

from __future__ import annotations

from typing import Any

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIResponse,
    Operation,
    Parameter,
    PathItem,
    RequestBody,
    SecurityRequirement,
)

from service.jobs.catalog import model_type
from service.jobs.models import JOB_STATUSES, JOB_TYPES
from service.jobs.queries import MAX_PAGE_SIZE, REQUEST_ID_PATTERN
from service.jobs.tags import MAX_METADATA_BYTES, MAX_TAGS, TAG_PATTERN, TAG_RULE

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ErrorBody",
    "description": "The one error shape of every failure.",
    "required": ["status", "error", "message"],
    "properties": {
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "error": {"type": "string", "description": "a stable code: invalid_request, not_found, conflict, ..."},
        "message": {"type": "string", "description": "what is wrong, naming the field; never a secret"},
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "BearerKey": {"type": "http", "scheme": "bearer",
                  "description": "An API key (`fj_...`) from `python3 -m service users create NAME`."},
    "SessionCookie": {"type": "apiKey", "in": "cookie", "name": "fal_jobs_session",
                      "description": "The browser session set by a sign-in link; state changes also need "
                                     "the session's CSRF token in `X-CSRF-Token`."},
    "StreamToken": {"type": "apiKey", "in": "query", "name": "token",
                    "description": "A short-lived stream token from POST /api/stream-tokens (EventSource "
                                   "cannot send headers)."},
}
API_AUTH: list[SecurityRequirement] = [{"BearerKey": []}, {"SessionCookie": []}]
STREAM_AUTH: list[SecurityRequirement] = [{"BearerKey": []}, {"StreamToken": []}]
OUTPUT_AUTH: list[SecurityRequirement] = [{"BearerKey": []}, {"SessionCookie": []}, {"StreamToken": []}]  # a signed link's ?token=
PUBLIC: list[SecurityRequirement] = []

WHY = {
    400: "The request is malformed; the message names the field.",
    401: "Not authenticated, or the credentials are wrong.",
    403: "A session request without its CSRF token.",
    404: "No such job for this caller (another user's job is 404 too); on /api/admin, a caller who is not an admin.",
    409: "The job is not in a state that allows this (an output before the job completed, say; or the first "
         "request with this Idempotency-Key is still submitting).",
    413: "The body is larger than this endpoint accepts.",
    410: "The output was deleted with its job.",
    412: "If-Match does not name the output's ETag (its sha256).",
    415: "The file is not of an accepted type (read from its bytes).",
    416: "The Range lies outside the output.",
    422: "The content cannot be used: the input does not fit the model's schema at fal (the message names the "
         "field and what the model takes), names an upload that is not the caller's, or the Idempotency-Key "
         "was already used with another request body.",
    429: "A limit (open jobs, jobs per minute, streams per credential, the day's spend) is reached; Retry-After says when to retry.",
    502: "fal refused or could not be reached; the message names its answer.",
    503: "A dependency (the database, fal's keys, the listener) is unavailable; retry after Retry-After.",
}

# (method, path): security, then the error statuses it answers besides its success.
ROUTES: dict[tuple[str, str], tuple[list[SecurityRequirement], tuple[int, ...]]] = {
    ("post", "/api/jobs"): (API_AUTH, (400, 401, 403, 409, 413, 422, 429, 502, 503)),
    ("get", "/api/jobs"): (API_AUTH, (400, 401, 503)),
    ("get", "/api/jobs/{request_id}"): (API_AUTH, (400, 401, 404, 429, 503)),
    ("get", "/api/jobs/{request_id}/result"): (API_AUTH, (400, 401, 404, 409, 503)),
    ("post", "/api/jobs/{request_id}/cancel"): (API_AUTH, (400, 401, 403, 404, 409, 502, 503)),
    ("get", "/api/jobs/{request_id}/events"): (STREAM_AUTH, (400, 401, 404, 429, 503)),
    ("get", "/api/events"): (STREAM_AUTH, (400, 401, 429, 503)),
    ("post", "/api/stream-tokens"): (API_AUTH, (400, 401, 403, 404, 503)),
    ("delete", "/api/jobs/{request_id}"): (API_AUTH, (400, 401, 403, 404, 409, 503)),
    ("get", "/api/jobs/{request_id}/outputs/{index}"): (OUTPUT_AUTH, (400, 401, 404, 409, 410, 412, 416, 503)),
    ("post", "/api/jobs/{request_id}/outputs/{index}/link"): (API_AUTH, (400, 401, 403, 404, 409, 503)),
    ("post", "/api/uploads"): (API_AUTH, (400, 401, 403, 413, 415, 422, 429, 503)),
    ("get", "/api/uploads"): (API_AUTH, (401, 503)),
    ("get", "/api/uploads/{upload_id}"): (OUTPUT_AUTH, (401, 404, 412, 416, 429, 503)),
    ("delete", "/api/uploads/{upload_id}"): (API_AUTH, (401, 403, 404, 503)),
    ("post", "/api/webhooks/fal"): (PUBLIC, (400, 401, 413, 503)),
    ("get", "/api/session"): ([{"SessionCookie": []}], (401, 503)),
    ("post", "/api/session/sign-out"): (API_AUTH, (401, 403, 503)),
    ("get", "/api/models"): (PUBLIC, ()),
    # Admins only: anyone else is told 404, as for a route that does not exist.
    ("get", "/api/admin/jobs"): (API_AUTH, (400, 401, 404, 503)),
    ("get", "/api/admin/jobs.csv"): (API_AUTH, (400, 401, 404, 503)),
    ("get", "/api/admin/jobs/{request_id}/timeline"): (API_AUTH, (400, 401, 404, 503)),
    ("get", "/api/admin/stats"): (API_AUTH, (400, 401, 404, 503)),
    ("get", "/api/admin/events"): (API_AUTH, (400, 401, 404, 429, 503)),
    ("get", "/healthz"): (PUBLIC, ()),
    ("get", "/readyz"): (PUBLIC, ()),
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN.pattern},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 20},
    # An event id, or a late event's resume token `<position>.<seq>`; empty: none.
    "last_event_id": {"type": "string", "pattern": "^([0-9]{1,18}(\\.[0-9]{1,18})?)?$",
                      "description": "resume after this event id or resume token (empty: none)"},
    # Opaque: only a `next_cursor` this API issued is valid (anything else is 400).
    "cursor": {"type": "string", "format": "fal-jobs-cursor"},
    "token": {"type": "string"},
    "index": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    # Printable ASCII; HTTP strips a header value's outer spaces, so the document does not offer them.
    "Idempotency-Key": {"type": "string", "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]{0,253}[\\x21-\\x7e])?$"},
    "tag": {"type": "string", "pattern": TAG_PATTERN.pattern},
}
TAG: dict[str, Any] = {"type": "string", "pattern": TAG_PATTERN.pattern, "description": TAG_RULE}
LIST_FILTERS = {"status": {"type": "string", "enum": list(JOB_STATUSES)}, "type": {"type": "string", "enum": list(JOB_TYPES)}}
# Comma-separated lists: `?status=pending,failed` (form style, not exploded); left out for no filter.
STREAM_FILTERS = {
    "status": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(JOB_STATUSES)}},
    "type": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(JOB_TYPES)}},
}

# Any JSON value whose strings hold no NUL (PostgreSQL's jsonb cannot store U+0000).
JSON_VALUE: dict[str, Any] = {
    "description": "any JSON value; strings and keys without U+0000",
    "anyOf": [
        {"type": "string", "pattern": "^[^\\u0000]*$"},
        {"type": "number"}, {"type": "boolean"}, {"type": "null"},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "propertyNames": {"pattern": "^[^\\u0000]*$"},
         "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}

WEBHOOK_BODY: dict[str, Any] = {
    "title": "FalWebhook",
    "description": "fal's webhook, verified on the raw body against the X-Fal-Webhook-Request-Id, -User-Id, "
                   "-Timestamp and -Signature headers (Ed25519, fal's JWKS); anything unsigned is 401.",
    "type": "object",
    "required": ["request_id", "status"],
    "properties": {
        "request_id": {"type": "string"},
        "gateway_request_id": {"type": ["string", "null"]},
        "status": {"enum": ["OK", "ERROR"]},
        "payload": {},
        "payload_error": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
    },
}

WEBHOOK_RECEIPT: dict[str, Any] = {
    "title": "WebhookReceipt",
    "type": "object",
    "required": ["outcome", "request_id"],
    "properties": {
        "request_id": {"type": "string"},
        "outcome": {"type": "string", "enum": ["applied", "duplicate", "parked"]},
    },
}


def _webhook_operation() -> PathItem:
    """The webhook is a bare ASGI route (see service/http/webhooks.py), which Litestar does not
    document: its operation, as Litestar would have written it, is written here."""
    return PathItem(post=Operation(
        tags=["webhooks"],
        summary="fal's completion webhook (Ed25519-signed)",
        operation_id="ApiWebhooksFalFalWebhook",
        request_body={"required": True, "content": {"application/json": {"schema": WEBHOOK_BODY}}},  # type: ignore[arg-type]
        responses={"200": {"description": "Taken in: applied, a duplicate, or parked until its job appears.",  # type: ignore[dict-item]
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookReceipt"}}}}},
    ))


SSE_DESCRIPTION = (
    "Server-Sent Events. `event: job` messages carry `id: <event id>` and `data: <the job as JSON>` "
    "(the Job fields of JobView, without links); `/api/events` starts with `event: ready` whose id is "
    "the current position and whose data is `{\"position\": N}`; comment lines are heartbeats; a "
    "`retry:` hint comes first. Resume with the `Last-Event-ID` header or `?last_event_id=`."
)


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": SSE_DESCRIPTION,
    "required": ["data"],
    "properties": {
        "event": {"enum": ["job", "ready"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}

STREAM_TOKEN_REQUEST: dict[str, Any] = {
    "title": "StreamTokenRequest",
    "oneOf": [
        {"type": "object", "additionalProperties": False,  # a user-scoped token ignores request_id
         "properties": {"scope": {"const": "user"}, "request_id": {"type": ["string", "null"]}}},
        {"type": "object", "additionalProperties": False, "required": ["scope", "request_id"],
         "properties": {"scope": {"const": "job"}, "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN.pattern}}},
        # The streams of the caller's jobs carrying the tag: each one's, and /api/events?tag=.
        {"type": "object", "additionalProperties": False, "required": ["scope", "tag"],
         "properties": {"scope": {"const": "tag"}, "tag": TAG}},
    ],
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": WHY[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return response


def _job_request(allowed_models: tuple[str, ...]) -> dict[str, Any]:
    """A job's type must be the kind its model makes: one alternative per type that has models."""
    variants = []
    for kind in JOB_TYPES:
        models = [m for m in allowed_models if model_type(m) == kind]
        if models:
            variants.append({
                "type": "object", "additionalProperties": False, "required": ["type", "model_id"],
                "properties": {
                    "type": {"const": kind},
                    "model_id": {"type": "string", "enum": models},
                    "input": {"type": "object", "description": "the model's input, at most 64 KiB of JSON",
                              "propertyNames": {"pattern": "^[^\\u0000]*$"},
                              "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
                    "tags": {"type": "array", "maxItems": MAX_TAGS, "items": TAG,
                             "description": "labels of the app's own (`user:123`); duplicates are dropped, "
                                            "the order is kept"},
                    "metadata": {"type": "object", "propertyNames": {"pattern": "^[^\\u0000]*$"},
                                 "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
                                 "description": f"the app's own JSON object, at most {MAX_METADATA_BYTES} bytes "
                                                "of JSON; stored and returned, never sent to fal"},
                },
            })
    return {"title": "CreateJobRequest", "oneOf": variants}


def tell_the_truth(openapi: OpenAPI, *, allowed_models: tuple[str, ...]) -> None:
    """Complete Litestar's document in place (before it is first served)."""
    components = openapi.components
    components.security_schemes = {**(components.security_schemes or {}), **SECURITY_SCHEMES}
    schemas = components.schemas
    schemas["ErrorBody"] = ERROR_SCHEMA  # type: ignore[assignment]
    schemas["JsonValue"] = JSON_VALUE  # type: ignore[assignment]
    schemas["CreateJobRequest"] = _job_request(allowed_models)  # type: ignore[assignment]
    schemas["StreamTokenRequest"] = STREAM_TOKEN_REQUEST  # type: ignore[assignment]
    schemas["WebhookReceipt"] = WEBHOOK_RECEIPT  # type: ignore[assignment]
    openapi.paths = {**(openapi.paths or {}), "/api/webhooks/fal": _webhook_operation()}
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if operation is None or (method, path) not in ROUTES:
                continue
            _complete_operation(operation, method, path)
    _describe_output_download(openapi)
    _describe_uploads(openapi)
    _describe_created(openapi)
    _describe_readyz(openapi)


def _complete_operation(operation: Operation, method: str, path: str) -> None:
    """One route's security, error answers, parameter constraints and, for a stream, its event type."""
    security, errors = ROUTES[(method, path)]
    operation.security = security
    responses = operation.responses or {}
    responses.pop("400", None)  # Litestar's {status_code, detail}: never what we answer
    for status in errors:
        responses[str(status)] = _error(status)  # type: ignore[assignment]
    operation.responses = responses
    streams = path.endswith("/events")
    _constrain_parameters(operation, streams)
    if streams:
        ok = responses["200"]
        if isinstance(ok, OpenAPIResponse):  # Litestar writes a handler's answer in place, not as a $ref
            ok.content = {"text/event-stream": {"schema": SSE_EVENT}}  # type: ignore[dict-item]
            ok.description = "The live stream"
        if path.startswith("/api/jobs/"):
            responses["204"] = {"description": "Resumed after the job's terminal event: nothing more will come; "  # type: ignore[assignment]
                                               "EventSource stops reconnecting."}


def _constrain_parameters(operation: Operation, streams: bool) -> None:
    """The constraints the controllers enforce on each parameter (filters differ on the streams)."""
    for parameter in operation.parameters or []:
        if not isinstance(parameter, Parameter):  # Litestar writes a handler's parameters in place, never $refs
            continue
        schema = PARAMETERS.get(parameter.name)
        if parameter.name in ("status", "type"):
            schema = (STREAM_FILTERS if streams else LIST_FILTERS)[parameter.name]
        if schema is not None and schema.get("type") == "array":
            parameter.style, parameter.explode = "form", False
        if schema is not None:
            parameter.schema = {**schema, **({"description": parameter.description} if parameter.description else {})}  # type: ignore[assignment]


def _describe_output_download(openapi: OpenAPI) -> None:
    """An output's download answers with the stored bytes, a range of them, or a redirect to fal."""
    output = openapi.paths.get("/api/jobs/{request_id}/outputs/{index}") if openapi.paths else None
    if output is not None and output.get is not None and output.get.responses is not None:
        media = {kind: {"schema": {"type": "string", "format": "binary"}}
                 for kind in ("image/*", "video/*", "audio/*", "application/octet-stream")}
        answers = {
            "200": {"description": "The stored copy (its own content type).", "content": media},
            "206": {"description": "The requested Range of the stored copy.", "content": media},
            "304": {"description": "Unchanged since the ETag in If-None-Match."},
            "307": {"description": "Not stored (yet): a redirect to fal's copy, while fal keeps it.",
                    "headers": {"Location": {"schema": {"type": "string"}}}},
        }
        output.get.responses.update(answers)  # type: ignore[arg-type]


def _describe_uploads(openapi: OpenAPI) -> None:
    """An upload is the raw body (its type read from the bytes); reading one answers its bytes."""
    paths = openapi.paths or {}
    binary: Any = {"schema": {"type": "string", "format": "binary"}}
    create = paths["/api/uploads"].post if "/api/uploads" in paths else None
    if create is not None:
        kinds = ("application/octet-stream", "image/*", "video/*", "audio/*")
        form: Any = {"schema": {"type": "object", "required": ["file"],
                                "properties": {"file": {"type": "string", "format": "binary"}}}}
        create.request_body = RequestBody(content={**dict.fromkeys(kinds, binary), "multipart/form-data": form},
                                          required=True)
    read = paths["/api/uploads/{upload_id}"].get if "/api/uploads/{upload_id}" in paths else None
    if read is not None and read.responses is not None:
        media = {kind: binary for kind in ("image/*", "video/*", "audio/*")}
        answers: dict[str, Any] = {
            "200": {"description": "The upload's bytes (its own content type).", "content": media},
            "206": {"description": "The requested Range of the upload.", "content": media},
            "304": {"description": "Unchanged since the ETag in If-None-Match."},
        }
        read.responses.update(answers)


def _describe_created(openapi: OpenAPI) -> None:
    """A created job's 202 says where the job is (`Location`), as its `links.self` does."""
    jobs = openapi.paths.get("/api/jobs") if openapi.paths else None
    created = jobs.post.responses.get("202") if jobs is not None and jobs.post and jobs.post.responses else None
    if isinstance(created, OpenAPIResponse):  # Litestar writes a handler's answer in place
        created.headers = {**(created.headers or {}), "Location": {  # type: ignore[dict-item]
            "description": "the job's URL, `/api/jobs/{request_id}` (its `links.self`)",
            "schema": {"type": "string"}, "required": True}}


def _describe_readyz(openapi: OpenAPI) -> None:
    readyz = openapi.paths["/readyz"].get if openapi.paths and "/readyz" in openapi.paths else None
    if readyz is not None and readyz.responses is not None:
        readyz.responses["503"] = {"description": "Not ready; `checks` names what is not.",  # type: ignore[assignment]
                                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}
