"""`Range: bytes=…` against an object of known size, as RFC 9110 (section 14.1.2) reads it: a
last-byte-pos past the end is clamped to the end, a first-byte-pos past the end is not
satisfiable, and what the server may ignore (other units, several ranges, malformed) is the
whole object. Numbers of any length are read without an error."""

from __future__ import annotations

import pytest

from service.outputs.access import ByteRange, RangeNotSatisfiable, parse_range

SIZE = 100_000


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-0", ByteRange(0, 1)),
    ("bytes=1000-1999", ByteRange(1000, 2000)),
    ("bytes=0-99999", ByteRange(0, SIZE)),
    # A last-byte-pos beyond the end means "to the end": 0-99999 of 100,000 bytes.
    ("bytes=0-999999", ByteRange(0, SIZE)),
    ("bytes=99990-100000", ByteRange(99990, SIZE)),
    ("bytes=5-", ByteRange(5, SIZE)),
    ("bytes=-10", ByteRange(SIZE - 10, SIZE)),
    ("bytes=-999999", ByteRange(0, SIZE)),  # a suffix longer than the object is all of it
    ("bytes=007-009", ByteRange(7, 10)),
    (" bytes=1-2 ", ByteRange(1, 3)),
])
def test_a_satisfiable_range_is_clamped_to_the_object(header: str, expected: ByteRange) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", [None, "", "bytes=-", "bytes=5-2", "bytes=0-1,5-6", "items=0-1", "bytes=a-b",
                                    "bytes 0-1"])
def test_what_may_be_ignored_is_the_whole_object(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize("header", ["bytes=100000-", "bytes=100000-100010", "bytes=-0"])
def test_a_range_outside_the_object_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, SIZE)


def test_numbers_of_any_length_are_positions_not_errors() -> None:
    """Python refuses int() of more than 4,300 digits: such a Range was a 500 with a traceback."""
    huge = "1" * 5000
    assert parse_range(f"bytes=0-{huge}", SIZE) == ByteRange(0, SIZE)
    assert parse_range(f"bytes=-{huge}", SIZE) == ByteRange(0, SIZE)
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={huge}-", SIZE)
    # Leading zeros do not make a small number large.
    assert parse_range(f"bytes={'0' * 5000}5-{'0' * 5000}9", SIZE) == ByteRange(5, 10)
