"""fal's Platform API pricing call (`GET /v1/models/pricing?endpoint_id=a,b`), as documented at
https://docs.fal.ai/platform-apis/v1/models/pricing: `{"prices": [{endpoint_id, unit_price, unit,
currency}], "next_cursor", "has_more"}`; 1 to 50 ids, comma-separated or repeated."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get

from .responses import json_answer, unauthorized

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from .engine import FalEmulator

EMULATED_PRICES: dict[str, tuple[float, str]] = {
    # Plausible figures in the units fal bills these models by (fal.ai/pricing): images by the
    # megapixel, Kling by the second of video, MiniMax by the video.
    "fal-ai/flux/dev": (0.025, "megapixels"),
    "fal-ai/flux/schnell": (0.003, "megapixels"),
    "fal-ai/flux/dev/image-to-image": (0.03, "megapixels"),
    "fal-ai/kling-video/v2.1/master/text-to-video": (0.28, "seconds"),
    "fal-ai/kling-video/v2.1/master/image-to-video": (0.28, "seconds"),
    "fal-ai/minimax/video-01": (0.5, "videos"),
}
"""(unit price in USD, billing unit) per endpoint id; an emulator's `prices` starts from these."""


def pricing_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    @get("/v1/models/pricing")
    async def pricing(request: Request[Any, Any, Any]) -> Response[bytes]:
        if not emulator.is_authorized(request.headers.get("authorization")):
            return unauthorized()
        emulator.pricing_reads += 1
        if not emulator.pricing_available:
            return json_answer(503, {"detail": "pricing temporarily unavailable (emulated)"})
        wanted = [part for value in request.query_params.getall("endpoint_id", [])
                  for part in value.split(",") if part]
        if not 1 <= len(wanted) <= 50:
            return json_answer(422, {"detail": "endpoint_id: give 1 to 50 endpoint ids"})
        prices = [{"endpoint_id": model_id, "unit_price": emulator.prices[model_id][0],
                   "unit": emulator.prices[model_id][1], "currency": "USD"}
                  for model_id in wanted if model_id in emulator.prices]
        return json_answer(200, {"prices": prices, "next_cursor": None, "has_more": False})

    return [pricing]
