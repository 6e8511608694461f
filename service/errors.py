"""Domain errors: what went wrong, in words a caller can act on. `service.http.errors` maps
each kind to a status code and the one JSON error shape; nothing here knows about HTTP."""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
