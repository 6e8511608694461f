"""CORS on the event streams, so that an app on another origin (a Next.js app, say) shows its users'
jobs live: a browser's EventSource there opens `/api/jobs/{id}/events?token=…` or `/api/events?token=…`
on this service, and when it fails the TypeScript client asks the same URL with fetch to learn why.

`Access-Control-Allow-Origin: *`, and only on those two GET routes (as handler middleware, so their
refusals, 401, 404, 429, 503, carry it too: the client reads their status and Retry-After). Any
origin is right here because nothing ambient authorizes these requests: a stream token in the query
is the whole credential, and whoever holds one can read the stream from anywhere anyway. `*` also
tells browsers never to send cookies, and no preflight is answered, so a browser elsewhere cannot
use an API key header either. Every other route (session cookie, API key) stays same-origin.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

STREAM_CORS_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"access-control-allow-origin", b"*"),
    # Not CORS-safelisted: without this, a page elsewhere cannot read how long a 429 or 503 asks it to wait.
    (b"access-control-expose-headers", b"Retry-After, X-Request-Id"),
)


def stream_cors(app: ASGIApp) -> ASGIApp:
    """Handler middleware for the stream routes: every answer they give is readable from any origin."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                message["headers"] = [*headers, *STREAM_CORS_HEADERS]
            await send(message)

        await app(scope, receive, send_with_cors)

    return middleware
