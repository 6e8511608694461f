"""Verification of fal's signed webhooks (Ed25519 over request id, user id, timestamp, body hash).

Two failure kinds, on purpose: `WebhookSignatureError` means "this delivery is not from fal"
(answer 401), `JwksUnavailable` means "cannot tell right now" (answer 503 so fal retries later).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from typing import TYPE_CHECKING

import httpx
import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

HEADER_REQUEST_ID = "x-fal-webhook-request-id"
HEADER_USER_ID = "x-fal-webhook-user-id"
HEADER_TIMESTAMP = "x-fal-webhook-timestamp"
HEADER_SIGNATURE = "x-fal-webhook-signature"
_REQUIRED = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)
_HEX_SIGNATURE = re.compile(r"^[0-9a-fA-F]{128}$")  # 64 bytes
_INTEGER = re.compile(r"^-?\d{1,15}$")


class WebhookSignatureError(Exception):
    """The delivery fails verification; `reason` is safe to return to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(Exception):
    """fal's public keys could not be fetched, so the signature could not be judged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VerifiedWebhook(msgspec.Struct, frozen=True):
    request_id: str
    user_id: str
    timestamp: int


class _Jwk(msgspec.Struct):
    kty: str = ""
    crv: str = ""
    x: str = ""


class _Jwks(msgspec.Struct):
    keys: list[_Jwk] = msgspec.field(default_factory=list)


def _b64url_decode(value: str) -> bytes:
    # JWK members are base64url without padding; Python's decoder insists on it.
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parse_jwks(document: bytes) -> list[VerifyKey]:
    """Ed25519 keys of a JWKS document; keys of other types or malformed entries are skipped.

    libsodium (PyNaCl) checks the signatures: every webhook pays one check, and libsodium's is
    the cheaper of the two bindings measured (cryptography's OpenSSL one cost more). It is also
    the stricter of the two (canonical signatures only, small-order keys refused)."""
    keys: list[VerifyKey] = []
    for jwk in msgspec.json.decode(document, type=_Jwks).keys:
        if jwk.kty != "OKP" or jwk.crv != "Ed25519":
            continue
        try:
            raw = _b64url_decode(jwk.x)
            keys.append(VerifyKey(raw))
        except (ValueError, TypeError, binascii.Error):
            continue
    return keys


def webhook_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")


class JwksKeyring:
    """fal's public keys, fetched from a JWKS URL and cached; refetched sparingly on unknown keys."""

    def __init__(
        self,
        jwks_url: str,
        http: httpx.AsyncClient,
        *,
        cache_ttl_s: float = 86400,
        min_refetch_interval_s: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = jwks_url
        self._http = http
        self._ttl = cache_ttl_s
        self._min_interval = min_refetch_interval_s
        self._clock = clock
        self._keys: list[VerifyKey] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._last_fetch_failed = False
        self._generation = 0  # bumped per successful fetch: lets lock waiters see someone else fetched
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    @property
    def generation(self) -> int:
        return self._generation

    async def keys(self) -> list[VerifyKey]:
        """Cached keys, fetching when there are none or they are older than the TTL.

        Expired keys are still used when the refetch fails: fal rotates rarely, and refusing every
        webhook because the JWKS host hiccuped would be worse.
        """
        if self._fresh():
            return self._keys
        seen = self._generation
        async with self._lock:
            if self._generation == seen and not self._fresh():
                try:
                    await self._fetch()
                except JwksUnavailable:
                    if not self._keys:
                        raise
        return self._keys

    async def refresh(self, seen_generation: int) -> bool:
        """Refetch because a signature matched no cached key; True when keys newer than
        `seen_generation` are available. At most one fetch per min_refetch_interval_s, one at a time."""
        async with self._lock:
            if self._generation != seen_generation:
                return True  # another verifier refetched while we waited for the lock
            if self._attempted_at is not None and self._clock() - self._attempted_at < self._min_interval:
                if self._last_fetch_failed:
                    # The unknown key may be a rotation we could not fetch: "cannot tell", not "forged".
                    raise JwksUnavailable("fal's webhook keys could not be fetched recently")
                return False
            await self._fetch()
            return True

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetch_count += 1
        self._last_fetch_failed = True
        try:
            response = await self._http.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = parse_jwks(response.content)
        except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise JwksUnavailable(f"could not fetch fal's webhook keys: {type(exc).__name__}") from exc
        if not keys:
            raise JwksUnavailable("fal's JWKS holds no Ed25519 key")
        self._keys = keys
        self._last_fetch_failed = False
        self._fetched_at = self._clock()
        self._generation += 1


class WebhookVerifier:
    """Checks that a webhook is from fal (the signature) and for us (the signed fal user id).

    Every fal customer's webhooks are signed with the same keys, so a valid signature alone proves
    only "from fal"; `expected_user_id` (our fal account) proves the rest. Unpinned, the user ids
    seen are logged once each so that an operator can pin theirs."""

    _MAX_LOGGED_USER_IDS = 16

    def __init__(self, keyring: JwksKeyring, *, expected_user_id: str | None = None, tolerance_s: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self._keyring = keyring
        self._expected_user_id = expected_user_id
        self._tolerance = tolerance_s
        self._clock = clock
        self._logged_user_ids: set[str] = set()

    async def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedWebhook:
        """Raise WebhookSignatureError (reject) or JwksUnavailable (retry later); else the verified ids."""
        values = {name.lower(): value for name, value in headers.items()}
        for name in _REQUIRED:
            if not values.get(name):
                raise WebhookSignatureError(f"missing header {name}")
        request_id, user_id = values[HEADER_REQUEST_ID], values[HEADER_USER_ID]
        timestamp_text, signature_hex = values[HEADER_TIMESTAMP].strip(), values[HEADER_SIGNATURE].strip()

        if not _INTEGER.match(timestamp_text):
            raise WebhookSignatureError("timestamp is not an integer")
        timestamp = int(timestamp_text)
        skew = self._clock() - timestamp
        if skew > self._tolerance:
            raise WebhookSignatureError("timestamp is stale")
        if skew < -self._tolerance:
            raise WebhookSignatureError("timestamp is from the future")
        if not _HEX_SIGNATURE.match(signature_hex):
            raise WebhookSignatureError("signature is not 64 bytes of hex")
        signature = bytes.fromhex(signature_hex)
        # The header's own text is what fal signed, not a re-formatted integer.
        message = webhook_message(request_id, user_id, values[HEADER_TIMESTAMP], body)

        keys = await self._keyring.keys()
        generation = self._keyring.generation
        # Not verified: maybe fal rotated to a key we have not seen yet.
        if not _any_verifies(keys, signature, message) and not (
            await self._keyring.refresh(generation) and _any_verifies(await self._keyring.keys(), signature, message)
        ):
            raise WebhookSignatureError("signature does not match any of fal's keys")
        self._check_sender(user_id)
        return VerifiedWebhook(request_id=request_id, user_id=user_id, timestamp=timestamp)

    def _check_sender(self, user_id: str) -> None:
        if self._expected_user_id is not None:
            if not hmac.compare_digest(user_id.encode(), self._expected_user_id.encode()):
                raise WebhookSignatureError("signed for another fal account (X-Fal-Webhook-User-Id is not FAL_WEBHOOK_USER_ID)")
            return
        if user_id not in self._logged_user_ids and len(self._logged_user_ids) < self._MAX_LOGGED_USER_IDS:
            self._logged_user_ids.add(user_id)
            log.warning(
                "webhooks are not pinned to a fal account; set FAL_WEBHOOK_USER_ID to the user id seen here",
                extra={"action": "webhook_sender_unpinned", "fal_user_id": user_id},
            )


def _any_verifies(keys: list[VerifyKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(message, signature)
            return True
        except BadSignatureError:
            continue
    return False
