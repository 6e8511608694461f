"""The object store that keeps our copies of outputs, through obstore.

obstore gives one API over a local folder, S3 (and R2, MinIO and other S3-compatible stores), GCS
and Azure: streaming uploads from an async iterator (multipart under the hood, written to a
staging file or upload that becomes visible only when complete, so no reader sees half a file),
range reads that stream, and deletes. `MEDIA_STORE_URL` chooses the store; unset, it is the local
`.media/` folder. Credentials for S3, GCS and Azure come from their usual environment variables
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_SERVICE_ACCOUNT`, …), which obstore reads itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, ObjectStore, from_url

CALL_TIMEOUT_S = 30.0
"""Every call that is not a stream: a head, a delete, opening a read."""

PART_BYTES = 5 * 1024 * 1024
"""Multipart part size (S3's minimum): with `PARTS_IN_FLIGHT` it bounds an upload's buffers."""
PARTS_IN_FLIGHT = 2
READ_CHUNK_BYTES = 1024 * 1024


class ObjectMissing(Exception):
    """The store has no object under that key."""


class MediaStore:
    def __init__(self, store: ObjectStore, *, description: str) -> None:
        self._store = store
        self.description = description
        """Where the bytes live, for log lines (no credentials)."""

    @classmethod
    def open(cls, url: str | None, local_dir: str) -> MediaStore:
        if url is None:
            return cls(LocalStore(Path(local_dir), mkdir=True, automatic_cleanup=True), description=local_dir)
        client_options: dict[str, object] = {"timeout": f"{int(CALL_TIMEOUT_S)}s", "connect_timeout": "5s"}
        if os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true":
            # A client option, which obstore does not take from the environment by itself: for a
            # local S3-compatible server (MinIO, the tests' moto) without TLS.
            client_options["allow_http"] = True
        if url.startswith("file://"):
            store = from_url(url, mkdir=True)
        elif url.startswith("memory://"):
            store = from_url(url)
        else:
            store = from_url(url, client_options=client_options)  # type: ignore[arg-type]
        return cls(store, description=url.split("?", 1)[0])

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Stream `chunks` into `key`. The object appears whole or not at all; memory stays
        within a few parts whatever the size. Stalls are the source's to time out."""
        await obstore.put_async(
            self._store, key, chunks, chunk_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT,
        )

    async def size(self, key: str) -> int:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                meta = await obstore.head_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return int(meta["size"])

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (exclusive) of `key`, streamed."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                result = await obstore.get_async(self._store, key, options={"range": (start, end)})
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return _with_timeout(result.stream(min_chunk_size=READ_CHUNK_BYTES))

    async def delete(self, key: str) -> None:
        """Remove `key`; a key already gone is no error."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await obstore.delete_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            pass

    async def keys(self, prefix: str) -> list[str]:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            batches = await obstore.list(self._store, prefix).collect_async()
        return sorted(meta["path"] for meta in batches)


async def _with_timeout(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        yield bytes(chunk)
