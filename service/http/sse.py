"""Server-Sent Events on the wire: framing, and a lean ASGI response for long-lived streams.

Litestar's own SSE response runs a task group per stream; ours runs the stream in the request's
own task plus one small task that waits for the disconnect, which keeps an idle subscriber cheap.
A disconnect closes the stream (its subscription is released at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from litestar import Response
from litestar.types import Receive, Scope, Send

from service import metrics
from service.realtime.streams import Outgoing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class ClosableStream(Protocol):
    def __aiter__(self) -> AsyncIterator[Outgoing]: ...
    def close(self) -> None: ...


def encode(message: Outgoing) -> bytes:
    parts: list[str] = []
    if message.comment is not None:
        parts.append(f": {message.comment}\n")
    if message.event is not None:
        parts.append(f"event: {message.event}\n")
    if message.id is not None:
        parts.append(f"id: {message.id}\n")
    if message.data is not None:
        parts.extend(f"data: {line}\n" for line in message.data.split("\n"))
    parts.append("\n")
    return "".join(parts).encode()


class EventStreamASGI:
    def __init__(self, stream: ClosableStream, *, retry_ms: int, headers: dict[str, str]) -> None:
        self._stream = stream
        self._retry_ms = retry_ms
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
            *((k.lower().encode(), v.encode()) for k, v in self._headers.items()),
        ]
        watcher = asyncio.create_task(self._close_on_disconnect(receive))
        metrics.STREAMS_OPEN.inc()
        try:
            # Inside the try: a client gone before the start still closes the stream and its subscription.
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": f"retry: {self._retry_ms}\n\n".encode(), "more_body": True})
            async for message in self._stream:
                await send({"type": "http.response.body", "body": encode(message), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-send
        finally:
            metrics.STREAMS_OPEN.dec()
            self._stream.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _close_on_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._stream.close()
                return


class EventStreamResponse(Response[bytes]):
    """A handler's return value that streams `stream` as text/event-stream."""

    def __init__(self, stream: ClosableStream, *, retry_ms: int = 2000) -> None:
        super().__init__(content=b"", media_type="text/event-stream")
        self._stream = stream
        self._retry_ms = retry_ms

    def to_asgi_response(self, *args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return EventStreamASGI(self._stream, retry_ms=self._retry_ms, headers={**(headers or {}), **dict(self.headers)})
