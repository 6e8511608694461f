"""MP4s of any length, from the one committed sample: its frames looped, its tables rewritten.

The sample (assets/sample.mp4) is H.264 Baseline at 10 frames a second: one key frame, at its start,
no B-frames, every frame in one chunk. Its frames played again from the first make a valid stream
(the key frame starts a fresh sequence), so a video of N seconds is those frames repeated and cut at
10·N, with the durations (mvhd, tkhd, elst, mdhd), the frame tables (stts, stss, stsz, stsc, stco)
and the data (mdat) written for that many. Players and header readers see N seconds; only the box
structure is touched, so no encoder is needed.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

SAMPLE = Path(__file__).parent / "assets" / "sample.mp4"

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


class Box:
    """One ISO-BMFF box: its type, and its payload or (a container) its children."""

    def __init__(self, kind: bytes, payload: bytes = b"", children: list[Box] | None = None) -> None:
        self.kind = kind
        self.payload = payload
        self.children = children

    def encode(self) -> bytes:
        body = b"".join(child.encode() for child in self.children) if self.children is not None else self.payload
        return struct.pack(">I4s", 8 + len(body), self.kind) + body

    def find(self, *path: bytes) -> Box:
        box = self
        for kind in path:
            box = next(child for child in box.children or [] if child.kind == kind)
        return box

    def replaced(self, payloads: dict[bytes, bytes]) -> Box:
        """A copy with the payloads of the named leaf boxes replaced (one track: names are unique)."""
        if self.children is not None:
            return Box(self.kind, children=[child.replaced(payloads) for child in self.children])
        return Box(self.kind, payloads.get(self.kind, self.payload))


def parse_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """The boxes of `data[start:end]` with the containers opened (32-bit sizes only)."""
    end = len(data) if end is None else end
    boxes, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size < 8 or offset + size > end:
            raise ValueError(f"box {kind!r} at {offset}: bad size {size}")
        children = parse_boxes(data, offset + 8, offset + size) if kind in _CONTAINERS else None
        boxes.append(Box(kind, data[offset + 8:offset + size] if children is None else b"", children))
        offset += size
    return boxes


def _u32s(payload: bytes, start: int, count: int) -> list[int]:
    return list(struct.unpack(f">{count}I", payload[start:start + 4 * count]))


def _with_u32(payload: bytes, offset: int, value: int) -> bytes:
    return payload[:offset] + struct.pack(">I", value) + payload[offset + 4:]


class Sample:
    """The committed MP4, taken apart: its boxes, its frames, a frame's duration in media ticks."""

    def __init__(self, data: bytes) -> None:
        boxes = {box.kind: box for box in parse_boxes(data)}
        self.ftyp, self.moov = boxes[b"ftyp"], boxes[b"moov"]
        self.stbl = self.moov.find(b"trak", b"mdia", b"minf", b"stbl")
        leaves = {child.kind: child.payload for child in self.stbl.children or []}
        stts_count, frames, self.frame_ticks = _u32s(leaves[b"stts"], 4, 3)
        sizes = _u32s(leaves[b"stsz"], 12, frames)
        if (stts_count, _u32s(leaves[b"stss"], 4, 2), _u32s(leaves[b"stco"], 4, 1)) != (1, [1, 1], [1]) \
                or b"ctts" in leaves or _u32s(leaves[b"stsc"], 4, 3) != [1, 1, frames]:
            raise ValueError("the sample must be one chunk of equal-length frames with one key frame, first")
        (offset,) = _u32s(leaves[b"stco"], 8, 1)
        self.frames = [data[start:start + size] for start, size in zip(_offsets(offset, sizes), sizes, strict=True)]
        for kind in (b"mvhd", b"tkhd", b"mdhd", b"elst"):
            if self._leaf(kind)[0] != 0:
                raise ValueError(f"the sample's {kind.decode()} must be version 0 (32-bit times)")
        (self.movie_timescale,) = _u32s(self._leaf(b"mvhd"), 12, 1)
        (self.media_timescale,) = _u32s(self._leaf(b"mdhd"), 12, 1)

    def _leaf(self, kind: bytes) -> bytes:
        path = {b"mvhd": (kind,), b"tkhd": (b"trak", kind), b"elst": (b"trak", b"edts", kind),
                b"mdhd": (b"trak", b"mdia", kind)}[kind]
        return self.moov.find(*path).payload

    @property
    def fps(self) -> float:
        return self.media_timescale / self.frame_ticks

    def looped(self, count: int) -> bytes:
        """An MP4 of the sample's frames played `count` frames long, looping from the first."""
        frames = [self.frames[i % len(self.frames)] for i in range(count)]
        media_ticks = count * self.frame_ticks
        movie_ticks = round(media_ticks * self.movie_timescale / self.media_timescale)
        keys = list(range(1, count + 1, len(self.frames)))
        full = b"\x00\x00\x00\x00"  # a full box's version 0 and flags
        payloads = {
            b"mvhd": _with_u32(self._leaf(b"mvhd"), 16, movie_ticks),
            b"tkhd": _with_u32(self._leaf(b"tkhd"), 20, movie_ticks),
            b"elst": _with_u32(self._leaf(b"elst"), 8, movie_ticks),
            b"mdhd": _with_u32(self._leaf(b"mdhd"), 16, media_ticks),
            b"stts": full + struct.pack(">III", 1, count, self.frame_ticks),
            b"stss": full + struct.pack(f">I{len(keys)}I", len(keys), *keys),
            b"stsc": full + struct.pack(">IIII", 1, 1, count, 1),
            b"stsz": full + struct.pack(f">II{count}I", 0, count, *(len(frame) for frame in frames)),
            b"stco": full + struct.pack(">II", 1, 0),
        }
        head = self.ftyp.encode()
        moov = self.moov.replaced(payloads)
        # The chunk offset is where mdat's data starts, after the moov it is written in.
        payloads[b"stco"] = full + struct.pack(">II", 1, len(head) + len(moov.encode()) + 8)
        moov = self.moov.replaced(payloads)
        data = b"".join(frames)
        return head + moov.encode() + struct.pack(">I4s", 8 + len(data), b"mdat") + data


def _offsets(first: int, sizes: list[int]) -> list[int]:
    offsets = []
    for size in sizes:
        offsets.append(first)
        first += size
    return offsets


@lru_cache(maxsize=1)
def sample() -> Sample:
    return Sample(SAMPLE.read_bytes())


@lru_cache(maxsize=16)
def mp4_of(seconds: float) -> bytes:
    """An H.264 MP4 `seconds` long (to the nearest frame, at least one)."""
    source = sample()
    return source.looped(max(1, round(seconds * source.fps)))


def mp4_duration_s(data: bytes) -> float:
    """The duration an MP4's movie header (mvhd, version 0 or 1) states, in seconds."""
    moov = next(box for box in parse_boxes(data) if box.kind == b"moov")
    mvhd = moov.find(b"mvhd").payload
    if mvhd[0] == 1:
        timescale, duration = struct.unpack(">IQ", mvhd[20:32])
    else:
        timescale, duration = struct.unpack(">II", mvhd[12:20])
    return float(duration / timescale)
