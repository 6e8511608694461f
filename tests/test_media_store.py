"""The media store's uploads on their own: obstore's upload answers the sha256 of what it stored,
leaves nothing when abandoned, and an upload that fails on obstore's side ends the loop's wait."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.outputs.obstore_upload import PART_BYTES
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


async def test_obstore_upload_hashes_and_leaves_nothing_when_abandoned(tmp_path: Path) -> None:
    store = MediaStore.open(None, str(tmp_path))
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
