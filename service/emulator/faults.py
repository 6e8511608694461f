"""Per-request fault injection: the reserved `fal_emulator` input key.

fal-client passes the input dict through untouched, so a test can steer one request's fate
without any side channel. The key is stripped before the input reaches the fake model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

FAULTS_KEY = "fal_emulator"

Outcome = Literal["ok", "error", "payload_error"]
_Millis = Annotated[int, Meta(ge=0, le=3_600_000)]


class FaultOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    # None: the engine's default timing applies.
    queue_ms: _Millis | None = None
    run_ms: _Millis | None = None
    outcome: Outcome = "ok"
    # Total number of webhook deliveries (each with its own retries): fal may deliver more than once.
    duplicates: Annotated[int, Meta(ge=1, le=50)] = 1
    webhook_delay_ms: _Millis = 0
    webhook_before_submit_response: bool = False
    bad_signature: bool = False
    # fal answering the submit call itself with an error; no request is created.
    submit_status: Annotated[int, Meta(ge=400, le=599)] | None = None
    logs: Annotated[int, Meta(ge=0, le=1000)] = 0
    # Starting queue position, counted down to 0 over queue_ms (on top of the requests ahead).
    queue_position: Annotated[int, Meta(ge=0, le=10_000)] = 0
    # The output's media, counted from completion: gone for good (404) after media_ttl_ms; every
    # fetch answers 503 during the first media_fail_ms; during the first media_stall_ms a fetch
    # sends its first bytes and then nothing until that window has passed.
    media_ttl_ms: _Millis | None = None
    media_fail_ms: _Millis = 0
    media_stall_ms: _Millis = 0
    # A video of this many bytes (the sample, repeated), for copies of realistic size.
    video_bytes: Annotated[int, Meta(ge=1, le=4 * 1024**3)] | None = None
    # Media URLs under this base instead of the emulator's own (a host outside an allow-list).
    media_base_url: Annotated[str, Meta(pattern=r"^https?://")] | None = None
    # Held: the request stays queued (at position 0) after queue_ms, and stays running after its
    # logs, each until `FalEmulator.release(request_id)`: a test steps it on its own events, not on time.
    hold: bool = False
    # fal having a bad moment with this request: the first N status calls (polls and status-stream
    # openings), or the first N result calls once it completed, answer `failure_status` (500 by
    # default, which fal-client does not retry by itself).
    status_failures: Annotated[int, Meta(ge=0, le=1000)] = 0
    result_failures: Annotated[int, Meta(ge=0, le=1000)] = 0
    failure_status: Annotated[int, Meta(ge=400, le=599)] = 500
    # The first N status polls (not stream openings) never answer: fal timing out.
    status_stalls: Annotated[int, Meta(ge=0, le=1000)] = 0
    # The first N status streams of this request break (the connection is cut mid-body) after their
    # first event; with stream_stall they go silent instead, sending nothing, heartbeats included.
    stream_breaks: Annotated[int, Meta(ge=0, le=1000)] = 0
    stream_stall: bool = False
    # A runner without cancellation handling: a cancel of the running request is taken (202) and the
    # request runs on to its own end, webhook included (fal's docs: it "continues consuming GPU time
    # until it finishes naturally"). A queued request is still removed at once.
    cancel_ignored: bool = False


class FaultOptionsError(ValueError):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def detail(self) -> list[dict[str, Any]]:
        loc: list[str] = ["body", FAULTS_KEY] + ([self.field] if self.field else [])
        return [{"loc": loc, "msg": self.message, "type": "value_error"}]


_FIELD_AT = re.compile(r"at `\$\.(\w+)")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def parse_fault_options(raw: object) -> FaultOptions:
    if raw is None:
        return FaultOptions()
    if not isinstance(raw, dict):
        raise FaultOptionsError(None, f"`{FAULTS_KEY}` must be an object")
    try:
        return msgspec.convert(raw, FaultOptions)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _UNKNOWN.search(message) or _FIELD_AT.search(message)
        raise FaultOptionsError(match.group(1) if match else None, message) from None
