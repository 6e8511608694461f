"""Which kind of output a model id makes, for the allow-list shown to browsers and for checking
that a job's `type` matches its model."""

from __future__ import annotations

import msgspec

from service.jobs.models import JobType

_VIDEO_MARKERS = ("video", "kling", "minimax", "luma", "veo", "hunyuan", "wan-", "/wan", "ltx", "pika", "runway")


class Model(msgspec.Struct, frozen=True):
    model_id: str
    type: JobType


def model_type(model_id: str) -> JobType:
    lowered = model_id.lower()
    return "video" if any(marker in lowered for marker in _VIDEO_MARKERS) else "image"


def catalog(allowed_models: tuple[str, ...]) -> list[Model]:
    return [Model(model_id=model_id, type=model_type(model_id)) for model_id in allowed_models]
