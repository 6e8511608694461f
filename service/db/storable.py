"""Text Postgres cannot store, made storable: fal's strings are never rejected for their characters.

Postgres refuses the NUL character in `text` and in `jsonb` (`\\u0000`), and a lone UTF-16
surrogate (U+D800 to U+DFFF without its pair) is not valid UTF-8 at all. fal's logs, errors and
outputs are arbitrary text, so either may come. Each such character is stored as the six
characters of its JSON escape (NUL becomes the text `\\u0000`, a lone U+D800 the text `\\ud800`):
visible, reversible by anyone who needs the original, and every other character is untouched.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# One JSON escape at a time, left to right, so that an escaped backslash is never mistaken for the
# start of an escape: a surrogate pair (kept), \u0000, a lone surrogate, or any other escape (kept).
_JSON_ESCAPE = re.compile(
    rb"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u0000|u[dD][89a-fA-F][0-9a-fA-F]{2}|.)", re.DOTALL
)

T = TypeVar("T")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def storable(value: Any) -> Any:
    """`value` (str, list, dict and scalars, nested) with NUL and lone surrogates escaped."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(_escape, value) if _UNSTORABLE.search(value) else value
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


def storable_struct(value: T) -> T:
    """A msgspec Struct with every string in it made storable; the same object when none needs it
    (one encode tells, the common case)."""
    try:
        if b"\\u0000" not in msgspec.json.encode(value):
            return value
    except UnicodeEncodeError:  # a lone surrogate
        pass
    return msgspec.convert(storable(msgspec.to_builtins(value)), type(value))


def _escape_json(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    if len(escape) == 5 and escape[:1] == b"u" and (escape == b"u0000" or escape[1:2] in b"dD"):
        return b"\\\\" + escape  # the six characters themselves, as an escaped backslash and text
    return match.group()


def storable_json(raw: bytes) -> bytes:
    """JSON text whose strings decode storable: `\\u0000` and lone surrogate escapes become
    escaped backslashes (a valid surrogate pair is kept). msgspec refuses a lone surrogate escape
    outright, so a body from fal goes through here before it is decoded."""
    if b"\\u" not in raw:
        return raw
    return _JSON_ESCAPE.sub(_escape_json, raw)
