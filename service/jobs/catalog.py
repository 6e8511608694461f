"""Which kind of output a model id makes, for the allow-list shown to browsers and for checking
that a job's `type` matches its model."""

from __future__ import annotations

import msgspec

from service.jobs.models import JobType

VIDEO_MARKERS = ("video", "kling", "minimax", "luma", "veo", "hunyuan", "wan-", "/wan", "ltx", "pika", "runway",
                 "pixverse", "seedance", "mochi")
"""Substrings of the model ids that make videos; the one list, shared with the local fal emulator."""

IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
"""fal's named image sizes (fal-ai/flux/dev and friends), shared with the local fal emulator."""
DEFAULT_IMAGE_SIZE = "landscape_4_3"


class Model(msgspec.Struct, frozen=True):
    model_id: str
    type: JobType


def is_video_model(model_id: str) -> bool:
    lowered = model_id.lower()
    return any(marker in lowered for marker in VIDEO_MARKERS)


def model_type(model_id: str) -> JobType:
    return "video" if is_video_model(model_id) else "image"


def catalog(allowed_models: tuple[str, ...]) -> list[Model]:
    return [Model(model_id=model_id, type=model_type(model_id)) for model_id in allowed_models]
