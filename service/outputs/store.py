"""The object store that keeps our copies of outputs, through obstore.

obstore gives one API over a local folder, S3 (and R2, MinIO and other S3-compatible stores), GCS
and Azure: streaming multipart uploads (written to a staging file or upload that becomes visible
only when complete, so no reader sees half a file), range reads that stream, and deletes.
`MEDIA_STORE_URL` chooses the store; unset, it is the local `.media/` folder. Credentials for S3,
GCS and Azure come from their usual environment variables (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, `GOOGLE_SERVICE_ACCOUNT`, …), which obstore reads itself.

We call obstore's synchronous API in threads of our own rather than its asyncio one: a process
that has awaited obstore's coroutines sometimes aborts (SIGABRT) at interpreter exit (obstore
0.12.1, seen with a bare put), which would make every shutdown a gamble; the synchronous calls
never did. Bytes still stream: an upload's thread pulls pieces that
the event loop hands it (obstore_upload.py), a read's pieces are pulled one at a time.

Uploads into a local folder (the default) skip obstore: a thread of ours hashes and writes a
staging file that is then renamed to where LocalStore keeps the key (staged_file.py says why).
Reads, deletes and listings go through obstore for every store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, ObjectStore, from_url

from service.outputs.obstore_upload import upload
from service.outputs.staged_file import local_path, write_staged

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

    from obstore.store import ClientConfig

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
"""Every call that is not a stream: a head, a delete, opening a read."""

READ_CHUNK_BYTES = 256 * 1024
"""The most a read hands on at once: a download whose client reads nothing pins about one piece in
memory (plus what the socket buffers), so the piece is kept small."""
THREADS = 64
"""Each upload holds a thread for its length, each read one per piece: enough for both at once."""
LIST_BATCH = 1000
"""Objects a listing hands over at a time."""
_STAGING_NAME = re.compile(r".+#[0-9]+")
"""The name of an upload in progress in a local folder (ours and LocalStore's own)."""


class ObjectMissing(Exception):
    """The store has no object under that key."""


class StoredObject(msgspec.Struct, frozen=True):
    key: str
    size: int
    last_modified: datetime


class MediaStore:
    def __init__(self, store: ObjectStore, *, description: str, local_root: Path | None = None) -> None:
        self._store = store
        self._local_root = local_root
        """The folder of a LocalStore: uploads there skip obstore (see staged_file.py)."""
        self._threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="media-store")
        self.description = description
        """Where the bytes live, for log lines (no credentials)."""

    @classmethod
    def open(cls, url: str | None, local_dir: str) -> MediaStore:
        if url is None:
            # Resolved once, as LocalStore does: the staged uploads must land where it reads.
            root = Path(local_dir).resolve()
            store: ObjectStore = LocalStore(root, mkdir=True, automatic_cleanup=True)
            return cls(store, description=local_dir, local_root=root)
        client_options: ClientConfig = {"timeout": f"{int(CALL_TIMEOUT_S)}s", "connect_timeout": "5s"}
        if os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true":
            # A client option, which obstore does not take from the environment by itself: for a
            # local S3-compatible server (MinIO, the tests' moto) without TLS.
            client_options["allow_http"] = True
        if url.startswith("file://"):
            store = from_url(url, mkdir=True)
        elif url.startswith("memory://"):
            store = from_url(url)
        else:
            store = from_url(url, client_options=client_options)
        local_root = Path(store.prefix) if isinstance(store, LocalStore) and store.prefix is not None else None
        return cls(store, description=url.split("?", 1)[0], local_root=local_root)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await loop.run_in_executor(self._threads, partial(function, *args, **kwargs))

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> str:
        """Stream `chunks` into `key` and answer their sha256 (hex). The object appears whole or
        not at all; memory stays within a few parts whatever the size. Stalls are the source's
        to time out."""
        if self._local_root is not None and (path := local_path(self._local_root, key)) is not None:
            return await write_staged(path, chunks, self._threads, timeout_s=CALL_TIMEOUT_S)
        return await upload(self._store, key, chunks, self._threads)

    async def size(self, key: str) -> int:
        try:
            meta = await self._call(obstore.head, self._store, key)
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return int(meta["size"])

    async def read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes `start` to `end` (exclusive) of `key`, streamed in pieces of at most READ_CHUNK_BYTES."""
        try:
            result = await self._call(obstore.get, self._store, key, options={"range": (start, end)})
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(key) from None
        return self._pieces(iter(result.stream(min_chunk_size=READ_CHUNK_BYTES)))

    async def _pieces(self, stream: Iterator[Any]) -> AsyncGenerator[bytes, None]:
        done = object()
        while (chunk := await self._call(next, stream, done)) is not done:
            data = bytes(chunk)
            del chunk  # one copy of the piece stays while the client takes it, not two
            if len(data) <= READ_CHUNK_BYTES:
                yield data
                continue
            for offset in range(0, len(data), READ_CHUNK_BYTES):  # min_chunk_size is only a floor
                yield data[offset:offset + READ_CHUNK_BYTES]

    async def delete(self, key: str) -> None:
        """Remove `key`; a key already gone is no error."""
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            await self._call(obstore.delete, self._store, key)

    async def keys(self, prefix: str) -> list[str]:
        metas = await self._call(lambda: obstore.list(self._store, prefix).collect())
        return sorted(meta["path"] for meta in metas)

    async def objects(self, prefix: str) -> AsyncIterator[list[StoredObject]]:
        """Every object under `prefix`, in batches (a store holds more than memory should)."""
        stream = await self._call(lambda: iter(obstore.list(self._store, prefix, chunk_size=LIST_BATCH)))
        done = object()
        while (batch := await self._call(next, stream, done)) is not done:
            yield [StoredObject(key=meta["path"], size=int(meta["size"]), last_modified=meta["last_modified"])
                   for meta in batch]

    async def remove_staging_leftovers(self, prefix: str, older_than_s: float) -> list[str]:
        """Staging files of a local folder store (`<name>#<digits>`, left by a process that was
        killed mid-upload; listings do not show them) last written more than `older_than_s` ago:
        removed, and their paths (relative to the folder) answered. Nothing for other stores."""
        if self._local_root is None:
            return []
        root = self._local_root
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, _remove_staging, root, root / prefix, older_than_s)


def _remove_staging(root: Path, folder: Path, older_than_s: float) -> list[str]:
    before = time.time() - older_than_s
    removed: list[str] = []
    for directory, _, names in os.walk(folder):
        for name in names:
            if not _STAGING_NAME.fullmatch(name):
                continue
            path = Path(directory, name)
            try:
                if path.stat().st_mtime < before:
                    path.unlink()
                    removed.append(str(path.relative_to(root)))
            except FileNotFoundError:
                pass  # finished or discarded meanwhile
    return removed
