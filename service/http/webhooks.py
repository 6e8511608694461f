"""fal's webhook: verify the signature on the raw body, then hand the change to the intake.

Answers: 200 once the change is durable (applied, a no-op duplicate, or parked for a job not yet
written); 401 naming why a signature fails; 400 for a body that is not a fal webhook; 413 past
1 MiB; 503 when the database or fal's keys are unreachable, so that fal retries. Nothing is
dropped silently.

A bare ASGI handler, not a Litestar route with a signature: every fal job ends here, and the
handler needs only the raw body and the headers. Litestar's signature parsing, dependency
resolution and response building were, measured against an `@asgi` route answering the same
bytes, a large share of the webhook's CPU (docs/benchmarks.md has the webhook figures). What
this path keeps from Litestar: routing, the middleware (one log line per request, metrics,
security headers) and the exception handlers, so refusals have the one error shape. Its OpenAPI
operation is written in `service/http/openapi.py`.
"""

from __future__ import annotations

from typing import cast

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, MethodNotAllowedException
from litestar.handlers import asgi
from litestar.types import HTTPReceiveMessage, Receive, Scope, Send

from service.usecases.receive_webhook import WebhookReceiver

WEBHOOK_PATH = "/api/webhooks/fal"
MAX_WEBHOOK_BYTES = 1024 * 1024
"""fal's webhook bodies carry output URLs, not media; anything larger is refused with 413."""
ALLOW = b"OPTIONS, POST"

_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The sender hung up before its body arrived: there is nobody to answer."""


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    too_large = HTTPException(status_code=413, detail=f"body: larger than {limit} bytes; fal's webhooks are far smaller")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    pieces: list[bytes] = []
    size = 0
    while True:
        # Litestar types `receive` for both protocols; on an HTTP request it gives HTTP events only.
        message = cast("HTTPReceiveMessage", await receive())
        if message["type"] == "http.disconnect":
            raise ClientGone
        piece = message.get("body", b"")
        size += len(piece)
        if size > limit:
            raise too_large
        pieces.append(piece)
        if not message.get("more_body", False):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@asgi(WEBHOOK_PATH, copy_scope=False)
async def fal_webhook(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != ScopeType.HTTP:  # an ASGI route is offered WebSocket handshakes too
        raise MethodNotAllowedException(detail="a WebSocket is not accepted here; fal POSTs its webhooks",
                                        headers={"Allow": ALLOW.decode()})
    method = scope["method"]
    if method == "OPTIONS":
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", ALLOW)]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if method != "POST":
        raise MethodNotAllowedException(detail=f"{method} is not allowed here; fal POSTs its webhooks",
                                        headers={"Allow": ALLOW.decode()})
    # Only the headers the check reads: fal's signature headers, and the body's length.
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
               if name.startswith(b"x-fal-webhook-") or name == b"content-length"}
    receiver: WebhookReceiver = scope["app"].state.webhooks
    try:
        body = await read_body(receive, MAX_WEBHOOK_BYTES, headers.get("content-length"))
    except ClientGone:
        return
    content = _encode(await receiver.receive(headers, body))
    await send({"type": "http.response.start", "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(content))]})
    await send({"type": "http.response.body", "body": content, "more_body": False})
