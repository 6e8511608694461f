"""The JSON answers every emulator route shares (fal's error shape: {"detail": ...})."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response


def json_answer(status_code: int, body: Any) -> Response[bytes]:
    # msgspec keeps integers exact (seeds above 2**53) and omits UNSET members.
    return Response(content=msgspec.json.encode(body), status_code=status_code, media_type="application/json")


def not_found() -> Response[bytes]:
    return json_answer(404, {"detail": "Not Found"})


def unauthorized() -> Response[bytes]:
    return json_answer(401, {"detail": "Unauthorized: send 'Authorization: Key <FAL_KEY>' with a valid key"})
