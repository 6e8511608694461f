"""What the emulator keeps about a request: the app it belongs to, its state, and the countdowns of
the faults that act on its calls (status failures and stalls, result failures, broken streams)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .faults import FaultOptions
    from .wire import LogEntry, QueueState

# fal-client's AppId understands these leading namespaces (workflows/owner/app/...).
APP_NAMESPACES = ("workflows", "comfy")


class QueueError(Exception):
    """An answer other than 2xx from a queue call, with fal's status code and JSON body."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status_code}: {body}")
        self.status_code = status_code
        self.body = body


class SubmitRecord(msgspec.Struct, frozen=True):
    model_id: str
    status_code: int
    request_id: str | None
    lifecycle_preference: str | None = None
    """The X-Fal-Object-Lifecycle-Preference header the submit carried."""


@dataclass(frozen=True)
class AppRef:
    """owner/app (with an optional namespace): what status, result and cancel URLs are keyed by."""

    owner: str
    app: str
    namespace: str | None = None

    @property
    def path(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.app}"


def split_model_path(path: str) -> tuple[AppRef, str] | None:
    """'[ns/]owner/app[/sub...]' -> (AppRef, full model id); None when too short."""
    parts = [p for p in path.strip("/").split("/") if p]
    namespace = parts.pop(0) if parts and parts[0] in APP_NAMESPACES else None
    if len(parts) < 2:
        return None
    return AppRef(parts[0], parts[1], namespace), "/".join(([namespace] if namespace else []) + parts)


@dataclass(eq=False)
class EmulatedRequest:
    seq: int
    request_id: str
    gateway_request_id: str
    app_ref: AppRef
    model_id: str
    input: dict[str, Any]
    faults: FaultOptions
    webhook_url: str | None
    queue_ms: int
    run_ms: int
    state: QueueState = "IN_QUEUE"
    countdown: int = 0
    logs: list[LogEntry] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    result_status: int = 200
    result_body: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    cancelled: bool = False
    # Counted down by the faults of the same names (see FaultOptions).
    status_failures: int = 0
    result_failures: int = 0
    status_stalls: int = 0
    stream_breaks: int = 0
    released: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    status_calls: int = 0
    forgotten: bool = False
    # Set once the first webhook attempt is over, or when no webhook will be sent.
    webhook_settled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    input_errors: list[dict[str, Any]] = field(default_factory=list)
    """fal's 422 `detail` entries for input files the run could not use."""
    input_colour: str | None = None
    """The average colour of the input image the run fetched (`rrggbb`)."""

    # Each `take_*` uses up one of a fault's N occurrences and says whether this call gets it.

    def take_status_failure(self) -> bool:
        if not self.status_failures:
            return False
        self.status_failures -= 1
        return True

    def take_status_stall(self) -> bool:
        if not self.status_stalls:
            return False
        self.status_stalls -= 1
        return True

    def take_result_failure(self) -> bool:
        """Only a completed request's result calls fail: earlier ones answer "still in progress"."""
        if not self.result_failures or self.state != "COMPLETED":
            return False
        self.result_failures -= 1
        return True

    def take_stream_break(self) -> bool:
        if not self.stream_breaks:
            return False
        self.stream_breaks -= 1
        return True


def new_request(
    *, seq: int, request_id: str, gateway_request_id: str, app_ref: AppRef, model_id: str,
    model_input: dict[str, Any], faults: FaultOptions, webhook_url: str | None,
    default_queue_ms: int, default_run_ms: int,
) -> EmulatedRequest:
    """A request as it enters the queue: its timing (the fault options', else the defaults) and
    the countdowns of its faults."""
    return EmulatedRequest(
        seq=seq,
        request_id=request_id,
        gateway_request_id=gateway_request_id,
        app_ref=app_ref,
        model_id=model_id,
        input=model_input,
        faults=faults,
        webhook_url=webhook_url or None,
        queue_ms=default_queue_ms if faults.queue_ms is None else faults.queue_ms,
        run_ms=default_run_ms if faults.run_ms is None else faults.run_ms,
        countdown=faults.queue_position,
        status_failures=faults.status_failures,
        status_stalls=faults.status_stalls,
        result_failures=faults.result_failures,
        stream_breaks=faults.stream_breaks,
    )
