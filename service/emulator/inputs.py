"""Input files, fetched as fal's runners fetch them: an image-to-video or image-to-image model
downloads its `image_url` when it starts running. Unreachable, or not an image: fal's 422 with a
`detail` entry for the field. Otherwise the image's average colour, which the fake output carries,
so a test can tell the input reached the model."""

from __future__ import annotations

import hashlib
import struct
import zlib

import httpx
import msgspec

IMAGE_INPUT_MODELS = ("image-to-video", "image-to-image")
"""Model ids ending so take an image by URL in `image_url`."""
MAX_INPUT_BYTES = 64 * 1024**2
FETCH_TIMEOUT_S = 10.0
MAX_DECODED_PIXELS = 4_000_000
"""Larger PNGs get a colour from their hash: the emulator decodes in pure Python."""
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8")


class InputFetch(msgspec.Struct, frozen=True):
    """One fetch of an input URL, as the emulator recorded it."""

    request_id: str
    url: str
    status: int | None
    sha256: str | None


class FetchedInput(msgspec.Struct, frozen=True):
    errors: list[dict[str, object]]
    colour: str | None = None
    """`rrggbb`: the average colour of the image fetched."""


def takes_image(model_id: str) -> bool:
    return model_id.rstrip("/").endswith(IMAGE_INPUT_MODELS)


def _error(msg: str, type_: str) -> FetchedInput:
    return FetchedInput(errors=[{"loc": ["body", "image_url"], "msg": msg, "type": type_}])


async def fetch_image(request_id: str, url: object, log: list[InputFetch]) -> FetchedInput:
    if not isinstance(url, str) or not url:
        return _error("field required", "missing")
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client, \
                client.stream("GET", url) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_INPUT_BYTES:
                    break
            status = response.status_code
    except (httpx.HTTPError, ValueError) as exc:
        log.append(InputFetch(request_id=request_id, url=url, status=None, sha256=None))
        return _error(f"Failed to download the file: {type(exc).__name__}", "file_download_error")
    data = bytes(body)
    log.append(InputFetch(request_id=request_id, url=url, status=status, sha256=hashlib.sha256(data).hexdigest()))
    if status != 200:
        return _error(f"Failed to download the file: HTTP {status}", "file_download_error")
    if not data.startswith(_IMAGE_MAGIC) and not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return _error("The file is not an image this model can read", "image_load_error")
    return FetchedInput(errors=[], colour=average_colour(data))


def average_colour(data: bytes) -> str:
    """The mean colour of an 8-bit, non-interlaced PNG (grey, RGB, palette, with or without alpha);
    of anything else, the first three bytes of its sha256."""
    try:
        rgb = _png_mean(data)
    except (ValueError, struct.error, zlib.error, IndexError):
        rgb = None
    if rgb is None:
        return hashlib.sha256(data).hexdigest()[:6]
    return "".join(f"{round(value):02x}" for value in rgb)


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_mean(data: bytes) -> tuple[float, float, float] | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at, idat, palette, header = 8, bytearray(), b"", b""
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunk = data[at + 8:at + 8 + length]
        header = chunk if kind == b"IHDR" else header
        palette = chunk if kind == b"PLTE" else palette
        idat += chunk if kind == b"IDAT" else b""
        at += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or interlace or colour_type not in _CHANNELS or width * height > MAX_DECODED_PIXELS:
        return None
    channels = _CHANNELS[colour_type]
    rows = _unfilter(zlib.decompress(bytes(idat)), width * channels, height, channels)
    totals = [0, 0, 0]
    for row in rows:
        for x in range(width):
            pixel = row[x * channels:(x + 1) * channels]
            if colour_type == 3:
                rgb = palette[pixel[0] * 3:pixel[0] * 3 + 3]
            elif colour_type in (0, 4):
                rgb = bytes((pixel[0],) * 3)
            else:
                rgb = pixel[:3]
            for i in range(3):
                totals[i] += rgb[i]
    count = width * height
    return totals[0] / count, totals[1] / count, totals[2] / count


def _unfilter(raw: bytes, stride: int, height: int, bpp: int) -> list[bytes]:
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            corner = previous[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + _predict(kind, left, up, corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return rows


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    estimate = left + up - corner
    distances = (abs(estimate - left), abs(estimate - up), abs(estimate - corner))
    return (left, up, corner)[distances.index(min(distances))]
