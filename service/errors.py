"""Domain errors: what went wrong, in words a caller can act on. `service.http.errors` maps
each kind to a status code and the one JSON error shape; nothing here knows about HTTP."""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        """When set, the caller may retry after this many seconds (HTTP: Retry-After)."""


class InvalidRequest(DomainError):
    code = "invalid_request"


class NotAuthenticated(DomainError):
    code = "not_authenticated"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class UpstreamError(DomainError):
    """fal answered with an error, or could not be reached."""

    code = "upstream_error"


class Unavailable(DomainError):
    """A dependency of ours (the database) is down; the caller should retry."""

    code = "unavailable"


class Forbidden(DomainError):
    """Authenticated, but this request may not do this (e.g. a state change without its CSRF token)."""

    code = "forbidden"


class TooManyRequests(DomainError):
    """A limit of this service (open jobs, jobs per minute, open streams) is reached; nothing was done."""

    code = "too_many_requests"


class BudgetExceeded(TooManyRequests):
    """The user's spend over the last 24 h and this job's estimate exceed their budget; nothing was sent to fal."""

    code = "budget_exceeded"


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key already used with another request body."""

    code = "idempotency_key_reused"


class IdempotencyInProgress(Conflict):
    """The first request with this Idempotency-Key is still being processed."""

    code = "idempotency_in_progress"


class Gone(DomainError):
    """It was here and was removed for good (a deleted job's media)."""

    code = "gone"


class DatabaseUnavailable(Unavailable):
    """Postgres could not serve the call: unreachable, too slow, restarting, or the connection broke.
    Raised by the pool (`service.db.pool`), never for a query that is merely wrong."""


class PayloadTooLarge(DomainError):
    """A request body over a limit of ours; the rest of it was not read."""

    code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    """A file of a type this service does not take."""

    code = "unsupported_media_type"


class Unprocessable(InvalidRequest):
    """Well-formed, but its content cannot be used (an image too large to decode, an input naming an
    upload that is not the caller's)."""

    code = "invalid_request"
