"""service.fal.signatures against the emulator's JWKS over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import time

import fal_client
import httpx
import pytest

from service.emulator import FalEmulator, SigningKey
from service.emulator.signing import signed_headers
from service.fal.signatures import (
    JwksKeyring,
    JwksUnavailable,
    VerifiedWebhook,
    WebhookSignatureError,
    WebhookVerifier,
    parse_jwks,
)

from .conftest import WebhookReceiver, closed_port_url, running_emulator

BODY = b'{"request_id":"r-1","status":"OK","payload":{"seed":196619188014358660}}'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sign(key: SigningKey, *, body: bytes = BODY, timestamp: int | None = None, request_id: str = "r-1") -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return signed_headers(key, request_id=request_id, user_id="user-1", timestamp=ts, body=body)


@pytest.fixture
def verifier(emu: FalEmulator, http: httpx.AsyncClient) -> WebhookVerifier:
    return WebhookVerifier(JwksKeyring(emu.jwks_url, http))


async def test_valid(emu: FalEmulator, verifier: WebhookVerifier) -> None:
    result = await verifier.verify(sign(emu.keyset.current), BODY)
    assert isinstance(result, VerifiedWebhook)
    assert (result.request_id, result.user_id) == ("r-1", "user-1")


async def test_valid_real_delivery(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver, verifier: WebhookVerifier) -> None:
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x"}, webhook_url=receiver.url)
    [delivery] = await receiver.wait_for(1)
    # Lower-case keys here (as ASGI delivers them); case does not matter.
    verified = await verifier.verify(delivery.headers, delivery.body)
    assert verified.request_id == handle.request_id and verified.user_id == emu.user_id
    assert abs(verified.timestamp - time.time()) < 300


async def test_forged(verifier: WebhookVerifier) -> None:
    with pytest.raises(WebhookSignatureError) as info:
        await verifier.verify(sign(SigningKey.generate()), BODY)
    assert "signature" in info.value.reason


async def test_tampered_body(emu: FalEmulator, verifier: WebhookVerifier) -> None:
    headers = sign(emu.keyset.current)
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(headers, BODY.replace(b"660", b"661"))


async def test_tampered_header(emu: FalEmulator, verifier: WebhookVerifier) -> None:
    headers = sign(emu.keyset.current)
    headers["X-Fal-Webhook-Request-Id"] = "r-2"
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(headers, BODY)


async def test_stale_and_future(emu: FalEmulator, verifier: WebhookVerifier) -> None:
    now = int(time.time())
    with pytest.raises(WebhookSignatureError) as stale:
        await verifier.verify(sign(emu.keyset.current, timestamp=now - 301), BODY)
    assert "stale" in stale.value.reason
    with pytest.raises(WebhookSignatureError) as future:
        await verifier.verify(sign(emu.keyset.current, timestamp=now + 301), BODY)
    assert "future" in future.value.reason
    # Inside the tolerance both ways.
    await verifier.verify(sign(emu.keyset.current, timestamp=now - 250), BODY)
    await verifier.verify(sign(emu.keyset.current, timestamp=now + 250), BODY)


async def test_tolerance_uses_injected_clock(emu: FalEmulator, http: httpx.AsyncClient) -> None:
    verifier = WebhookVerifier(JwksKeyring(emu.jwks_url, http), tolerance_s=10, clock=lambda: 5_000)
    await verifier.verify(sign(emu.keyset.current, timestamp=4_995), BODY)
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(sign(emu.keyset.current, timestamp=4_989), BODY)


@pytest.mark.parametrize(
    "header",
    ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"],
)
async def test_missing_header(emu: FalEmulator, verifier: WebhookVerifier, header: str) -> None:
    headers = sign(emu.keyset.current)
    del headers[header]
    with pytest.raises(WebhookSignatureError) as info:
        await verifier.verify(headers, BODY)
    assert header.lower() in info.value.reason.lower()


async def test_header_names_any_case(emu: FalEmulator, verifier: WebhookVerifier) -> None:
    headers = {name.upper(): value for name, value in sign(emu.keyset.current).items()}
    await verifier.verify(headers, BODY)
    await verifier.verify(httpx.Headers(sign(emu.keyset.current)), BODY)


@pytest.mark.parametrize("signature", ["zz" * 64, "ab" * 63, "ab" * 65, "", "0x" + "ab" * 63])
async def test_malformed_signature(emu: FalEmulator, verifier: WebhookVerifier, signature: str) -> None:
    headers = sign(emu.keyset.current) | {"X-Fal-Webhook-Signature": signature}
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(headers, BODY)


@pytest.mark.parametrize("timestamp", ["soon", "12.5", "", "1e9"])
async def test_malformed_timestamp(emu: FalEmulator, verifier: WebhookVerifier, timestamp: str) -> None:
    headers = sign(emu.keyset.current) | {"X-Fal-Webhook-Timestamp": timestamp}
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(headers, BODY)


async def test_rotation_refetches_once_then_throttles(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        clock = FakeClock()
        keyring = JwksKeyring(emulator.jwks_url, http, min_refetch_interval_s=60, clock=clock)
        verifier = WebhookVerifier(keyring)
        await verifier.verify(sign(emulator.keyset.current), BODY)
        assert emulator.jwks_fetches == 1

        clock.now += 120  # past the refetch interval, well within the cache TTL
        emulator.rotate_key(keep_old=False)
        await verifier.verify(sign(emulator.keyset.current), BODY)  # unknown key -> one refetch -> valid
        assert emulator.jwks_fetches == 2

        clock.now += 10  # another unknown key inside the interval: rejected without a fetch
        with pytest.raises(WebhookSignatureError):
            await verifier.verify(sign(SigningKey.generate()), BODY)
        assert emulator.jwks_fetches == 2

        clock.now += 100  # the interval passed: the next unknown key may refetch again
        emulator.rotate_key(keep_old=True)
        await verifier.verify(sign(emulator.keyset.current), BODY)
        assert emulator.jwks_fetches == 3
        assert len(emulator.jwks()["keys"]) == 2


async def test_keep_old_key_in_jwks(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        old = emulator.keyset.current
        emulator.rotate_key(keep_old=True)
        verifier = WebhookVerifier(JwksKeyring(emulator.jwks_url, http))
        await verifier.verify(sign(old), BODY)
        await verifier.verify(sign(emulator.keyset.current), BODY)
        emulator.rotate_key(keep_old=False)
        assert [k["kid"] for k in emulator.jwks()["keys"]] == [emulator.keyset.current.kid]


async def test_concurrent_verifies_fetch_once(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        verifier = WebhookVerifier(JwksKeyring(emulator.jwks_url, http))
        headers = sign(emulator.keyset.current)
        results = await asyncio.gather(*(verifier.verify(headers, BODY) for _ in range(20)))
        assert {result.request_id for result in results} == {"r-1"} and emulator.jwks_fetches == 1
        # And a burst of unknown keys after rotation refetches once, not twenty times.
        emulator.rotate_key(keep_old=False)
        fetches = emulator.jwks_fetches
        forged = sign(SigningKey.generate())
        outcomes = await asyncio.gather(*(verifier.verify(forged, BODY) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(o, WebhookSignatureError) for o in outcomes)
        assert emulator.jwks_fetches == fetches  # inside the 60 s interval: no refetch at all

        # With the interval passed, twenty concurrent unknown signatures cause exactly one refetch.
        clock = FakeClock()
        keyring = JwksKeyring(emulator.jwks_url, http, min_refetch_interval_s=60, clock=clock)
        await keyring.keys()
        clock.now += 61
        emulator.rotate_key(keep_old=False)
        fetches = emulator.jwks_fetches
        fresh = sign(emulator.keyset.current)
        await asyncio.gather(*(WebhookVerifier(keyring).verify(fresh, BODY) for _ in range(20)))
        assert emulator.jwks_fetches == fetches + 1


async def test_jwks_down(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        emulator.jwks_available = False
        verifier = WebhookVerifier(JwksKeyring(emulator.jwks_url, http))
        with pytest.raises(JwksUnavailable):
            await verifier.verify(sign(emulator.keyset.current), BODY)
    unreachable = WebhookVerifier(JwksKeyring(closed_port_url(), http))
    with pytest.raises(JwksUnavailable) as info:
        await unreachable.verify(sign(SigningKey.generate()), BODY)
    assert not isinstance(info.value, WebhookSignatureError)


async def test_expired_cache_falls_back_to_known_keys_when_jwks_down(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        clock = FakeClock()
        verifier = WebhookVerifier(JwksKeyring(emulator.jwks_url, http, cache_ttl_s=100, clock=clock))
        await verifier.verify(sign(emulator.keyset.current), BODY)
        emulator.jwks_available = False
        clock.now += 1000
        await verifier.verify(sign(emulator.keyset.current), BODY)  # stale keys still verify
        # An unknown key while the JWKS is down: cannot tell, so "unavailable" (HTTP 503, fal retries).
        with pytest.raises(JwksUnavailable):
            await verifier.verify(sign(SigningKey.generate()), BODY)


def test_parse_jwks_skips_foreign_keys() -> None:
    key = SigningKey.generate()
    x_unpadded = base64.urlsafe_b64encode(key.public_raw).rstrip(b"=").decode()
    document = (
        '{"keys":['
        '{"kty":"RSA","n":"abc","e":"AQAB","kid":"rsa"},'
        '{"kty":"OKP","crv":"X25519","x":"%s"},'
        '{"kty":"OKP","crv":"Ed25519","x":"!!notbase64"},'
        '{"kty":"OKP","crv":"Ed25519","x":"%s","kid":"ok"}'
        "]}"
    ) % (x_unpadded, x_unpadded)
    keys = parse_jwks(document.encode())
    # The unpadded x of the kept key decodes to the very key: base64url padding is restored.
    assert [bytes(k) for k in keys] == [key.public_raw]
