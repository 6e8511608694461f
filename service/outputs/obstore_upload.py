"""An upload through obstore (S3, GCS, Azure; a local folder for keys it would encode): its
synchronous multipart put in a thread (store.py says why not its asyncio API), fed from the event
loop, hashing on the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

import obstore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from concurrent.futures import Executor

    from obstore.store import ObjectStore

PART_BYTES = 5 * 1024 * 1024
"""Multipart part size (S3's minimum): with `PARTS_IN_FLIGHT` it bounds an upload's buffers."""
PARTS_IN_FLIGHT = 2
PIECE_BYTES = 256 * 1024
"""What obstore's put is handed at a time (see `_hashed_pieces`)."""
QUEUED_PIECES = 8
"""Pieces waiting for an upload's thread: with the parts in flight, an upload's memory bound."""


async def upload(store: ObjectStore, key: str, chunks: AsyncIterator[bytes], threads: Executor) -> str:
    """Stream `chunks` into `key` and answer their sha256 (hex). obstore makes the object visible
    only once complete; when the source fails or the upload is cancelled, its put is abandoned."""
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()
    pieces = _Handoff(loop, QUEUED_PIECES)
    putting = loop.run_in_executor(
        threads, partial(obstore.put, store, key, pieces.drain(), chunk_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT),
    )
    try:
        async for piece in _hashed_pieces(chunks, digest.update):
            await pieces.put(piece, putting)
        pieces.end()
    except BaseException as error:
        # obstore abandons the upload when its source raises: nothing becomes visible.
        pieces.abort(RuntimeError(f"upload abandoned: {type(error).__name__}"))
        putting.add_done_callback(lambda done: done.cancelled() or done.exception())  # expected, not news
        raise
    await putting
    return digest.hexdigest()


class _Handoff:
    """Pieces from the loop to an upload's thread, at most `capacity` waiting. The loop never
    blocks: when the queue is full it awaits a future that the thread completes once the queue
    has drained to half, one wake-up per few pieces and none while the loop keeps up. (Polling on
    a timer instead measured no cheaper and left the loop idle while the queue sat full.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._items: deque[bytes | BaseException | None] = deque()  # None ends the upload
        self._changed = threading.Condition()
        self._space: asyncio.Future[None] | None = None

    async def put(self, piece: bytes, putting: asyncio.Future[Any]) -> None:
        while True:
            with self._changed:
                if len(self._items) < self._capacity:
                    self._items.append(piece)
                    self._changed.notify()
                    return
                self._space = space = self._loop.create_future()
            await asyncio.wait((space, putting), return_when=asyncio.FIRST_COMPLETED)
            if putting.done():
                await putting  # the upload failed: its error, not a wait forever
                raise RuntimeError("the upload ended before its last piece")

    def end(self) -> None:
        with self._changed:
            self._items.append(None)  # after the pieces: the queue may hold capacity + 1
            self._changed.notify()

    def abort(self, error: BaseException) -> None:
        with self._changed:
            self._items.clear()
            self._items.append(error)
            self._changed.notify()

    def drain(self) -> Iterator[bytes]:
        """The thread's side: what obstore's put reads."""
        while True:
            with self._changed:
                while not self._items:
                    self._changed.wait()
                item = self._items.popleft()
                if self._space is not None and len(self._items) <= self._capacity // 2:
                    self._loop.call_soon_threadsafe(_set_once, self._space)
                    self._space = None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _hashed_pieces(chunks: AsyncIterator[bytes], hash_: Callable[[bytes], None]) -> AsyncIterator[bytes]:
    """The socket's ~64 KiB chunks in pieces of PIECE_BYTES, hashed on the way. Each piece
    crosses from asyncio into obstore, so fewer, larger ones cost less (bench/outputs.py chose
    PIECE_BYTES as the cheapest size per GB). Hashed here, on the
    loop: in the upload's thread it measured slower, as obstore copies each piece again there."""
    pending: list[bytes] = []
    pending_bytes = 0
    async for chunk in chunks:
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= PIECE_BYTES:
            piece = b"".join(pending)
            pending.clear()
            pending_bytes = 0
            hash_(piece)
            yield piece
    if pending:
        piece = b"".join(pending)
        hash_(piece)
        yield piece
