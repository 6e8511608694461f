"""JSON shapes the emulator puts on the wire (queue answers and webhook bodies)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class SubmitResponse(msgspec.Struct, kw_only=True):
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int
    gateway_request_id: str


class LogEntry(msgspec.Struct, kw_only=True):
    message: str
    level: str
    source: str
    timestamp: str


class StatusResponse(msgspec.Struct, kw_only=True):
    # UNSET members are left out of the JSON; `logs` is None (JSON null) when logs were not asked for,
    # because fal-client reads data["logs"] unconditionally for IN_PROGRESS and COMPLETED.
    status: QueueState
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | UnsetType = UNSET
    logs: list[LogEntry] | UnsetType | None = UNSET
    metrics: dict[str, Any] | UnsetType = UNSET
    error: str | UnsetType | None = UNSET
    error_type: str | UnsetType | None = UNSET


class WebhookBody(msgspec.Struct, kw_only=True):
    request_id: str
    gateway_request_id: str
    status: Literal["OK", "ERROR"]
    payload: Any
    error: str | None = None
    payload_error: str | UnsetType = UNSET


class DeliveryAttempt(msgspec.Struct, kw_only=True, frozen=True):
    """One POST to a webhook URL, as the engine saw it."""

    request_id: str
    url: str
    delivery: int  # 1-based: which of the `duplicates` deliveries this attempt belongs to
    attempt: int  # 1-based within that delivery; >1 means a retry
    status_code: int | None  # None: timeout or connection error (see `error`)
    error: str | None
    timestamp: int  # the signed X-Fal-Webhook-Timestamp
    kid: str | None  # key that signed it; None for a bad_signature (unpublished) key

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
