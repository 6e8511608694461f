"""Short-lived signed stream tokens: a browser cannot put an API key in an EventSource, so the
API hands out an HMAC-signed token scoped to one job, to the user's stream, or to the user's jobs
carrying one tag (an app's end user: `tag:user:123`), with an expiry.

Format: base64url(JSON claims) "." base64url(HMAC-SHA256(secret, claims)). Verified in constant
time; any failure reads the same to the caller as a wrong key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

import msgspec

from service.errors import NotAuthenticated

if TYPE_CHECKING:
    from service.auth.callers import Caller

USER_SCOPE = "user"


TAG_SCOPE_PREFIX = "tag:"


def job_scope(request_id: str) -> str:
    return f"job:{request_id}"


def tag_scope(tag: str) -> str:
    """The streams of the user's jobs carrying `tag`: each such job's, and the user stream filtered
    by it. Which jobs carry it is the stream's to check (it takes a query)."""
    return f"{TAG_SCOPE_PREFIX}{tag}"


def scope_tag(scope: str) -> str | None:
    """The tag of a tag scope; None for any other scope."""
    return scope.removeprefix(TAG_SCOPE_PREFIX) if scope.startswith(TAG_SCOPE_PREFIX) else None


class StreamClaims(msgspec.Struct, frozen=True):
    user_id: str = msgspec.field(name="u")
    scope: str = msgspec.field(name="s")
    expires_at: int = msgspec.field(name="e")
    credential: str = msgspec.field(name="c")
    """The key or session that minted the token: the token dies with it (checked when a stream opens)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    def __init__(self, secret: str, *, ttl_s: int) -> None:
        self._key = hashlib.sha256(b"fal-jobs stream token\0" + secret.encode()).digest()
        self.ttl_s = ttl_s

    def issue(self, caller: Caller, scope: str, *, now: float | None = None) -> tuple[str, int]:
        expires_at = int(now if now is not None else time.time()) + self.ttl_s
        claims = msgspec.json.encode(
            StreamClaims(user_id=caller.user_id, scope=scope, expires_at=expires_at, credential=caller.credential)
        )
        return f"{_b64(claims)}.{_b64(self._sign(claims))}", expires_at

    def verify(self, token: str, scope: str, *, or_tag: bool = False, now: float | None = None) -> StreamClaims:
        """The token's claims, when it is genuine, unexpired and for `scope` (or, with `or_tag`, for
        any tag: the caller then checks that the tag opens this stream). Whether the credential
        that minted it still stands is the caller's to check (it takes a query)."""
        try:
            claims_part, signature_part = token.split(".", 1)
            claims_raw, signature = _unb64(claims_part), _unb64(signature_part)
        except (ValueError, binascii.Error):
            raise NotAuthenticated("token: malformed stream token") from None
        if not hmac.compare_digest(signature, self._sign(claims_raw)):
            raise NotAuthenticated("token: invalid stream token")
        try:
            claims = msgspec.json.decode(claims_raw, type=StreamClaims)
        except msgspec.DecodeError:  # signed by us, but an older format
            raise NotAuthenticated("token: stream token of an older format; ask POST /api/stream-tokens") from None
        if claims.expires_at < (now if now is not None else time.time()):
            raise NotAuthenticated("token: stream token expired; ask POST /api/stream-tokens for a new one")
        if claims.scope != scope and not (or_tag and scope_tag(claims.scope) is not None):
            raise NotAuthenticated("token: this stream token is for another stream")
        return claims

    def _sign(self, claims: bytes) -> bytes:
        return hmac.new(self._key, claims, hashlib.sha256).digest()
