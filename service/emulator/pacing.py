"""How a request spends its time: which pace it gets, its countdown in the queue, its log lines while
running, and the hold points where a test steps it on by hand (`fal_emulator.hold`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from .faults import FAULTS_KEY, FaultOptions, parse_fault_options
from .media import is_video_model
from .wire import LogEntry

if TYPE_CHECKING:
    from collections.abc import Callable

    from .records import EmulatedRequest

Pace = Literal["fast", "demo"]

DEMO_PACE = {
    # What a new user of `run` sees: seconds in the queue with a falling position, seconds running
    # with log lines, as on fal; a video takes longer. Tests keep the engine's fast defaults.
    "image": FaultOptions(queue_ms=3000, run_ms=4000, logs=4, queue_position=3),
    "video": FaultOptions(queue_ms=5000, run_ms=15000, logs=8, queue_position=4),
}


def request_faults(model_id: str, model_input: dict[str, Any], pace: Pace) -> FaultOptions:
    """The request's `fal_emulator` options, taken out of its input (the fake model never sees
    them); without any, the demo pace when asked for. Raises FaultOptionsError (a 422)."""
    if FAULTS_KEY not in model_input and pace == "demo":
        return DEMO_PACE["video" if is_video_model(model_id) else "image"]
    return parse_fault_options(model_input.pop(FAULTS_KEY, None))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def queue_and_run(req: EmulatedRequest, notify: Callable[[], None]) -> None:
    """IN_QUEUE for queue_ms (the position counting down), then IN_PROGRESS for run_ms (a log line
    at even steps); `notify` after every visible change. Returns when the run is over."""
    steps = req.faults.queue_position
    tick = req.queue_ms / 1000 / (steps + 1)
    for remaining in range(steps, -1, -1):
        req.countdown = remaining
        notify()
        await asyncio.sleep(tick)
    if req.faults.hold:
        await req.released.acquire()
    req.state = "IN_PROGRESS"
    notify()
    await _run(req, notify)
    if req.faults.hold:
        await req.released.acquire()


async def _run(req: EmulatedRequest, notify: Callable[[], None]) -> None:
    lines = req.faults.logs
    interval = req.run_ms / 1000 / (lines + 1)
    for index in range(lines):
        await asyncio.sleep(interval)
        req.logs.append(LogEntry(message=f"Step {index + 1}/{lines}", level="INFO", source="USER", timestamp=_now_iso()))
        notify()
    await asyncio.sleep(interval)
