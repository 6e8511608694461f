"""A test-side SSE reader over real HTTP: collects messages in the background so a test can await
them one by one, see comments (heartbeats), and tell when the server ended the stream."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import msgspec


class Message(msgspec.Struct):
    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        assert self.data is not None
        return msgspec.json.decode(self.data)


class SseReader:
    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        self._http = http
        self._url = url
        self._headers = headers or {}
        self.messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self.status_code: int | None = None
        self.ended = asyncio.Event()
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> SseReader:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), 10)
        if self.error is not None:
            raise self.error
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        try:
            async with self._http.stream("GET", self._url, headers=self._headers, timeout=httpx.Timeout(10, read=None)) as response:
                self.status_code = response.status_code
                self._opened.set()
                if response.status_code != 200:
                    await response.aread()
                    return
                current = Message()
                async for line in response.aiter_lines():
                    if line == "":
                        if current != Message():
                            await self.messages.put(current)
                        current = Message()
                    elif line.startswith(":"):
                        await self.messages.put(Message(comment=line[1:].strip()))
                    else:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "data":
                            current.data = value if current.data is None else current.data + "\n" + value
                        elif field in ("event", "id"):
                            setattr(current, field, value)
                        elif field == "retry":
                            current.retry = int(value)
        except BaseException as error:
            self.error = error
            self._opened.set()
        finally:
            self.ended.set()
            await self.messages.put(None)

    async def next(self, timeout: float = 10, *, skip_comments: bool = True) -> Message:
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout)
            if message is None:
                raise EOFError("the server ended the stream")
            if message.retry is not None and message.event is None and message.data is None:
                continue
            if skip_comments and message.comment is not None:
                continue
            return message

    async def next_job(self, timeout: float = 10) -> tuple[int, dict[str, Any]]:
        message = await self.next(timeout)
        assert message.event == "job", message
        assert message.id is not None
        return int(message.id), message.json()

    async def expect_end(self, timeout: float = 10) -> None:
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout)
            if message is None:
                return
            assert message.comment is not None, f"expected the stream to end, got {message}"
