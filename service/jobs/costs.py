"""What a job costs at fal: billed units from its input (the estimate) and its output (the final).

fal bills per output, by model: per image or per megapixel (each image rounded up to a whole
megapixel, as fal's model pages say), per second of video or per video. The estimate counts what
the input asks for; the final cost counts what the output shows, times the unit price the job was
estimated with. The final cost is computed in the statement that ends the job (the SQL function
`fal_job_final_cost`, from `units_of_output` here), so the webhook path reads nothing more.

Money is counted in `Decimal` and stored as JSON numbers that Postgres sums as `numeric`: 4 × 0.025
is 0.1, so a budget of 0.1 covers exactly four such jobs.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from service.jobs.catalog import DEFAULT_IMAGE_SIZE, IMAGE_SIZE_PRESETS, is_video_model
from service.jobs.models import JobCost

UNITS: dict[str, str] = {
    "image": "image", "images": "image",
    "megapixel": "megapixel", "megapixels": "megapixel", "mp": "megapixel",
    "second": "second", "seconds": "second", "video_second": "second", "video_seconds": "second",
    "video": "video", "videos": "video",
}
"""fal's spellings of the billing units we can count, to ours."""


def canonical_unit(unit: str) -> str:
    spelled = unit.strip().lower().replace(" ", "_").replace("-", "_")
    return UNITS.get(spelled, spelled)


def _megapixels(width: object, height: object) -> int | None:
    if not isinstance(width, int) or not isinstance(height, int) or isinstance(width, bool) or isinstance(height, bool):
        return None
    if width <= 0 or height <= 0:
        return None
    return math.ceil(width * height / 1_000_000)


def _seconds(value: object) -> Decimal | None:
    """A duration as fal's inputs and outputs write it: 5, 5.5, "5" or "5s"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            seconds = Decimal(value.strip().removesuffix("s"))
        except ArithmeticError:
            return None
        return seconds if seconds.is_finite() and seconds > 0 else None
    return None


def _requested_images(model_input: dict[str, Any]) -> dict[str, Decimal]:
    count = model_input.get("num_images", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return {}
    units = {"image": Decimal(count)}
    size = model_input.get("image_size", DEFAULT_IMAGE_SIZE)
    if isinstance(size, str) and size in IMAGE_SIZE_PRESETS:
        size = dict(zip(("width", "height"), IMAGE_SIZE_PRESETS[size], strict=True))
    if isinstance(size, dict) and (each := _megapixels(size.get("width"), size.get("height"))) is not None:
        units["megapixel"] = Decimal(count * each)
    return units


def units_of_input(model_id: str, model_input: dict[str, Any]) -> dict[str, Decimal]:
    """The units the input asks for, by canonical unit; a unit it does not tell is left out."""
    if not is_video_model(model_id):
        return _requested_images(model_input)
    units = {"video": Decimal(1)}
    if (seconds := _seconds(model_input.get("duration"))) is not None:
        units["second"] = seconds
    return units


def units_of_output(result: Any) -> dict[str, float]:
    """The units a completed job's output shows, by canonical unit (a JSON object for the finish
    statements); a unit it does not show is left out, and the estimate's quantity stands for it."""
    if not isinstance(result, dict):
        return {}
    units: dict[str, float] = {}
    images = result.get("images")
    if isinstance(images, list):
        units["image"] = len(images)
        each = [_megapixels(i.get("width"), i.get("height")) if isinstance(i, dict) else None for i in images]
        if None not in each:
            units["megapixel"] = sum(m for m in each if m is not None)
    video = result.get("video")
    if isinstance(video, dict):
        units["video"] = 1
        if (seconds := _seconds(video.get("duration"))) is not None:
            units["second"] = float(seconds)
    return units


def estimate(model_id: str, model_input: dict[str, Any], *, unit: str, unit_price: float, currency: str) -> JobCost:
    """The cost of a job about to be submitted, at this unit price."""
    canonical = canonical_unit(unit)
    quantity = units_of_input(model_id, model_input).get(canonical)
    amount = None if quantity is None else quantity * Decimal(str(unit_price))
    return JobCost(estimated=None if amount is None else float(amount), final=None, unit=canonical,
                   quantity=None if quantity is None else float(quantity), unit_price=unit_price, currency=currency)


def charge(cost: JobCost | None) -> Decimal:
    """What a job counts against a budget: its final cost once known, else its estimate."""
    if cost is None:
        return Decimal(0)
    amount = cost.final if cost.final is not None else cost.estimated
    return Decimal(0) if amount is None else Decimal(str(amount))
