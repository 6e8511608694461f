"""The one error shape: `{"status": 404, "error": "not_found", "message": "job 'x' not found"}`.

Every failure, ours or Litestar's, leaves through here. Messages name the problem and never carry
a secret; an unexpected exception is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from service.db.pool import is_unavailable
from service.errors import (
    Conflict,
    DatabaseUnavailable,
    DomainError,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
    UpstreamError,
)
from service.http.validation import describe

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    IdempotencyKeyReused: 422,
    TooManyRequests: 429,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
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


RETRY_AFTER_S = "1"
"""What a 503 tells its caller (fal included) to wait before retrying."""


def handle_domain_error(request: Request, exc: DomainError) -> Response[ErrorBody]:
    status = _status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, exc.retry_after_s))
    elif status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
    if isinstance(exc, DatabaseUnavailable):
        log.warning("database unavailable", extra={"action": "answer_503", "error": exc.message})
    return error_response(status, exc.code, exc.message, headers or None)


def handle_validation_error(request: Request, exc: ValidationException) -> Response[ErrorBody]:
    problems = [describe(request, item) for item in exc.extra if isinstance(item, dict)] if isinstance(exc.extra, list) else []
    message = "; ".join(problems) or str(exc.detail)
    return error_response(400, "invalid_request", message)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    message = str(exc.detail) if exc.detail else "request failed"
    headers = dict(exc.headers or {})
    if status == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    elif status == 400 and isinstance(exc.__cause__, SerializationException):
        # msgspec's words alone ("Input data was truncated") do not say that the body is at fault.
        message = f"body: not valid JSON ({message[:1].lower()}{message[1:]}); send one JSON object"
    elif status == 405:
        headers, message = _method_not_allowed(request, headers)
    if status >= 500:
        log.error("http exception", exc_info=exc)
    return error_response(status, CODE_BY_STATUS.get(status, "error"), message, headers or None)


def _method_not_allowed(request: Request, headers: dict[str, str]) -> tuple[dict[str, str], str]:
    """The router's 405 carries `Allow` (in its own order): sorted, and named in the message."""
    allow = next((value for name, value in headers.items() if name.lower() == "allow"), "")
    methods = sorted({method.strip().upper() for method in allow.split(",") if method.strip()})
    headers = {name: value for name, value in headers.items() if name.lower() != "allow"}
    message = f"{request.method} is not allowed on {request.url.path}"
    if methods:
        headers["Allow"] = ", ".join(methods)
        usable = [method for method in methods if method not in ("HEAD", "OPTIONS")] or methods
        message += f"; use {' or '.join(usable)}"
    return headers, message


def handle_database_unavailable(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.warning("database unavailable", extra={"action": "answer_503", "error": type(exc).__name__})
    return error_response(503, "unavailable", "the database is unavailable; retry later", {"Retry-After": RETRY_AFTER_S})


def handle_database_error(request: Request, exc: Exception) -> Response[ErrorBody]:
    """An asyncpg error that escaped the pool's translation (a connection used outside it): a 503
    when the database or the connection failed, a 500 when the query did."""
    if is_unavailable(exc):
        return handle_database_unavailable(request, exc)
    return handle_unexpected(request, exc)


def handle_unexpected(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the request id in X-Request-Id finds the log line")


EXCEPTION_HANDLERS = {
    DomainError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    # Only database errors: an OSError or a TimeoutError from anything else is a 500, not "database
    # unavailable" (the pool turns its own into DatabaseUnavailable, a DomainError).
    asyncpg.PostgresError: handle_database_error,
    asyncpg.InterfaceError: handle_database_error,
    asyncpg.InternalClientError: handle_database_error,
    Exception: handle_unexpected,
}
