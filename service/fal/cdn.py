"""fal's CDN for input files, reached the way fal-client's `upload` reaches it: a storage token
from fal's REST API (`POST {rest}/storage/auth/token?storage_type=fal-cdn-v3`, `Authorization: Key`,
body `{}`), kept until it expires, then the bytes to `POST {cdn}/files/upload` with
`Authorization: <token_type> <token>`, which answers the file's `access_url`. fal-client holds both
base URLs as constants; we call the same endpoints ourselves so FAL_REST_URL and FAL_CDN_URL (and
the emulator) are honoured. fal-client goes multipart above 100 MiB; one request is sent here
(uploads are at most MAX_UPLOAD_BYTES, 50 MiB by default)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING

import fal_client
import httpx
import msgspec

from service.errors import UpstreamError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TOKEN_MARGIN_S = 60.0
"""A token this close to its expiry is renewed first."""
UPLOAD_TIMEOUT = httpx.Timeout(30.0, write=120.0)


class _Token(msgspec.Struct, frozen=True):
    token: str
    token_type: str
    expires_at: float


class FalCdn:
    def __init__(self, *, key: str, rest_url: str, cdn_url: str, expiry_s: int | None) -> None:
        self._key = key
        self._rest_url = rest_url
        self._cdn_url = cdn_url
        self._expiry_s = expiry_s
        self._http = httpx.AsyncClient(timeout=UPLOAD_TIMEOUT, headers={"User-Agent": fal_client.client.USER_AGENT})
        self._token: _Token | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _storage_token(self) -> _Token:
        async with self._lock:
            if self._token is None or self._token.expires_at - TOKEN_MARGIN_S < time.time():
                response = await self._http.post(
                    f"{self._rest_url}/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={},
                    headers={"Authorization": f"Key {self._key}", "Accept": "application/json"})
                if response.status_code != 200:
                    raise UpstreamError(f"fal storage token: fal answered {response.status_code}; retry later")
                data = response.json()
                self._token = _Token(token=data["token"], token_type=data["token_type"],
                                     expires_at=datetime.fromisoformat(data["expires_at"]).timestamp())
            return self._token

    async def upload(self, chunks: AsyncIterator[bytes], *, size: int, content_type: str, file_name: str) -> str:
        """Stream `size` bytes to fal's CDN; answers the file's `access_url`."""
        token = await self._storage_token()
        headers = {"Authorization": f"{token.token_type} {token.token}", "Content-Type": content_type,
                   "Content-Length": str(size), "X-Fal-File-Name": file_name}
        if self._expiry_s is not None:
            # fal-client sends both: the CDN reads the first, storage-backed uploads the second.
            lifecycle = json.dumps({"expiration_duration_seconds": self._expiry_s})
            headers["X-Fal-Object-Lifecycle"] = headers["X-Fal-Object-Lifecycle-Preference"] = lifecycle
        try:
            response = await self._http.post(f"{self._cdn_url}/files/upload", content=chunks, headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"fal CDN upload: {type(exc).__name__}; retry later") from None
        if response.status_code != 200:
            raise UpstreamError(f"fal CDN upload: fal answered {response.status_code}; retry later")
        return str(response.json()["access_url"])
