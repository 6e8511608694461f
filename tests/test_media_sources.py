"""The copier's exception for the mounted emulator covers its media and nothing else of its
origin: the same scheme, host and port, and a path below the media base that no `..` leaves."""

from __future__ import annotations

import pytest

from service.outputs.sources import SourcePolicy, SourceRefused

BASE = "http://127.0.0.1:8123/fal-emulator/media"


@pytest.mark.parametrize("url", [
    f"{BASE}/image/64x48/7.png",
    f"{BASE}/video/abc.mp4?fal_emulator_ttl=1",
    "HTTP://127.0.0.1:8123/fal-emulator/media/image/1x1/1.png",
])
async def test_the_emulators_media_is_fetched(url: str) -> None:
    policy = SourcePolicy(("fal.media",), emulator_media_base=BASE)
    assert policy.is_emulator(url) and policy.allows_redirect(url)
    await policy.check(url)


@pytest.mark.parametrize("url", [
    # The review's URL: `..` leads from the media base to the origin's root (httpx resolves it).
    f"{BASE}/../.well-known/jwks.json?",
    f"{BASE}/../../api/jobs",
    f"{BASE}/image/../../x",
    f"{BASE}/%2e%2e/.well-known/jwks.json",
    f"{BASE}/%2E%2e/x",
    f"{BASE}/.%2e/x",
    f"{BASE}/..%2fx",
    f"{BASE}/..\\x",
    f"{BASE}/./x",
    "http://127.0.0.1:8123/fal-emulator/mediax/image/1.png",  # a prefix of the name, not of the path
    "http://127.0.0.1:8124/fal-emulator/media/image/1.png",  # another port
    "https://127.0.0.1:8123/fal-emulator/media/image/1.png",  # another scheme
    "http://localhost:8123/fal-emulator/media/image/1.png",  # another host name
    "http://127.0.0.1:8123@evil.example/fal-emulator/media/image/1.png",
    "http://user:pw@127.0.0.1:8123/fal-emulator/media/image/1.png",
    "http://127.0.0.1:port/fal-emulator/media/image/1.png",
])
async def test_nothing_else_of_its_origin_is(url: str) -> None:
    policy = SourcePolicy(("fal.media",), emulator_media_base=BASE)
    assert not policy.is_emulator(url)
    assert not policy.allows_redirect(url)
    with pytest.raises(SourceRefused):
        await policy.check(url)


async def test_without_an_emulator_there_is_no_exception() -> None:
    policy = SourcePolicy(("fal.media",))
    assert not policy.is_emulator(f"{BASE}/image/1x1/1.png")
    with pytest.raises(SourceRefused):
        await policy.check(f"{BASE}/image/1x1/1.png")
