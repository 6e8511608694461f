"""Ed25519 webhook signing, byte-for-byte as fal signs its webhooks.

The emulator keeps its own key pairs: it can never hold fal's private key, so a receiver under test
is pointed at the emulator's JWKS instead of fal's.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"


class Jwk(msgspec.Struct, frozen=True):
    kty: str
    crv: str
    x: str
    kid: str
    use: str = "sig"
    alg: str = "EdDSA"


class Jwks(msgspec.Struct, frozen=True):
    keys: list[Jwk]


def _b64url(data: bytes) -> str:
    # JWK members are base64url without padding (RFC 7515 §2); receivers must re-pad.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def kid(self) -> str:
        # RFC 7638 thumbprint: stable, derived from the key, no registry of ids needed.
        canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % _b64url(self.public_raw)
        return _b64url(hashlib.sha256(canonical.encode()).digest())

    def jwk(self) -> Jwk:
        return Jwk(kty="OKP", crv="Ed25519", x=_b64url(self.public_raw), kid=self.kid)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def webhook_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The signed message: header values and the hash of the raw body, never re-serialized JSON."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")


def signed_headers(key: SigningKey, *, request_id: str, user_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    ts = str(timestamp)
    signature = key.sign(webhook_message(request_id, user_id, ts, body))
    return {
        HEADER_REQUEST_ID: request_id,
        HEADER_USER_ID: user_id,
        HEADER_TIMESTAMP: ts,
        HEADER_SIGNATURE: signature.hex(),
    }


class KeySet:
    """The emulator's published keys plus the current signing key; rotation mimics a JWKS roll-over."""

    def __init__(self) -> None:
        self.current = SigningKey.generate()
        self._published: list[SigningKey] = [self.current]
        # Signs "bad_signature" deliveries: well-formed, but never published.
        self.rogue = SigningKey.generate()

    def rotate(self, *, keep_old: bool) -> SigningKey:
        new = SigningKey.generate()
        self._published = [new, *self._published] if keep_old else [new]
        self.current = new
        return new

    @property
    def published(self) -> list[SigningKey]:
        return list(self._published)

    def jwks(self) -> Jwks:
        return Jwks(keys=[k.jwk() for k in self._published])

    def jwks_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self.jwks())
