"""fal's queue API: submit, status (polled or streamed), result, cancel.

One catch-all route per method, parsed by hand: model ids have any number of path segments
(fal-ai/flux/dev, workflows/owner/app/...), which a route template cannot express.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.response import Stream

from .faults import FaultOptionsError
from .records import AppRef, QueueError, split_model_path
from .responses import json_answer, not_found, unauthorized
from .status_stream import status_events

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.params import FromPath

    from .engine import FalEmulator

_TRUE = {"1", "true", "yes", "on"}

QueueTarget = tuple[AppRef, str, list[str]]


def queue_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    return [_submit_route(emulator), _get_route(emulator), _cancel_route(emulator)]


def _submit_route(emulator: FalEmulator) -> HTTPRouteHandler:
    @post("/{path:path}")
    async def submit(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        model_input = _model_input(await request.body())
        if isinstance(model_input, Response):
            return model_input
        try:
            answer = await emulator.submit(path, model_input, request.query_params.get("fal_webhook"),
                                           request.headers.get("x-fal-object-lifecycle-preference"))
        except FaultOptionsError as exc:
            return json_answer(422, {"detail": exc.detail()})
        except QueueError as exc:
            return json_answer(exc.status_code, exc.body)
        return json_answer(200, answer)

    return submit


def _get_route(emulator: FalEmulator) -> HTTPRouteHandler:
    @get("/{path:path}")
    async def queue_get(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes] | Stream:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        target = _queue_target(path)
        if target is None:
            return not_found()
        with_logs = (request.query_params.get("logs") or "").lower() in _TRUE
        try:
            return await _read(emulator, target, with_logs)
        except QueueError as exc:
            return json_answer(exc.status_code, exc.body)

    return queue_get


def _cancel_route(emulator: FalEmulator) -> HTTPRouteHandler:
    @put("/{path:path}")
    async def cancel(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        target = _queue_target(path)
        if target is None or target[2] != ["cancel"]:
            return not_found()
        return json_answer(*emulator.cancel(target[0], target[1]))

    return cancel


def _model_input(raw: bytes) -> dict[str, Any] | Response[bytes]:
    """The submit's JSON object (empty body: {}), or the 422 that says what is wrong with it."""
    try:
        model_input = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        return json_answer(422, {"detail": f"Request body is not valid JSON: {exc}"})
    if not isinstance(model_input, dict):
        return json_answer(422, {"detail": "Request body must be a JSON object"})
    return model_input


def _queue_target(path: str) -> QueueTarget | None:
    """'[ns/]owner/app/requests/{id}[/rest...]' -> (app, request id, rest)."""
    split = split_model_path(path)
    if split is None:
        return None
    app_ref, model_id = split
    parts = model_id.split("/")
    offset = 3 if app_ref.namespace else 2
    if len(parts) < offset + 2 or parts[offset] != "requests":
        return None
    return app_ref, parts[offset + 1], parts[offset + 2 :]


async def _read(emulator: FalEmulator, target: QueueTarget, with_logs: bool) -> Response[bytes] | Stream:
    """A GET under a request: its result, a status poll, or a status stream; QueueError otherwise."""
    app_ref, request_id, rest = target
    if rest == [] or rest == ["response"]:
        return json_answer(*emulator.result(app_ref, request_id))
    if rest == ["status"]:
        if emulator.stalls(app_ref, request_id):
            await emulator.wait_closed()  # no answer: the caller's time-out decides
        return json_answer(*emulator.status(app_ref, request_id, with_logs=with_logs))
    if rest == ["status", "stream"]:
        emulator.status(app_ref, request_id, with_logs=with_logs)  # 404 before the stream opens
        return Stream(
            status_events(emulator, request_id, with_logs),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return not_found()
