"""Ending live streams when the process is asked to stop.

uvicorn waits for open responses before it runs the lifespan shutdown, and an SSE stream never
ends by itself; so on SIGINT/SIGTERM we close every stream first (browsers then reconnect to
another process with their Last-Event-ID) and pass the signal on to uvicorn's own handler.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from service.realtime.hub import Hub

    # What signal.getsignal returns: a handler, SIG_DFL/SIG_IGN (ints), or None for one not set from Python.
    Handler = Callable[[int, FrameType | None], Any] | int | None


def close_streams_on_exit_signal(hub: Hub) -> Callable[[], None]:
    """Chain a handler in front of the current SIGINT/SIGTERM handlers; returns an undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    # Keyed by int: the handler is called with the signal's number.
    previous: dict[int, Handler] = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.shut_down)
        chained = previous.get(sig)
        if callable(chained):
            chained(sig, frame)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler and old is not None:
                signal.signal(sig, old)

    return restore
