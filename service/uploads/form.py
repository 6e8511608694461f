"""An upload sent as `multipart/form-data` (an HTML form): the first part that carries a file name
is the file, streamed out of the body as it arrives; other fields are skipped, and whatever follows
the file is never read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

from service.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for the form's boundaries, headers and small fields beside a file of the largest size."""
MAX_PARTS = 16


def is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "multipart/form-data"


def check_form_length(content_length: int | None, max_bytes: int) -> None:
    """A form announcing more than the largest file and its overhead: 413 before reading it."""
    if content_length is not None and content_length > max_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"body: announces {content_length} bytes; uploads are at most {max_bytes} bytes "
                              "(MAX_UPLOAD_BYTES)")


async def file_part(chunks: AsyncIterator[bytes], content_type: str, *, max_bytes: int) -> AsyncIterator[bytes]:
    """The bytes of the form's first file part."""
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise InvalidRequest("content-type: multipart/form-data without a boundary")
    parser = PushMultipartParser(boundary, max_segment_count=MAX_PARTS)
    wire, in_file = 0, False
    try:
        async for chunk in chunks:
            if not chunk:  # an empty chunk would tell the parser the input ended
                continue
            wire += len(chunk)
            if wire > max_bytes + FORM_OVERHEAD_BYTES:
                raise PayloadTooLarge(f"body: has more than {max_bytes} bytes; uploads are at most {max_bytes} bytes "
                                      "(MAX_UPLOAD_BYTES)")
            for event in parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    in_file = event.filename is not None
                elif event is None:
                    if in_file:
                        return  # the file is whole: the rest of the form is not read
                elif in_file:
                    yield bytes(event)
    except ParserError as exc:
        raise InvalidRequest(f"body: not a valid multipart/form-data stream ({exc})") from None
    raise InvalidRequest("body: the form has no file part; send the file as a field with a file name")
