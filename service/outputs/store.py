"""The object store that keeps our copies of outputs, through obstore.

obstore gives one API over a local folder, S3 (and R2, MinIO and other S3-compatible stores), GCS
and Azure: streaming multipart uploads (written to a staging file or upload that becomes visible
only when complete, so no reader sees half a file), range reads that stream, and deletes.
`MEDIA_STORE_URL` chooses the store; unset, it is the local `.media/` folder. Credentials for S3,
GCS and Azure come from their usual environment variables (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, `GOOGLE_SERVICE_ACCOUNT`, …), which obstore reads itself.

We call obstore's synchronous API in threads of our own rather than its asyncio one: a process
that has awaited obstore's coroutines aborts (SIGABRT) at interpreter exit about one time in ten
(obstore 0.12.1, measured with a bare put), which would make every shutdown a coin toss; the
synchronous calls never did (0 in 30). Bytes still stream: an upload's thread pulls pieces from a
small queue that the event loop fills, a read's pieces are pulled one at a time.
"""

from __future__ import annotations

import asyncio
import os
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, ObjectStore, from_url

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
"""Every call that is not a stream: a head, a delete, opening a read."""

PART_BYTES = 5 * 1024 * 1024
"""Multipart part size (S3's minimum): with `PARTS_IN_FLIGHT` it bounds an upload's buffers."""
PARTS_IN_FLIGHT = 2
READ_CHUNK_BYTES = 1024 * 1024
QUEUED_PIECES = 8
"""Pieces waiting for an upload's thread: with the parts in flight, an upload's memory bound."""
THREADS = 64
"""Each upload holds a thread for its length, each read one per piece: enough for both at once."""


class _End:
    pass


class _Abort:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ObjectMissing(Exception):
    """The store has no object under that key."""


class MediaStore:
    def __init__(self, store: ObjectStore, *, description: str) -> None:
        self._store = store
        self._threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="media-store")
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

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await loop.run_in_executor(self._threads, partial(function, *args, **kwargs))

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Stream `chunks` into `key`. The object appears whole or not at all; memory stays
        within a few parts whatever the size. Stalls are the source's to time out."""
        pieces: queue.Queue[bytes | _End | _Abort] = queue.Queue(maxsize=QUEUED_PIECES)

        def source() -> Iterator[bytes]:
            while True:
                item = pieces.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Abort):
                    raise item.error  # obstore abandons the upload: nothing becomes visible
                yield item

        upload = asyncio.get_running_loop().run_in_executor(
            self._threads,
            partial(obstore.put, self._store, key, source(), chunk_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT),
        )

        async def offer(item: bytes | _End) -> None:
            while True:
                try:
                    pieces.put_nowait(item)
                    return
                except queue.Full:
                    if upload.done():
                        await upload  # the upload failed: its error, not a wait forever
                        raise RuntimeError("the upload ended before its last piece") from None
                    await asyncio.wait({upload}, timeout=0.005)

        try:
            async for piece in chunks:
                await offer(piece)
            await offer(_End())
        except BaseException as error:
            with pieces.mutex:
                pieces.queue.clear()
            pieces.put_nowait(_Abort(RuntimeError(f"upload abandoned: {type(error).__name__}")))
            upload.add_done_callback(lambda done: done.cancelled() or done.exception())  # expected, not news
            raise
        await upload

    async def size(self, key: str) -> int:
        try:
            meta = await self._call(obstore.head, self._store, key)
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return int(meta["size"])

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (exclusive) of `key`, streamed."""
        try:
            result = await self._call(obstore.get, self._store, key, options={"range": (start, end)})
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return self._pieces(iter(result.stream(min_chunk_size=READ_CHUNK_BYTES)))

    async def _pieces(self, stream: Iterator[Any]) -> AsyncIterator[bytes]:
        done = object()
        while (chunk := await self._call(next, stream, done)) is not done:
            yield bytes(chunk)

    async def delete(self, key: str) -> None:
        """Remove `key`; a key already gone is no error."""
        try:
            await self._call(obstore.delete, self._store, key)
        except (NotFoundError, FileNotFoundError):
            pass

    async def keys(self, prefix: str) -> list[str]:
        metas = await self._call(lambda: obstore.list(self._store, prefix).collect())
        return sorted(meta["path"] for meta in metas)
