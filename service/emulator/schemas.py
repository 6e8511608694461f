"""fal's per-endpoint OpenAPI (`GET /api/openapi/queue/openapi.json?endpoint_id=<id>`, public, no key)
for the models the emulator runs, in fal's shape: the POST to `/{endpoint_id}` takes a body whose
schema is a `$ref` to `components.schemas.<Name>Input` (with `required`, defaults, enums, bounds and
`x-fal-order-properties`); the result's schema is `<Name>Output`. The fields follow fal's published
schemas for these endpoints, narrowed where the emulator accepts less (image sides up to MAX_SIDE).
An endpoint it has no schema for answers 404, as fal does for an unknown endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get

from .media import DEFAULT_IMAGE_SIZE, IMAGE_SIZE_PRESETS, MAX_IMAGES, MAX_SIDE
from .responses import json_answer

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from .engine import FalEmulator

SCHEMA_PATH = "/api/openapi/queue/openapi.json"

_IMAGE_SIZE = {
    "title": "Image Size", "default": DEFAULT_IMAGE_SIZE, "description": "The size of the generated image.",
    "anyOf": [{"$ref": "#/components/schemas/ImageSize"},
              {"type": "string", "enum": list(IMAGE_SIZE_PRESETS)}],
}
_IMAGE_SIZE_OBJECT = {
    "title": "ImageSize", "type": "object",
    "properties": {side: {"title": side.title(), "type": "integer", "exclusiveMinimum": 0, "maximum": MAX_SIDE,
                          "default": 512, "description": f"The {side} of the generated image."}
                   for side in ("width", "height")},
}


def _prompt(description: str = "The prompt to generate from.") -> dict[str, Any]:
    return {"title": "Prompt", "type": "string", "description": description}


def _image_url(description: str) -> dict[str, Any]:
    return {"title": "Image Url", "type": "string", "description": description}


def _flux(steps_default: int, *, image_to_image: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"prompt": _prompt()}
    if image_to_image:
        properties["image_url"] = _image_url("The URL of the image to generate from.")
        properties["strength"] = {"title": "Strength", "type": "number", "minimum": 0.01, "maximum": 1,
                                  "default": 0.95, "description": "How far the result may depart from the image."}
    else:
        properties["image_size"] = _IMAGE_SIZE
    properties |= {
        "num_inference_steps": {"title": "Num Inference Steps", "type": "integer", "minimum": 1, "maximum": 50,
                                "default": steps_default},
        "seed": {"title": "Seed", "type": "integer", "description": "The same seed and prompt give the same image."},
        "guidance_scale": {"title": "Guidance scale (CFG)", "type": "number", "minimum": 1, "maximum": 20,
                           "default": 3.5},
        "num_images": {"title": "Num Images", "type": "integer", "minimum": 1, "maximum": MAX_IMAGES, "default": 1},
        "enable_safety_checker": {"title": "Enable Safety Checker", "type": "boolean", "default": True},
        "output_format": {"title": "Output Format", "type": "string", "enum": ["jpeg", "png"], "default": "jpeg"},
    }
    required = ["prompt", "image_url"] if image_to_image else ["prompt"]
    return {"type": "object", "properties": properties, "required": required,
            "x-fal-order-properties": list(properties)}


def _kling(*, image_to_video: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"prompt": _prompt("The prompt for the video.")}
    if image_to_video:
        properties["image_url"] = _image_url("The URL of the image the video starts from.")
    properties |= {
        "duration": {"title": "Duration", "type": "string", "enum": ["5", "10"], "default": "5",
                     "description": "The length of the video, in seconds."},
        "negative_prompt": {"title": "Negative Prompt", "type": "string", "default": "blur, distort, and low quality"},
        "cfg_scale": {"title": "Cfg Scale", "type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
    }
    if not image_to_video:
        properties["aspect_ratio"] = {"title": "Aspect Ratio", "type": "string", "enum": ["16:9", "9:16", "1:1"],
                                      "default": "16:9"}
    return {"type": "object", "properties": properties,
            "required": ["prompt", "image_url"] if image_to_video else ["prompt"],
            "x-fal-order-properties": list(properties)}


def _minimax() -> dict[str, Any]:
    properties = {"prompt": _prompt("The prompt for the video."),
                  "prompt_optimizer": {"title": "Prompt Optimizer", "type": "boolean", "default": True}}
    return {"type": "object", "properties": properties, "required": ["prompt"],
            "x-fal-order-properties": list(properties)}


INPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fal-ai/flux/dev": ("FluxDev", _flux(28)),
    "fal-ai/flux/schnell": ("FluxSchnell", _flux(4)),
    "fal-ai/flux/dev/image-to-image": ("FluxDevImageToImage", _flux(40, image_to_image=True)),
    "fal-ai/kling-video/v2.1/master/text-to-video": ("KlingV21MasterTextToVideo", _kling(image_to_video=False)),
    "fal-ai/kling-video/v2.1/master/image-to-video": ("KlingV21MasterImageToVideo", _kling(image_to_video=True)),
    "fal-ai/minimax/video-01": ("MinimaxVideo01", _minimax()),
}


def model_openapi(model_id: str) -> dict[str, Any] | None:
    """The endpoint's OpenAPI document, as fal serves it; None for an endpoint without one here."""
    known = INPUTS.get(model_id)
    if known is None:
        return None
    name, input_schema = known
    video = "video" in model_id or "minimax" in model_id
    output = {"type": "object", "required": ["video"] if video else ["images", "seed"],
              "properties": {"video": {"$ref": "#/components/schemas/File"}} if video else {
                  "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                  "seed": {"type": "integer"}, "prompt": {"type": "string"}}}
    ref = {"$ref": f"#/components/schemas/{name}Input"}
    return {
        "openapi": "3.0.4",
        "info": {"title": "Queue OpenAPI for " + model_id, "version": "1.0.0",
                 "x-fal-metadata": {"endpointId": model_id}},
        "components": {"schemas": {
            f"{name}Input": {"title": f"{name}Input", **input_schema},
            f"{name}Output": {"title": f"{name}Output", **output},
            "ImageSize": _IMAGE_SIZE_OBJECT,
            "Image": {"type": "object", "properties": {"url": {"type": "string"}, "width": {"type": "integer"},
                                                       "height": {"type": "integer"}}},
            "File": {"type": "object", "properties": {"url": {"type": "string"}, "content_type": {"type": "string"}}},
        }},
        "paths": {
            f"/{model_id}": {"post": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
                "responses": {"200": {"description": "The request status."}}}},
            f"/{model_id}/requests/{{request_id}}": {"get": {"responses": {"200": {
                "description": "Result of the request.",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}Output"}}}}}}},
        },
    }


def schema_routes(emulator: FalEmulator) -> list[HTTPRouteHandler]:
    @get(SCHEMA_PATH)
    async def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
        endpoint_id = request.query_params.get("endpoint_id") or ""
        emulator.schema_reads.append(endpoint_id)
        if not emulator.schemas_available:
            return json_answer(503, {"detail": "Service Unavailable"})
        document = model_openapi(endpoint_id)
        if document is None:
            return json_answer(404, {"detail": f"Endpoint {endpoint_id!r} not found"})
        return json_answer(200, document)

    return [openapi]
