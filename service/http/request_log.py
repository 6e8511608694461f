"""One structured log line per request, with a request id that the response echoes, and the
request's metrics (by route template, so ids in paths do not multiply the series). It wraps the
whole app, router included, so every answer passes it, the router's own 404 and 405 too; it also
adds the security headers (one wrapper of `send`, not one per concern: this runs for every
webhook).

The path is logged without its query string: a query may carry a stream token. The request id is
put in a context variable, so every line logged while the request is handled carries it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.logging import REQUEST_ID

log = logging.getLogger("service.http")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UNMATCHED = "unmatched"
"""The route label of every request no route took: scanned paths do not multiply the series."""
_CSP = b"content-security-policy"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def request_log_middleware(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> ASGIApp:
    """`app` with a log line, metrics and a request id per request, and `headers` on every answer.

    A Content-Security-Policy among `headers` goes only on answers that carry none of their own
    (downloads, the API reference): a second CSP header would not replace the first, the browser
    would enforce both.
    """
    without_csp = [(name, value) for name, value in headers if name.lower() != _CSP]

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:  # the enum member, so the checker narrows Scope to HTTPScope
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        context_token = REQUEST_ID.set(request_id)
        request_id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                own = list(message.get("headers", []))
                has_csp = any(name.lower() == _CSP for name, _ in own)
                message["headers"] = [*own, request_id_header, *(without_csp if has_csp else headers)]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            method = scope["method"]
            route = scope.get("path_template")
            if route is None:  # the method too may be anything the server's parser let through
                route, method = UNMATCHED, method if method in _METHODS else "other"
            metrics.http_request(method, route, status, duration)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                },
            )
            REQUEST_ID.reset(context_token)

    return middleware
