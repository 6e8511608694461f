"""How a request ends: its result (the fake model's output, or its errors), a cancel, and the body
of the webhook that reports it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .outputs import build_output, forced_error_detail, media_query, validation_errors
from .wire import WebhookBody

if TYPE_CHECKING:
    from .records import EmulatedRequest

CANCELLED_ERROR = "Request was cancelled"
APP_ERROR = "Invalid status code: 422"
PAYLOAD_ERROR = "Failed to serialize the payload (emulated: fal_emulator.outcome = payload_error)"


def complete(req: EmulatedRequest, *, status: int, body: dict[str, Any], error: str | None) -> None:
    req.result_status, req.result_body, req.error = status, body, error
    req.state = "COMPLETED"


def finish(req: EmulatedRequest, media_base: str) -> None:
    """The end of a run: the model's output, or its 422 (invalid input, or `outcome = error`)."""
    inference_s = req.run_ms / 1000
    req.metrics = {"inference_time": inference_s}
    errors = (forced_error_detail() if req.faults.outcome == "error"
              else req.input_errors or validation_errors(req.model_id, req.input))
    if errors:
        complete(req, status=422, body={"detail": errors}, error=APP_ERROR)
        return
    req.output = build_output(
        req.model_id, req.input, request_id=req.request_id, media_base=req.faults.media_base_url or media_base,
        inference_s=inference_s, media_query=media_query(req.faults, time.time()),
    )
    if req.input_colour is not None and "video" in req.output:
        # What the model made of its input: the image's average colour, in the file's name.
        req.output["video"]["file_name"] = f"from-{req.input_colour}.mp4"
    complete(req, status=200, body=req.output, error=None)


def cancel(req: EmulatedRequest) -> None:
    """A cancel that stops the request: it ends at once with fal's cancel error, and no webhook."""
    req.cancelled = True
    if req.task is not None:
        req.task.cancel()
    complete(req, status=400, body={"detail": CANCELLED_ERROR}, error=CANCELLED_ERROR)
    req.webhook_settled.set()


def webhook_body(req: EmulatedRequest) -> WebhookBody:
    base = {"request_id": req.request_id, "gateway_request_id": req.gateway_request_id}
    if req.result_status != 200:
        return WebhookBody(**base, status="ERROR", error=req.error, payload=req.result_body)
    if req.faults.outcome == "payload_error":
        return WebhookBody(**base, status="OK", payload=None, payload_error=PAYLOAD_ERROR)
    return WebhookBody(**base, status="OK", payload=req.output)
