"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): how to make values the OpenAPI
document can only name. A list cursor is opaque (`format: fal-jobs-cursor`): valid ones are built
the way the API builds them, so "a valid request is accepted" can be checked on GET /api/jobs."""

from __future__ import annotations

import base64
from datetime import UTC

import msgspec
import schemathesis
from hypothesis import strategies as st

from service.jobs.queries import REQUEST_ID_PATTERN, _Cursor


def _cursor(values: tuple[object, str]) -> str:
    raw = msgspec.json.encode(_Cursor(*values))  # type: ignore[arg-type]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


schemathesis.openapi.format(
    "fal-jobs-cursor",
    st.tuples(st.datetimes(timezones=st.just(UTC)), st.from_regex(REQUEST_ID_PATTERN, fullmatch=True)).map(_cursor),
)
