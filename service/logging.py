"""One log stream for the whole process, uvicorn's lines included: one JSON object per line by
default, readable text with LOG_FORMAT=text (the default on a terminal).

Every line logged while a request is handled carries its `request_id` (a context variable the
request middleware sets), the traceback of a 500 included. Whatever the caller passed as
`extra=` becomes fields. As a last line of defence, credentials and query strings are masked in
messages, fields and tracebacks: a line never carries a token, a key or a `?query`.

Field values come from outside (a request's path, say), so no value may start a line of its own or
pose as another field: JSON escapes them by itself, the text format quotes and escapes any value
with a space, a quote, an `=` or a control character.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

import msgspec

LogFormat = Literal["json", "text"]

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being handled by the current task (None outside requests)."""

# uvicorn adds `color_message` (the message with ANSI colours) to its records: not a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

_SECRETS = re.compile(
    r"(?P<scheme>\b(?:Bearer|Key)\s+)[^\s'\",]+"  # Authorization header values
    r"|\bfj_[A-Za-z0-9_-]{8,}"  # our API keys
    r"|(?P<query>(?:https?://[^\s?'\"]*|\s/[^\s?'\"]*)\?)[^\s'\"]+",  # a URL's or path's query string
)


def redact(text: str) -> str:
    if "?" not in text and "fj_" not in text and "Bearer" not in text and "Key" not in text:
        return text  # the common case costs four substring scans
    return _SECRETS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return match.group("scheme") + "[redacted]"
    if match.group("query"):
        return match.group("query") + "[redacted]"
    return "[redacted]"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: redact(value) if isinstance(value, str) else value
            for key, value in vars(record).items() if key not in _STANDARD_ATTRS and not key.startswith("_")}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_QUOTED = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _text_value(value: object) -> str:
    """`value` as one token of a text line: as it is, or quoted with its specials escaped."""
    text = value if isinstance(value, str) else redact(str(value))
    if _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + _QUOTED.sub(_escape, text) + '"'


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return msgspec.json.encode(entry, enc_hook=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in _fields(record).items())
        message = _CONTROL.sub(_escape, redact(record.getMessage()))
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {message}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def default_format() -> LogFormat:
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(level: str, log_format: LogFormat | None = None) -> None:
    """Route every logger (ours, uvicorn's, Litestar's, the libraries') to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if (log_format or default_format()) == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    # What no line prints is not gathered (the logging HOWTO's "Optimization"): the caller's file,
    # line and function (a walk up the stack per record), the thread's and the process's names.
    # Every request logs a line: this was ~40 % of that line's CPU. (So `stack_info=True` prints
    # nothing here, and a format must not ask for %(process)d or %(thread)d: none does.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would print the query string, which can carry a stream token; our
    # request middleware logs each request instead (path without its query).
    logging.getLogger("uvicorn.access").disabled = True
    # pgserver narrates every pg_ctl call at INFO, httpx every request (each call to fal).
    for name in ("pgserver", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "litestar"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
