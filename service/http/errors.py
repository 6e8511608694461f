"""The one error shape: `{"status": 404, "error": "not_found", "message": "job 'x' not found"}`.

Every failure, ours or Litestar's, leaves through here. Messages name the problem and never carry
a secret; an unexpected exception is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from service.errors import (
    Conflict,
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    Gone,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    Unavailable,
    UpstreamError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    IdempotencyKeyReused: 422,
    TooManyRequests: 429,
    Gone: 410,
    UpstreamError: 502,
    Unavailable: 503,
}

CODE_BY_STATUS = {
    400: "invalid_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
}


class ErrorBody(msgspec.Struct):
    status: int
    error: str
    message: str


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(ErrorBody(status=status, error=code, message=message), status_code=status, headers=headers)


def _status_for(exc: DomainError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]
    return 500


def handle_domain_error(request: Request, exc: DomainError) -> Response[ErrorBody]:
    status = _status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, exc.retry_after_s))
    return error_response(status, exc.code, exc.message, headers or None)


def handle_validation_error(request: Request, exc: ValidationException) -> Response[ErrorBody]:
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            problems.append(f"{key}: {item.get('message')}" if key else str(item.get("message")))
    message = "; ".join(problems) or str(exc.detail)
    return error_response(400, "invalid_request", message)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    message = str(exc.detail) if exc.detail else "request failed"
    if status == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    if status >= 500:
        log.error("http exception", exc_info=exc)
    return error_response(status, CODE_BY_STATUS.get(status, "error"), message, exc.headers or None)


def handle_database_unavailable(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    return error_response(503, "unavailable", "the database is unavailable; retry later", {"Retry-After": "1"})


# SQLSTATE classes that mean "the database cannot serve us right now", not "this query is wrong":
# connection exceptions, insufficient resources, operator intervention (shutdown, restart), and a
# database that is gone.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "3D000")


def handle_postgres_error(request: Request, exc: asyncpg.PostgresError) -> Response[ErrorBody]:
    if (exc.sqlstate or "").startswith(_UNAVAILABLE_SQLSTATES):
        return handle_database_unavailable(request, exc)
    return handle_unexpected(request, exc)


def handle_unexpected(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the request id in X-Request-Id finds the log line")


EXCEPTION_HANDLERS = {
    DomainError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    asyncpg.PostgresError: handle_postgres_error,
    asyncpg.InterfaceError: handle_database_unavailable,
    ConnectionError: handle_database_unavailable,
    OSError: handle_database_unavailable,
    Exception: handle_unexpected,
}
