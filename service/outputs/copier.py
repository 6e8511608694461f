"""One copy: stream a file from fal's CDN into the store, hashing and counting as it passes.

Nothing holds the whole file: chunks go from the socket into the store's upload, which hashes
them (sha256) as it writes, so memory is a few chunks whatever the size. The outcome is an
`OutputChange` for the status machine (stored, or failed for good) or `CopyRetry` for a failure
worth another try.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import httpx

from service.jobs.models import OutputChange
from service.outputs.sources import SourcePolicy, SourceRefused

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.outputs.store import MediaStore

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
"""A source that sends nothing for this long is given up on (and retried later)."""
MAX_REDIRECTS = 3
ALLOWED_TYPES = ("image/", "video/", "audio/")
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream")
"""Sent by some CDNs for anything; then the kind the result named decides."""
_KIND_TYPES = {"image": "image/png", "video": "video/mp4", "audio": "audio/mpeg"}


_MEDIA_TYPE = re.compile(r"[a-z]+/[a-z0-9][a-z0-9.+-]{0,100}")


class CopyRetry(Exception):
    """A failure that may pass (a time-out, a 5xx, a reset): try again later. `store` tells a
    failure of our store (an outage, a full disk, expired credentials) from one of the source:
    they are retried on budgets of their own."""

    def __init__(self, message: str, *, store: bool = False) -> None:
        super().__init__(message)
        self.store = store


class _Failed(Exception):
    pass


class Copier:
    def __init__(self, http: httpx.AsyncClient, store: MediaStore, policy: SourcePolicy, *, max_bytes: int) -> None:
        self._http = http
        self._store = store
        self._policy = policy
        self._max_bytes = max_bytes

    async def copy(self, source_url: str, kind: str, key: str) -> OutputChange:
        try:
            return await self._copy(source_url, kind, key)
        except _Failed as failure:
            return OutputChange(status="failed", error=str(failure))
        except SourceRefused as refused:
            return OutputChange(status="failed", error=str(refused))
        except (httpx.TransportError, ConnectionError, TimeoutError) as error:
            raise CopyRetry(f"fetching the source failed: {type(error).__name__} {str(error)[:300]}".strip()) from None

    async def _copy(self, url: str, kind: str, key: str) -> OutputChange:
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        for _ in range(MAX_REDIRECTS + 1):
            await self._policy.check(url)
            # identity: the bytes stored are the file's own, never a transfer encoding of them.
            async with self._http.stream("GET", url, timeout=timeout, follow_redirects=False,
                                         headers={"Accept-Encoding": "identity"}) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])  # checked again before it is fetched
                    continue
                return await self._store_body(response, kind, key)
        raise _Failed(f"source redirected more than {MAX_REDIRECTS} times")

    async def _store_body(self, response: httpx.Response, kind: str, key: str) -> OutputChange:
        content_type = _accepted_type(response, kind)
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise _Failed(f"source is {int(declared)} bytes; MAX_OUTPUT_BYTES is {self._max_bytes}")
        size = 0
        source_error: Exception | None = None

        async def chunks() -> AsyncIterator[bytes]:
            # The store hashes what it writes; here the size is counted and bounded as it streams.
            nonlocal size, source_error
            try:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise _Failed(f"source sent more than MAX_OUTPUT_BYTES ({self._max_bytes} bytes)")
                    yield chunk
            except Exception as error:
                source_error = error
                raise

        try:
            sha256 = await self._store.put(key, chunks())
        except Exception as error:
            retry = _retry_for(error, source_error)
            if retry is None:
                raise  # copy() tells a failure for good from one worth another try
            raise retry from None
        if declared is not None and declared.isdigit() and int(declared) != size:
            try:
                await self._store.delete(key)
            except Exception as error:  # unreferenced: `outputs gc` finds it
                log.warning("could not remove a short copy", extra={"action": "outputs.copy", "key": key,
                                                                     "error": type(error).__name__})
            raise CopyRetry(f"source sent {size} of {declared} bytes")
        return OutputChange(status="stored", content_type=content_type, size=size, sha256=sha256,
                            store_key=key)


def _accepted_type(response: httpx.Response, kind: str) -> str:
    """The media type the copy is stored with, once the answer is a 200 of a kept kind: a
    transient status is worth another try, any other status or type fails the copy for good."""
    status = response.status_code
    if status in (408, 425, 429) or status >= 500:
        raise CopyRetry(f"source answered {status}")
    if status != 200:
        raise _Failed(f"source answered {status}: fal no longer has this file, or never had it")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in GENERIC_TYPES or not content_type:
        content_type = _KIND_TYPES.get(kind, content_type or "application/octet-stream")
    if not content_type.startswith(ALLOWED_TYPES) or not _MEDIA_TYPE.fullmatch(content_type):
        raise _Failed(f"source sent {content_type!r}; only image/*, video/* and audio/* are kept")
    return content_type


def _retry_for(error: Exception, source_error: Exception | None) -> CopyRetry | None:
    """What a failed upload raises: a retry (on the store's budget or the source's), or None for
    a source failure that copy() sorts itself. The store lets what the source raised through as it
    was: the source's failures are told from the store's by identity, not by type (both can be an
    OSError)."""
    if error is not source_error:
        return CopyRetry(f"writing to the store failed: {type(error).__name__}: {str(error)[:300]}", store=True)
    if isinstance(error, (_Failed, httpx.TransportError, ConnectionError, TimeoutError)):
        return None
    return CopyRetry(f"reading the source failed: {type(error).__name__}: {str(error)[:300]}")
