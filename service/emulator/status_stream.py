"""A request's status as a server-sent event stream (fal's `/status/stream`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .engine import FalEmulator


class StreamBroken(Exception):
    """Raised inside a status stream to cut its connection mid-body (fal_emulator.stream_breaks)."""


async def status_events(emulator: FalEmulator, request_id: str, with_logs: bool) -> AsyncIterator[bytes]:
    """SSE: one `data:` event per visible change, a `:` heartbeat when quiet, closed after COMPLETED."""
    last: bytes | None = None
    req = emulator.requests[request_id]
    breaks = req.take_stream_break()
    while not emulator.closed and not req.forgotten:
        changed = emulator.changed()  # taken before reading state so no change slips between
        _, view = emulator.current_status(req, with_logs=with_logs)
        encoded = msgspec.json.encode(view)
        if encoded != last:
            if last is not None and breaks:
                raise StreamBroken(f"status stream of {request_id} cut (fal_emulator.stream_breaks)")
            yield b"data: " + encoded + b"\n\n"
            last = encoded
        while req.faults.stream_stall and not emulator.closed:
            await emulator.changed().wait()  # silent until the client gives up or the emulator closes
        if view.status == "COMPLETED":
            return
        try:
            await asyncio.wait_for(changed.wait(), emulator.heartbeat_s)
        except TimeoutError:
            yield b": heartbeat\n\n"
