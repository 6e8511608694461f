"""Which files a completed job's result names: every `url` fal returns, in the result's order.

fal's outputs put each file in an object with a `url` (and often `content_type`): `images[]`,
`video`, `audio`, `audio_file`, `mesh` and so on. Walking the whole result finds them all without
a list of model shapes; whether a URL may be fetched is decided later, by the copier's allow-list.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from service.jobs.models import JobOutput, OutputKind

MAX_OUTPUTS = 32
"""A result naming more files than this keeps the first ones: no model we allow makes more."""

MAX_URL_LENGTH = 4096

_EXTENSIONS: dict[str, OutputKind] = {
    "png": "image", "jpg": "image", "jpeg": "image", "webp": "image", "gif": "image",
    "mp4": "video", "webm": "video", "mov": "video",
    "mp3": "audio", "wav": "audio", "ogg": "audio", "m4a": "audio",
}


class MediaFile:
    __slots__ = ("kind", "url")

    def __init__(self, url: str, kind: OutputKind) -> None:
        self.url = url
        self.kind = kind


def output_path(request_id: str, index: int) -> str:
    return f"/api/jobs/{request_id}/outputs/{index}"


_MEDIA_KINDS: dict[str, OutputKind] = {"image": "image", "video": "video", "audio": "audio"}
"""A content type's major part, or a word in the output's key, that names its kind."""


def _kind(key: str, entry: dict[str, Any], url: str) -> OutputKind:
    content_type = entry.get("content_type")
    if isinstance(content_type, str):
        major = _MEDIA_KINDS.get(content_type.split("/", 1)[0].lower())
        if major is not None:
            return major
    for marker, kind in _MEDIA_KINDS.items():
        if marker in key.lower():
            return kind
    extension = urlsplit(url).path.rsplit(".", 1)[-1].lower()
    return _EXTENSIONS.get(extension, "other")


def media_files(result: Any) -> list[MediaFile]:
    """The files a result names, depth first in the result's own order, each URL once."""
    found: list[MediaFile] = []
    seen: set[str] = set()

    def visit(value: Any, key: str) -> None:
        if len(found) >= MAX_OUTPUTS:
            return
        if isinstance(value, dict):
            url = value.get("url")
            if isinstance(url, str) and url not in seen and len(url) <= MAX_URL_LENGTH \
                    and urlsplit(url).scheme in ("http", "https"):
                seen.add(url)
                found.append(MediaFile(url, _kind(key, value, url)))
            for child_key, child in value.items():
                # Only containers can name a file: scalars (most of a result) cost no call.
                if child_key != "url" and isinstance(child, (dict, list)):
                    visit(child, child_key)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, (dict, list)):
                    visit(item, key)

    visit(result, "")
    return found


def pending_outputs(request_id: str, files: list[MediaFile]) -> list[JobOutput]:
    return [
        JobOutput(index=index, kind=file.kind, status="pending", url=output_path(request_id, index))
        for index, file in enumerate(files)
    ]
