"""Correct `Allow` on OPTIONS answers.

Litestar (2.25) builds the automatic OPTIONS handler of a path when the path's first handler is
registered, and that handler keeps listing only the methods known then: `OPTIONS /api/jobs`
answered `Allow: OPTIONS, POST` although GET is served too. This middleware rewrites the header
from the app's full route map, so OPTIONS tells the truth (Schemathesis checks it).
"""

from __future__ import annotations

import re

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_PARAMETER_TYPE = re.compile(r"\{(\w+):[^}]+\}")


def _allowed(scope: Scope) -> bytes | None:
    app = scope["app"]
    table: dict[str, bytes] | None = getattr(app.state, "_allow_by_path", None)
    if table is None:
        # A bare ASGI route ("asgi") answers its own OPTIONS.
        table = {
            _PARAMETER_TYPE.sub(r"{\1}", path): ", ".join(sorted(methods)).encode()
            for path, methods in app.route_handler_method_map.items()
            if "asgi" not in methods
        }
        app.state["_allow_by_path"] = table
    return table.get(scope.get("path_template", ""))


def options_allow_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
            await app(scope, receive, send)
            return
        allowed = _allowed(scope)

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and allowed is not None:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message["headers"] = [*headers, (b"allow", allowed)]
            await send(message)

        await app(scope, receive, send_with_allow)

    return middleware
