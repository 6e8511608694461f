"""The type of an upload from its first bytes, and an image's size from its header alone."""

from __future__ import annotations

import struct

import pytest

from service.uploads.sniff import NoDimensions, NotAccepted, Sniffed, sniff
from tests.test_uploads import png_header_claiming, solid_png


def jpeg(width: int, height: int, *, exif_bytes: int = 0) -> bytes:
    app1 = b"\xff\xe1" + struct.pack(">H", exif_bytes + 2) + bytes(exif_bytes) if exif_bytes else b""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9) + app1 + sof + b"\xff\xda"


def riff(form: bytes, chunk: bytes, payload: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + form + chunk + struct.pack("<I", len(payload)) + payload


@pytest.mark.parametrize(("head", "expected"), [
    (solid_png(640, 480, (1, 2, 3)), Sniffed("image/png", 640, 480)),
    (png_header_claiming(30_000, 30_000), Sniffed("image/png", 30_000, 30_000)),
    (jpeg(1920, 1080), Sniffed("image/jpeg", 1920, 1080)),
    (jpeg(7, 9, exif_bytes=60_000), Sniffed("image/jpeg", 7, 9)),
    (b"GIF89a" + struct.pack("<HH", 300, 200) + bytes(20), Sniffed("image/gif", 300, 200)),
    (riff(b"WEBP", b"VP8X", bytes(4) + (1023).to_bytes(3, "little") + (767).to_bytes(3, "little")),
     Sniffed("image/webp", 1024, 768)),
    (riff(b"WEBP", b"VP8L", b"\x2f" + (99 | (49 << 14)).to_bytes(4, "little")), Sniffed("image/webp", 100, 50)),
    (riff(b"WEBP", b"VP8 ", bytes(3) + b"\x9d\x01\x2a" + struct.pack("<HH", 320, 240)), Sniffed("image/webp", 320, 240)),
    (struct.pack(">I", 24) + b"ftypisom" + bytes(16), Sniffed("video/mp4")),
    (struct.pack(">I", 20) + b"ftypqt  " + bytes(12), Sniffed("video/quicktime")),
    (b"\x1a\x45\xdf\xa3" + bytes(28), Sniffed("video/webm")),
    (riff(b"WAVE", b"fmt ", bytes(16)), Sniffed("audio/wav")),
    (b"ID3\x04\x00" + bytes(20), Sniffed("audio/mpeg")),
    (b"\xff\xfb\x90\x64" + bytes(20), Sniffed("audio/mpeg")),
])
def test_accepted_types_and_their_sizes(head: bytes, expected: Sniffed) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize("head", [b"", b"<!doctype html><html>", b"%PDF-1.7\n", b"PK\x03\x04", b"\xff\xd8",
                                  b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"RIFF\x00\x00\x00\x00AVI "])
def test_anything_else_is_not_accepted(head: bytes) -> None:
    with pytest.raises(NotAccepted):
        sniff(head)


def test_an_image_whose_size_is_not_in_its_head_is_refused() -> None:
    with pytest.raises(NoDimensions):
        sniff(jpeg(7, 9, exif_bytes=60_000)[:30_000])  # the frame header lies past what was read
    with pytest.raises(NoDimensions):
        sniff(b"\x89PNG\r\n\x1a\n" + bytes(8))
