"""The media store's uploads on their own: the local folder's staged file (written from a thread,
renamed into place) lands where obstore's LocalStore reads it, and a failed, cancelled or stalled
upload leaves nothing behind, neither the object nor its staging file; obstore's own upload (the
path for S3, GCS and Azure) answers the same sha256 and leaves nothing when abandoned either."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.outputs import staged_file
from service.outputs.obstore_upload import PART_BYTES
from service.outputs.staged_file import local_path, write_staged
from service.outputs.store import MediaStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "outputs/req-1/0-abc123"


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def sample(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


async def read_all(store: MediaStore, key: str) -> bytes:
    size = await store.size(key)
    return b"".join([chunk async for chunk in await store.read(key, 0, size)])


async def test_local_path_only_for_keys_localstore_keeps_as_they_are(tmp_path: Path) -> None:
    assert local_path(tmp_path, KEY) == tmp_path / "outputs" / "req-1" / "0-abc123"
    for odd in ("../escape", "a/../b", "a/./b", ".hidden/x", "a//b", "/abs", "a b", "a#1", "ä", ""):
        assert local_path(tmp_path, odd) is None, odd


async def test_local_upload_lands_where_obstore_reads_it(tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))
    # More batches than buffers (each is written and reused), the last one partial.
    data = sample((staged_file.BUFFERS + 3) * staged_file.BATCH_BYTES + 12345)
    try:
        assert await store.put(KEY, pieces(data)) == hashlib.sha256(data).hexdigest()
        assert files_in(tmp_path) == [KEY]  # no staging file left beside it
        assert await store.keys("outputs/req-1") == [KEY]
        assert await read_all(store, KEY) == data
        # A chunk larger than a buffer is spread over several.
        big = sample(staged_file.BATCH_BYTES * 2 + 1)
        assert await store.put("outputs/req-1/1-big", pieces(big, len(big))) == hashlib.sha256(big).hexdigest()
        assert await read_all(store, "outputs/req-1/1-big") == big
        # A key LocalStore would encode goes through obstore, and reads back the same way.
        odd = "outputs/req 2/0-ä#x"
        assert await store.put(odd, pieces(b"odd bytes")) == hashlib.sha256(b"odd bytes").hexdigest()
        assert await read_all(store, odd) == b"odd bytes"
        await store.delete(KEY)
        assert await store.keys("outputs/req-1") == ["outputs/req-1/1-big"]
    finally:
        store.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_disk_writes_while_the_upload_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every WRITEBACK_BYTES a flush runs in a thread of its own, each on a duplicate descriptor
    that it closes; the file is whole either way."""
    flushes: list[tuple[int, int, bool]] = []
    real = staged_file._sync_and_drop

    def recording(descriptor: int, start: int, end: int) -> None:
        flushes.append((start, end, threading.current_thread() is threading.main_thread()))
        real(descriptor, start, end)

    monkeypatch.setattr(staged_file, "_sync_and_drop", recording)
    store = MediaStore.open(None, str(tmp_path))
    data = sample(3 * staged_file.WRITEBACK_BYTES + 5)
    try:
        before = open_descriptors()
        assert await store.put(KEY, pieces(data, 256 * 1024)) == hashlib.sha256(data).hexdigest()
        assert open_descriptors() == before
        assert await read_all(store, KEY) == data
    finally:
        store.close()
    assert flushes and not any(on_loop for *_, on_loop in flushes)
    # Windows one after another from the start, none past the end.
    assert flushes[0][0] == 0 and all(end > start for start, end, _ in flushes)
    assert all(later[0] == earlier[1] for earlier, later in itertools.pairwise(flushes))
    assert flushes[-1][1] <= len(data)


async def test_a_flush_with_no_thread_to_run_it_is_called_off(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every thread busy writing uploads (here the only one): the flushes wait in the queue, and the
    commit calls them off (closing their descriptors) instead of waiting for them for ever."""
    ran: list[int] = []
    monkeypatch.setattr(staged_file, "_sync_and_drop", lambda descriptor, start, end: ran.append(end))
    data = sample(3 * staged_file.WRITEBACK_BYTES)
    path = tmp_path / "outputs" / "x"
    with ThreadPoolExecutor(max_workers=1) as only_one:
        before = open_descriptors()
        async with asyncio.timeout(30):
            digest = await write_staged(path, pieces(data, 256 * 1024), only_one, timeout_s=10)
        assert open_descriptors() == before
    assert digest == hashlib.sha256(data).hexdigest() and path.read_bytes() == data
    assert ran == []


async def test_a_failed_flush_fails_the_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk's error reaches the flush's fdatasync, and Linux reports it once: to it. So the
    upload must fail with it, not trust the final sync."""

    def failing(descriptor: int, start: int, end: int) -> None:
        os.close(descriptor)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(staged_file, "_sync_and_drop", failing)
    store = MediaStore.open(None, str(tmp_path))
    try:
        with pytest.raises(OSError, match="Input/output error"):
            await store.put(KEY, pieces(sample(staged_file.WRITEBACK_BYTES + 100)))
        assert files_in(tmp_path) == []
    finally:
        store.close()


async def test_buffers_are_reused_only_after_a_whole_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staged_file, "_SPARE", [])
    store = MediaStore.open(None, str(tmp_path))
    try:
        first = sample(staged_file.BATCH_BYTES + 10)
        await store.put("outputs/a/0-x", pieces(first))
        assert len(staged_file._SPARE) == 2
        await store.put("outputs/a/1-x", pieces(b"short"))  # into a reused buffer that held `first`
        assert await read_all(store, "outputs/a/1-x") == b"short"
        assert await read_all(store, "outputs/a/0-x") == first

        async def broken() -> AsyncIterator[bytes]:
            yield b"some"
            raise ConnectionResetError

        with pytest.raises(ConnectionResetError):
            await store.put("outputs/a/2-x", broken())
        assert len(staged_file._SPARE) == 1  # the failed upload's buffer may still be in the thread's hands
    finally:
        store.close()


async def test_a_failing_source_leaves_nothing(tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in pieces(sample(staged_file.BATCH_BYTES * 2 + 5)):
            yield chunk
        raise ConnectionResetError("the source went away")

    try:
        with pytest.raises(ConnectionResetError):
            await store.put(KEY, broken())
        assert files_in(tmp_path) == []
        assert await store.keys("outputs") == []
    finally:
        store.close()


async def test_a_failing_write_ends_the_upload_with_its_error(tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))
    (tmp_path / "outputs").write_bytes(b"a file where the folder should be")
    try:
        for size in (100, (staged_file.BUFFERS + 2) * staged_file.BATCH_BYTES):  # ends, or waits for a buffer
            with pytest.raises(OSError):
                async with asyncio.timeout(10):
                    await store.put(KEY, pieces(sample(size)))
        assert files_in(tmp_path) == ["outputs"]
    finally:
        store.close()


async def test_a_discard_after_the_rename_takes_the_object_away(tmp_path: Path) -> None:
    """The loop gave up (a time-out) just as the thread renamed the file into place: the copy
    counts as failed, so the object must not stay."""
    staged = staged_file._StagedFile(tmp_path / "outputs" / "x")
    staged.open()
    staged.write(memoryview(b"whole"))
    staged.commit()
    assert files_in(tmp_path) == ["outputs/x"]
    staged.discard()
    assert files_in(tmp_path) == []


async def test_cancelled_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while the thread is writing a batch: the discard waits for that write, then
    removes the staging file."""
    writing = threading.Event()
    real_write = staged_file._StagedFile.write

    def slow_write(self: staged_file._StagedFile, batch: memoryview) -> None:
        writing.set()
        time.sleep(0.3)
        real_write(self, batch)

    monkeypatch.setattr(staged_file._StagedFile, "write", slow_write)
    store = MediaStore.open(None, str(tmp_path))
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in pieces(sample(staged_file.BATCH_BYTES + 1)):
            yield chunk
        await never.wait()
        yield b"never"

    try:
        upload = asyncio.create_task(store.put(KEY, stalls()))
        async with asyncio.timeout(10):
            while not writing.is_set():
                await asyncio.sleep(0.01)
        assert [name for name in files_in(tmp_path) if "#" in name]  # the staging file, unlisted
        assert await store.keys("outputs") == []
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        assert files_in(tmp_path) == []
    finally:
        store.close()


async def test_a_stalled_write_times_out_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = staged_file._StagedFile.write

    def stuck_write(self: staged_file._StagedFile, batch: memoryview) -> None:
        time.sleep(0.5)  # a disk that hangs, for longer than the time-out
        real_write(self, batch)

    monkeypatch.setattr(staged_file._StagedFile, "write", stuck_write)
    store = MediaStore.open(None, str(tmp_path))
    try:
        path = local_path(tmp_path.resolve(), KEY)
        assert path is not None
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await write_staged(path, pieces(sample(100_000)), store._threads, timeout_s=0.1)
        assert time.monotonic() - started < 0.45  # the loop did not wait for the stuck write
        async with asyncio.timeout(5):  # the discard runs once the stuck write returns
            while files_in(tmp_path):
                await asyncio.sleep(0.05)
    finally:
        store.close()


async def test_obstore_upload_hashes_and_leaves_nothing_when_abandoned(tmp_path: Path) -> None:
    """The path of S3, GCS and Azure (here obstore's LocalStore, staged uploads skipped)."""
    local = MediaStore.open(None, str(tmp_path))
    store = MediaStore(local._store, description="obstore's own upload")
    local.close()
    data = sample(PART_BYTES + 300_000)  # more than one multipart part
    try:
        assert await store.put(KEY, pieces(data)) == hashlib.sha256(data).hexdigest()
        assert await read_all(store, KEY) == data

        async def broken() -> AsyncIterator[bytes]:
            async for chunk in pieces(data):
                yield chunk
            raise ConnectionResetError("the source went away")

        with pytest.raises(ConnectionResetError):
            await store.put("outputs/req-1/1-broken", broken())
        async with asyncio.timeout(5):  # obstore removes its staging file as the upload aborts
            while files_in(tmp_path) != [KEY]:
                await asyncio.sleep(0.05)
        assert await store.keys("outputs") == [KEY]
        # An upload that fails on obstore's side ends the loop's wait for room with its error.
        with pytest.raises(Exception, match="not supported"):
            async with asyncio.timeout(10):
                await store.put("outputs/req-1/2#1", pieces(data))  # a name LocalStore refuses
    finally:
        store.close()


async def test_store_folder_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative MEDIA_DIR: the staged upload and LocalStore agree on the folder."""
    monkeypatch.chdir(tmp_path)
    store = MediaStore.open(None, "media")
    try:
        await store.put(KEY, pieces(b"relative"))
        assert await read_all(store, KEY) == b"relative"
        assert files_in(tmp_path / "media") == [KEY]
    finally:
        store.close()


async def test_a_file_url_store_takes_the_same_path(tmp_path: Path) -> None:
    store = MediaStore.open(f"file://{tmp_path}/media", "unused")
    try:
        assert store._local_root == tmp_path / "media"
        await store.put(KEY, pieces(b"by url"))
        assert await read_all(store, KEY) == b"by url"
        assert files_in(tmp_path / "media") == [KEY]
    finally:
        store.close()


async def test_a_local_upload_is_synced_before_its_rename_and_its_folders_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Power-loss safety, told by what each sync saw: the staging file synced whole while the
    object's name did not exist yet (before the rename), then the folders synced once the name
    existed (after it): the new folder that holds the object, and the one that holds that new
    folder. All in the upload's thread, so before `put` returns (and before any `stored`)."""
    calls: list[tuple[str, bool, int, bool]] = []
    final = tmp_path.resolve() / KEY
    final.parent.parent.mkdir()  # outputs/ exists; the request's folder is new

    def recording_sync(descriptor: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{descriptor}"), final.exists(), os.fstat(descriptor).st_size,
                      threading.current_thread() is threading.main_thread()))
        os.fsync(descriptor)

    monkeypatch.setattr(staged_file._StagedFile, "sync", staticmethod(recording_sync))
    store = MediaStore.open(None, str(tmp_path))
    data = sample(staged_file.BATCH_BYTES + 777)
    try:
        await store.put(KEY, pieces(data))
    finally:
        store.close()
    [(file, exists_then, size, on_loop), *folders] = calls
    assert file.startswith(str(final) + "#") and not exists_then and size == len(data) and not on_loop
    assert [(path, exists) for path, exists, _, _ in folders] == [
        (str(final.parent), True), (str(final.parent.parent), True)]
    assert not any(on_loop for *_, on_loop in folders)
