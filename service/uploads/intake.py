"""Taking an upload in: the body is counted as it streams (over the size limit or the day's quota it
stops there, unread), its first bytes say its type and an image's claimed size, and the rest goes
straight into the media store. Nothing is kept unless all of it passed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from service.errors import PayloadTooLarge, TooManyRequests, Unprocessable, UnsupportedMediaType
from service.uploads.sniff import ACCEPTED, NoDimensions, NotAccepted, Sniffed, content_type, head_needed, sniff

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


PREFIX_BYTES = 16
"""Enough of the start to know the type."""


class UploadLimits(msgspec.Struct, frozen=True):
    max_bytes: int
    max_pixels: int
    max_bytes_per_day: int
    retention_days: int


class Budget(msgspec.Struct, frozen=True):
    """How much this body may hold: the size limit, and what is left of the day's quota."""

    max_bytes: int
    quota_left: int
    retry_after_s: int
    """Until the quota's day ends (UTC midnight)."""

    def spent(self) -> TooManyRequests:
        return TooManyRequests("upload quota: today's quota is spent; retry after Retry-After seconds "
                               "(MAX_UPLOAD_BYTES_PER_DAY)", retry_after_s=self.retry_after_s)

    def check(self, size: int, *, announced: bool = False) -> None:
        if size > self.max_bytes:
            what = "announces" if announced else "has more than"
            raise PayloadTooLarge(f"body: {what} {size if announced else self.max_bytes} bytes; "
                                  f"uploads are at most {self.max_bytes} bytes (MAX_UPLOAD_BYTES)")
        if size > self.quota_left:
            raise TooManyRequests(f"upload quota: {self.quota_left} bytes of today's quota are left and this upload "
                                  "needs more; retry after Retry-After seconds (MAX_UPLOAD_BYTES_PER_DAY)",
                                  retry_after_s=self.retry_after_s)


class CountedBody:
    """The body's pieces, counted against the budget as they arrive; `head` is read first."""

    def __init__(self, chunks: AsyncIterator[bytes], budget: Budget) -> None:
        self._chunks = chunks
        self._budget = budget
        self.size = 0
        self.head = b""

    async def _next(self) -> bytes | None:
        async for chunk in self._chunks:
            if chunk:
                self.size += len(chunk)
                self._budget.check(self.size)
                return chunk
        return None

    async def read_head(self, max_pixels: int) -> Sniffed:
        """Read until the type (and an image's size) is known; 415, 422 or the budget's errors."""
        pieces: list[bytes] = []
        wanted = head_needed(None)
        while self.size < wanted:
            chunk = await self._next()
            if chunk is None:
                break
            pieces.append(chunk)
            if len(pieces[0]) < PREFIX_BYTES:
                pieces = [b"".join(pieces)]
            wanted = head_needed(content_type(pieces[0][:PREFIX_BYTES]))
        self.head = b"".join(pieces)
        try:
            sniffed = sniff(self.head)
        except NotAccepted:
            raise UnsupportedMediaType(f"body: not a file of an accepted type ({', '.join(ACCEPTED)}); the type is "
                                       "read from the bytes, not from the name or the Content-Type") from None
        except NoDimensions as exc:
            raise Unprocessable(f"body: the {exc} header does not say the image's size within its first "
                                f"{len(self.head)} bytes") from None
        if sniffed.width is not None and sniffed.height is not None and sniffed.width * sniffed.height > max_pixels:
            raise Unprocessable(f"body: the image claims {sniffed.width}x{sniffed.height} pixels; at most "
                                f"{max_pixels} pixels are accepted (MAX_UPLOAD_PIXELS)")
        return sniffed

    async def rest(self) -> AsyncIterator[bytes]:
        """The head, then every further piece (all of them counted)."""
        if self.head:
            yield self.head
        while (chunk := await self._next()) is not None:
            yield chunk
