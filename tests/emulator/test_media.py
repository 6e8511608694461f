"""Generated media: real PNGs of the requested size, a real MP4, served by the emulator itself."""

from __future__ import annotations

import struct
import zlib

import fal_client
import httpx
import pytest
from fal_client.client import FalClientHTTPError

from service.emulator import FalEmulator
from service.emulator.media import IMAGE_SIZE_PRESETS, is_video_model, png_bytes, resolve_image_size
from service.emulator.mp4 import SAMPLE

VIDEO_MODEL = "fal-ai/kling-video/v2/master/text-to-video"


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines), checking the signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    idat = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks[kind] = payload
        if kind == b"IDAT":
            idat += payload
        pos += 12 + length
    assert next(iter(chunks)) == b"IHDR" and list(chunks)[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 3) and len(chunks[b"PLTE"]) == 256 * 3  # 8-bit palette indices
    return width, height, zlib.decompress(idat)


async def test_png_has_requested_size(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x", "image_size": {"width": 333, "height": 217}, "num_images": 2})
    result = await handle.get(interval=0.02)
    urls = [image["url"] for image in result["images"]]
    assert len(set(urls)) == 2 and all(url.startswith(emu.base_url + "/media/") for url in urls)
    for image in result["images"]:
        assert (image["width"], image["height"], image["content_type"]) == (333, 217, "image/png")
        response = await http.get(image["url"])  # public: no Authorization
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        width, height, raw = parse_png(response.content)
        assert (width, height) == (333, 217)
        assert len(raw) == (1 + 333) * 217


@pytest.mark.parametrize("preset", sorted(IMAGE_SIZE_PRESETS))
async def test_png_presets(preset: str, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    result = await (await fal.submit("fal-ai/flux/schnell", {"prompt": "x", "image_size": preset})).get(interval=0.02)
    [image] = result["images"]
    width, height, _ = parse_png((await http.get(image["url"])).content)
    assert (width, height) == IMAGE_SIZE_PRESETS[preset] == (image["width"], image["height"])


def read_mp4(data: bytes) -> dict[str, object]:
    """What a player reads from an MP4's header, parsed here on its own (not with the emulator's
    code): the movie's and the track's durations, the frame tables, where the frames lie."""
    found: dict[str, bytes] = {}

    def walk(start: int, end: int) -> None:
        while start < end:
            size, kind = struct.unpack(">I4s", data[start:start + 8])
            assert size >= 8 and start + size <= end, (kind, size)
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"):
                walk(start + 8, start + size)
            else:
                found[kind.decode()] = data[start + 8:start + size]
                found[kind.decode() + "@"] = struct.pack(">I", start + 8)
            start += size

    walk(0, len(data))
    movie_scale, movie_ticks = struct.unpack(">II", found["mvhd"][12:20])
    media_scale, media_ticks = struct.unpack(">II", found["mdhd"][12:20])
    (track_ticks,) = struct.unpack(">I", found["tkhd"][20:24])
    (edit_ticks,) = struct.unpack(">I", found["elst"][8:12])
    (frames,) = struct.unpack(">I", found["stsz"][8:12])
    sizes = struct.unpack(f">{frames}I", found["stsz"][12:12 + 4 * frames])
    (keys,) = struct.unpack(">I", found["stss"][4:8])
    entries, count, delta = struct.unpack(">III", found["stts"][4:16])
    (chunk_offset,) = struct.unpack(">I", found["stco"][8:12])
    (mdat_at,) = struct.unpack(">I", found["mdat@"])
    assert entries == 1 and count == frames and frames * delta == media_ticks
    assert movie_ticks == track_ticks == edit_ticks  # the track and its edit last as long as the movie
    assert chunk_offset == mdat_at and mdat_at + sum(sizes) == len(data) == mdat_at + len(found["mdat"])
    return {"seconds": movie_ticks / movie_scale, "media_seconds": media_ticks / media_scale, "frames": frames,
            "key_frames": keys, "fps": media_scale / delta, "first_frame": data[chunk_offset:chunk_offset + sizes[0]]}


async def test_video_model_serves_mp4(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    result = await (await fal.submit(VIDEO_MODEL, {"prompt": "x"})).get(interval=0.02)
    video = result["video"]
    assert video["content_type"] == "video/mp4" and video["file_name"].endswith(".mp4")
    assert result["seed"] > 2**53 and "images" not in result
    response = await http.get(video["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    data = response.content
    assert len(data) == video["file_size"] < 64_000
    assert data[4:8] == b"ftyp"
    assert b"avc1" in data[:1024]  # H.264: plays in Chromium's <video>
    assert read_mp4(data)["seconds"] == 5.0  # Kling's default duration


@pytest.mark.parametrize(("duration", "seconds"), [("5", 5.0), ("10", 10.0), ("8s", 8.0), (3, 3.0), (2.5, 2.5)])
async def test_video_lasts_the_duration_asked_for(fal: fal_client.AsyncClient, http: httpx.AsyncClient,
                                                  duration: object, seconds: float) -> None:
    result = await (await fal.submit(VIDEO_MODEL, {"prompt": "x", "duration": duration})).get(interval=0.02)
    response = await http.get(result["video"]["url"])
    assert response.status_code == 200
    header = read_mp4(response.content)
    assert header["seconds"] == header["media_seconds"] == seconds
    assert header["frames"] == round(seconds * header["fps"])  # type: ignore[operator]
    # The sample's frames, looped: each loop starts at its key frame.
    sample = read_mp4(SAMPLE.read_bytes())
    assert header["first_frame"] == sample["first_frame"]
    assert header["key_frames"] == -(-header["frames"] // sample["frames"])  # type: ignore[operator]
    assert len(response.content) == result["video"]["file_size"]


@pytest.mark.parametrize("duration", ["forever", "0", 0.5, 600, True, [5]])
async def test_a_duration_out_of_range_is_422(fal: fal_client.AsyncClient, duration: object) -> None:
    handle = await fal.submit(VIDEO_MODEL, {"prompt": "x", "duration": duration})
    with pytest.raises(FalClientHTTPError) as info:
        await handle.get(interval=0.02)
    assert info.value.status_code == 422 and info.value.message[0]["loc"] == ["body", "duration"]


def test_video_model_detection() -> None:
    for model in ("fal-ai/kling-video/v1", "fal-ai/minimax/video-01", "fal-ai/luma-dream-machine", "fal-ai/veo3",
                  "fal-ai/hunyuan-video", "fal-ai/wan-t2v", "fal-ai/ltx-video"):
        assert is_video_model(model), model
    for model in ("fal-ai/flux/dev", "fal-ai/recraft-v3", "fal-ai/stable-diffusion-v35-large", "fal-ai/ideogram/v2"):
        assert not is_video_model(model), model


def test_image_size_validation() -> None:
    assert resolve_image_size(None) == IMAGE_SIZE_PRESETS["landscape_4_3"]
    assert resolve_image_size({"width": 64, "height": 32}) == (64, 32)
    for bad in ("giant", {"width": 0, "height": 10}, {"width": 10_000, "height": 10}, {"width": True, "height": 2}, 5):
        with pytest.raises(ValueError):
            resolve_image_size(bad)


def test_png_differs_by_seed() -> None:
    assert png_bytes(16, 16, 1) != png_bytes(16, 16, 2)
    assert parse_png(png_bytes(1, 1, 0))[:2] == (1, 1)


async def test_media_routes_reject_nonsense(emu: FalEmulator, http: httpx.AsyncClient) -> None:
    for path in ("/media/image/99999x1/1.png", "/media/image/10x10/abc.png", "/media/image/axb/1.png", "/media/video/x.gif",
                 "/media/video/0s/x.mp4", "/media/video/999s/x.mp4", "/media/video/5/x.mp4", "/media/video/5s/x.gif"):
        assert (await http.get(emu.base_url + path)).status_code == 404, path
