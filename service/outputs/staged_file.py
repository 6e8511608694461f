"""Uploads into the local folder store, past obstore: a staging file written from a worker thread
and renamed into place when whole.

Why: through obstore's put, the event loop that reads the socket also joined the chunks into
pieces, hashed them and handed them over, and obstore copied each piece again before writing it.
Here the loop only copies what the socket gives into 1 MiB buffers, up to four used in turn; one
worker thread hashes and writes each full buffer while the loop fills the next (hashlib and file
writes release the GIL). A second thread has the disk write what is already in the file while the
rest comes in (`_StagedFile._write_back`), so the sync at the end is short. docs/benchmarks.md has
the uploads and outputs benches' figures.

The guarantees are LocalStore's own: the file appears whole or not at all (written under a
staging name in the same folder, then `os.replace`d, atomic within one filesystem), and the
staging name, `<name>#<digits>`, is the form LocalStore gives its own uploads and leaves out of
listings. Reads, deletes and listings still go through obstore, so the path must be the one
LocalStore reads for the key: `local_path` answers only for keys LocalStore keeps as they are.
And it survives a power loss once the upload has returned (the database says `stored` after
that): the file's bytes are synced before the rename, and its folder (with any folder the upload
created, in its parent) after it, so the new name never points at a short or empty file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import re
import secrets
import threading
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from concurrent.futures import Executor, Future
    from pathlib import Path

BATCH_BYTES = 1024 * 1024
"""What the thread is handed at a time. Batches, not the socket's ~64 KiB chunks: each hand-off
wakes a thread and passes the GIL back and forth, which per chunk cost more CPU than the hashing
it moved off the loop; smaller batches measured dearer, larger ones no cheaper."""
BUFFERS = 4
"""Buffers of BATCH_BYTES an upload fills in turn, its memory bound: the loop fills one while the
thread works through the others, so a thread that is late (a busy machine) stalls the loop only
once all are full. With two (one filling, one being written) large copies fell behind the floor
from run to run; with four they kept up."""

WRITEBACK_BYTES = 8 * BATCH_BYTES
"""How much new data starts a flush to the disk (see `_StagedFile._write_back`)."""

SPARE_BUFFERS = BUFFERS
"""Buffers a process keeps for later uploads once one ends: a fresh buffer pays its page faults as
it is first filled, a visible share of a small copy."""
_SPARE: list[memoryview] = []
"""Taken and given back only on the event loop's thread."""

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
"""Keys whose parts obstore's LocalStore keeps as they are (it percent-encodes others, and
refuses `.` and `..`): for these, `<root>/<key>` is the file LocalStore reads."""


def local_path(root: Path, key: str) -> Path | None:
    """Where LocalStore rooted at `root` (an absolute, resolved path) keeps `key`; None for a key
    that LocalStore would encode, which then goes through obstore."""
    return root.joinpath(*key.split("/")) if _PLAIN_KEY.fullmatch(key) else None


def _sync_and_drop(descriptor: int, start: int, end: int) -> None:
    """Bytes up to `end` to the disk, then `start:end` out of the page cache (those before were
    dropped by the flush before)."""
    try:
        os.fdatasync(descriptor)
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):  # advice only
                os.posix_fadvise(descriptor, start, end - start, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


class _StagedFile:
    """The thread's side. Every step holds the lock, so a discard that follows a step still in
    flight (the loop stopped waiting: cancelled, timed out) waits for it, and no step follows."""

    sync: Callable[[int], None] = staticmethod(os.fsync)
    """How a file descriptor's data reaches the disk (a seam for the tests to record the order)."""

    def __init__(self, path: Path, threads: Executor | None = None) -> None:
        self.path = path
        self._threads = threads
        """Where the early flushes run (see `_write_back`); None: all of it at the commit."""
        self._flushing: Future[None] | None = None
        self._flushing_descriptor = -1
        self._folders: list[Path] = []
        """Folders whose entries must reach the disk after the rename: the file's own, and the
        parent of each folder this upload created."""
        self.staging = path.with_name(f"{path.name}#{secrets.randbelow(10**16)}")
        self.digest = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._written = 0
        self._flushed = 0
        """Bytes written, and how many of them a flush has been started for."""
        self._discarded = False
        self._committed = False
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._discarded:
                raise RuntimeError("the upload was abandoned")
            for tries_left in (1, 0):
                folder, created = self.path.parent, []
                while not folder.exists() and folder != folder.parent:
                    created.append(folder)
                    folder = folder.parent
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._folders = [self.path.parent, *(new.parent for new in created)]
                try:
                    self._file = open(self.staging, "xb")  # noqa: SIM115 (closed by commit or discard)
                    return
                except FileNotFoundError:
                    # A delete in LocalStore's automatic cleanup took the (empty) folder meanwhile.
                    if not tries_left:
                        raise

    def write(self, batch: memoryview) -> None:
        with self._lock:
            if self._file is None:
                raise RuntimeError("the staging file is not open")
            self.digest.update(batch)
            self._file.write(batch)
            self._written += batch.nbytes
            if self._written - self._flushed >= WRITEBACK_BYTES:
                self._write_back()

    def _write_back(self) -> None:
        """Have the disk write what we have so far while more comes in, so the sync at the end
        waits for the last few MiB, not the whole file (on a 500 MB upload the sync had been
        most of the time). An fdatasync in a thread of its own, one at a time, on a duplicate of
        the descriptor that the job closes: asking the kernel to start writing instead
        (POSIX_FADV_DONTNEED or sync_file_range, no wait) stopped helping whenever both CPUs were
        busy, and uploads keep them busy. Its pages are then dropped: an upload is not read back
        soon. A flush that failed fails the upload (its error is reported once, to it)."""
        if self._threads is None or self._file is None:
            return
        if self._flushing is not None:
            if not self._flushing.done():
                return  # one at a time: the next batch asks again
            self._flushing.result()
        self._file.flush()
        descriptor = os.dup(self._file.fileno())
        try:
            self._flushing = self._threads.submit(_sync_and_drop, descriptor, self._flushed, self._written)
        except BaseException:
            os.close(descriptor)
            raise
        self._flushing_descriptor = descriptor
        self._flushed = self._written

    def _end_writeback(self, *, wait: bool) -> None:
        """A flush not yet started is called off (its descriptor closed here): with every thread
        busy writing, waiting for it could wait for ever. One in progress is waited for when
        `wait`, and its error raised."""
        flushing, self._flushing = self._flushing, None
        if flushing is None:
            return
        if flushing.cancel():
            os.close(self._flushing_descriptor)
        elif wait:
            flushing.result()

    def commit(self) -> None:
        with self._lock:
            if self._file is None:
                raise RuntimeError("the staging file is not open")
            self._end_writeback(wait=True)
            self._file.flush()
            self.sync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.staging, self.path)
            self._committed = True
            for folder in dict.fromkeys(self._folders):
                descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    self.sync(descriptor)
                finally:
                    os.close(descriptor)

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            self._end_writeback(wait=False)
            if self._file is not None:
                self._file.close()
                self._file = None
            self.staging.unlink(missing_ok=True)
            if self._committed:
                # Renamed into place just as the loop gave up waiting (a time-out): the copy
                # counts as failed, so its object must not stay visible. The key is this
                # upload's own (one per claim), so nothing else is lost.
                self.path.unlink(missing_ok=True)


async def write_staged(path: Path, chunks: AsyncIterator[bytes], threads: Executor, *, timeout_s: float) -> str:
    """Write `chunks` to `path`, whole or not at all, and answer their sha256 (hex). Every wait
    of the loop on the thread (for a free buffer, for the last batches and the rename) is bounded
    by `timeout_s`; stalls of the source are the source's to time out."""
    upload = _Upload(path, threads, timeout_s)
    try:
        await upload.send(chunks)
        async with asyncio.timeout(timeout_s):
            await upload.writing
    except BaseException:
        await upload.abandon()
        raise
    upload.keep_buffers()
    return upload.staged.digest.hexdigest()


class _Upload:
    """The loop's side of one upload: it fills the buffers in turn and hands each full one to the
    thread's job (`_write_batches`), which gives it back once written."""

    def __init__(self, path: Path, threads: Executor, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.staged = _StagedFile(path, threads)
        self.threads = threads
        self.timeout_s = timeout_s
        self.batches: queue.SimpleQueue[memoryview | bool] = queue.SimpleQueue()  # True: commit, False: stop
        self.free: asyncio.Queue[memoryview | None] = asyncio.Queue()  # None: the thread has stopped
        self.buffers: list[memoryview] = []
        # Last: the thread's job reads the attributes above.
        self.writing = self.loop.run_in_executor(threads, self._write_batches)

    def _write_batches(self) -> None:
        """The thread's side, one job for the whole upload (a small file costs one hand-off
        each way, not one per step): open, write the batches in order, giving each buffer back
        once written, and rename into place when told to."""
        try:
            self.staged.open()
            while (batch := self.batches.get()) is not False:
                if batch is True:
                    self.staged.commit()
                    return
                self.staged.write(batch)
                if batch.nbytes == BATCH_BYTES:  # a whole buffer; a shorter batch is the last
                    self.loop.call_soon_threadsafe(self.free.put_nowait, batch)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self.loop.call_soon_threadsafe(self.free.put_nowait, None)

    async def _next_buffer(self) -> memoryview:
        try:
            buffer = self.free.get_nowait()
        except asyncio.QueueEmpty:
            if len(self.buffers) < BUFFERS:  # taken as needed: a small file needs one
                self.buffers.append(_SPARE.pop() if _SPARE else memoryview(bytearray(BATCH_BYTES)))
                return self.buffers[-1]
            async with asyncio.timeout(self.timeout_s):
                buffer = await self.free.get()  # all full: the thread is behind
        if buffer is None:
            await self.writing  # its error
            raise RuntimeError("the staging file's writer stopped")
        return buffer

    async def send(self, chunks: AsyncIterator[bytes]) -> None:
        """Every chunk to the thread in whole batches, then the word to commit."""
        buffer, filled = await self._next_buffer(), 0
        async for chunk in chunks:
            # Into the buffer, and on into the next when it is full: whatever the chunks' sizes,
            # the thread gets whole 1 MiB batches and the upload never holds more than its buffers.
            rest = memoryview(chunk)
            while rest:
                piece = rest[:BATCH_BYTES - filled]
                buffer[filled:filled + len(piece)] = piece
                filled += len(piece)
                rest = rest[len(piece):]
                if filled == BATCH_BYTES:
                    self.batches.put(buffer)
                    buffer, filled = await self._next_buffer(), 0
        if filled:
            self.batches.put(buffer[:filled])
        self.batches.put(True)

    async def abandon(self) -> None:
        """Whatever stopped the upload (the source, a time-out, cancellation), the thread stops
        and the staging file goes: waited for (a second cancellation does not skip it), so none
        is left behind. The discard waits for a step in progress, and no step follows."""
        self.batches.put(False)
        self.writing.add_done_callback(lambda done: done.cancelled() or done.exception())  # expected, not news
        with contextlib.suppress(Exception, asyncio.CancelledError):
            discard = self.loop.run_in_executor(self.threads, self.staged.discard)
            await asyncio.wait_for(asyncio.shield(discard), self.timeout_s)

    def keep_buffers(self) -> None:
        """The thread is done with the buffers: later uploads reuse them (not after a failure,
        when the thread may still be writing one)."""
        _SPARE.extend(self.buffers[:SPARE_BUFFERS - len(_SPARE)])
