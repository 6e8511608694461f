"""The JWKS route: the public keys a webhook receiver checks fal's signatures with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Response, get

from .responses import json_answer

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from .engine import FalEmulator


def jwks_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    @get("/.well-known/jwks.json", sync_to_thread=False)
    def jwks() -> Response[bytes]:
        if not emulator.jwks_available:
            return json_answer(503, {"detail": "JWKS temporarily unavailable (emulated)"})
        return json_answer(200, emulator.jwks())

    return [jwks]
