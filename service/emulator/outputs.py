"""Fake model outputs shaped like fal's: fal-ai/flux/dev for images, Kling/MiniMax-style for video."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .media import MAX_IMAGES, is_video_model, resolve_image_size, resolve_video_seconds, video_path
from .mp4 import mp4_of

if TYPE_CHECKING:
    from .faults import FaultOptions

# fal's documented example seed; every emulated seed sits above 2**53 so receivers that parse JSON
# numbers as doubles get caught.
SEED_BASE = 196_619_188_014_358_660


def output_seed(model_input: dict[str, Any]) -> int:
    requested = model_input.get("seed")
    if isinstance(requested, int) and not isinstance(requested, bool):
        return SEED_BASE + requested % 2**32
    return SEED_BASE + random.getrandbits(32)


def validation_errors(model_id: str, model_input: dict[str, Any]) -> list[dict[str, Any]]:
    """What the fake app rejects, as FastAPI-style `detail` entries (fal apps answer 422 with these)."""
    errors: list[dict[str, Any]] = []
    if is_video_model(model_id):
        try:
            resolve_video_seconds(model_input.get("duration"))
        except ValueError as exc:
            errors.append({"loc": ["body", "duration"], "msg": str(exc), "type": "value_error"})
        return errors
    try:
        resolve_image_size(model_input.get("image_size"))
    except ValueError as exc:
        errors.append({"loc": ["body", "image_size"], "msg": str(exc), "type": "value_error"})
    num = model_input.get("num_images", 1)
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= MAX_IMAGES:
        errors.append(
            {"loc": ["body", "num_images"], "msg": f"num_images must be between 1 and {MAX_IMAGES}", "type": "value_error"}
        )
    return errors


def forced_error_detail() -> list[dict[str, Any]]:
    return [
        {
            "loc": ["body", "prompt"],
            "msg": "Emulated model failure (fal_emulator.outcome = error)",
            "type": "value_error",
        }
    ]


def media_query(faults: FaultOptions, completed_at: float) -> str:
    """The media faults, in the media URL itself (`?t=…&ttl=…`): the media routes stay stateless,
    so media outlives the request record, as fal's CDN does."""
    params: dict[str, int] = {}
    if faults.media_ttl_ms is not None:
        params["ttl"] = faults.media_ttl_ms
    if faults.media_fail_ms:
        params["fail"] = faults.media_fail_ms
    if faults.media_stall_ms:
        params["stall"] = faults.media_stall_ms
    if faults.video_bytes is not None:
        params["bytes"] = faults.video_bytes
    if not params:
        return ""
    return "?" + urlencode({"t": int(completed_at * 1000), **params})


def build_output(
    model_id: str, model_input: dict[str, Any], *, request_id: str, media_base: str, inference_s: float,
    media_query: str = "",
) -> dict[str, Any]:
    seed = output_seed(model_input)
    if is_video_model(model_id):
        seconds = resolve_video_seconds(model_input.get("duration"))
        # The asked-for length, in the URL; a `video_bytes` fault serves a file of that size instead.
        url = f"{media_base}/video/{video_path(seconds)}/{request_id}.mp4{media_query}"
        size = len(mp4_of(seconds))
        if "bytes=" in media_query:
            size = int(media_query.split("bytes=", 1)[1].split("&", 1)[0])
            url = f"{media_base}/video/{request_id}.mp4{media_query}"
        return {
            "video": {
                "url": url,
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": size,
            },
            "seed": seed,
        }
    width, height = resolve_image_size(model_input.get("image_size"))
    count = model_input.get("num_images", 1)
    images = [
        {
            # Size and per-image seed live in the URL: the media route redraws the PNG from it.
            "url": f"{media_base}/image/{width}x{height}/{seed + index}.png{media_query}",
            "width": width,
            "height": height,
            "content_type": "image/png",
        }
        for index in range(count)
    ]
    return {
        "images": images,
        "timings": {"inference": round(inference_s, 3)},
        "seed": seed,
        "has_nsfw_concepts": [False] * count,
        "prompt": model_input.get("prompt", ""),
    }
