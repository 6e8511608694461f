"""What a file is, from its first bytes: its type (never the name or the declared Content-Type) and,
for images, the size its header claims, read without decoding a pixel (a decompression bomb is
refused on its header alone).
"""

from __future__ import annotations

import struct

import msgspec

HEAD_BYTES = 64 * 1024
"""Enough to tell every accepted type apart and to read the size of a PNG, GIF or WebP."""
JPEG_HEAD_BYTES = 1024 * 1024
"""A JPEG's frame header may follow large EXIF, ICC or XMP segments: the most read to find it."""


ACCEPTED = ("image/png", "image/jpeg", "image/webp", "image/gif", "video/mp4", "video/quicktime", "video/webm",
            "audio/wav", "audio/mpeg")


class Sniffed(msgspec.Struct, frozen=True):
    content_type: str
    width: int | None = None
    height: int | None = None


class NotAccepted(Exception):
    """Not one of the accepted types."""


class NoDimensions(Exception):
    """An image whose header does not say its size within the bytes read."""


def content_type(head: bytes) -> str | None:
    """The accepted type `head` starts with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip") and len(head) >= 8:
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"ID3") or _mp3_frame(head):
        return "audio/mpeg"
    return None


def _mp3_frame(head: bytes) -> bool:
    # Frame sync (11 bits), an MPEG version other than "reserved", a layer other than "reserved",
    # a bitrate index other than "bad". JPEG's FF D8 fails the sync's low bits.
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    return (head[1] >> 3) & 3 != 1 and (head[1] >> 1) & 3 != 0 and head[2] >> 4 != 0xF


def head_needed(kind: str | None) -> int:
    return JPEG_HEAD_BYTES if kind == "image/jpeg" else HEAD_BYTES


def sniff(head: bytes) -> Sniffed:
    """The type of the file that begins with `head`, and an image's claimed size. NotAccepted for
    any other type, NoDimensions for an image whose size is not in `head`."""
    kind = content_type(head)
    if kind is None:
        raise NotAccepted
    if not kind.startswith("image/"):
        return Sniffed(content_type=kind)
    reader = _DIMENSIONS[kind]
    try:
        size = reader(head)
    except (struct.error, IndexError):
        size = None
    if size is None:
        raise NoDimensions(kind)
    return Sniffed(content_type=kind, width=size[0], height=size[1])


def _png(head: bytes) -> tuple[int, int] | None:
    if head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _gif(head: bytes) -> tuple[int, int] | None:
    width, height = struct.unpack("<HH", head[6:10])
    return width, height


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        # A key frame: 3 bytes of frame tag, the start code, then 14-bit width and height.
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg(head: bytes) -> tuple[int, int] | None:
    """Walk the segments from SOI to the first start-of-frame, skipping each by its length."""
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        length = struct.unpack(">H", head[at + 2:at + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", head[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None


_DIMENSIONS = {"image/png": _png, "image/gif": _gif, "image/webp": _webp, "image/jpeg": _jpeg}
