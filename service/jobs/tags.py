"""Tags and metadata: what an app attaches to a job for its own bookkeeping.

Tags (`user:123`, `project:9`) let an app with one API key list one end user's jobs, follow them
live, and hand that end user's browser a stream token that opens only them. Metadata is the app's
own JSON object, stored and returned with the job, and never sent to fal. Both are fixed at
creation. Jobs are found by tag through `fal_job_tags` (owner, tag, created_at, request_id), a
btree that keyset paging walks newest first without touching the owner's other jobs.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from service.errors import InvalidRequest

MAX_TAGS = 10
MAX_TAG_LENGTH = 64
MAX_METADATA_BYTES = 4096
TAG_PATTERN = re.compile(r"^[\x21-\x7e]{1,64}$")
"""Printable ASCII without spaces: safe in a query string, a log line and a token's scope."""
TAG_RULE = f"1 to {MAX_TAG_LENGTH} printable ASCII characters without spaces (e.g. 'user:123')"


def check_tag(tag: str, field: str = "tag") -> str:
    if not TAG_PATTERN.match(tag):
        shown = tag if len(tag) <= MAX_TAG_LENGTH else tag[:MAX_TAG_LENGTH] + "..."
        raise InvalidRequest(f"{field}: {shown!r} is not a tag; a tag is {TAG_RULE}")
    return tag


def check_tags(tags: list[str]) -> list[str]:
    """The tags as stored: each checked, duplicates dropped, the first occurrence's order kept."""
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"tags: {len(tags)} given; at most {MAX_TAGS} are accepted")
    for index, tag in enumerate(tags):
        check_tag(tag, f"tags[{index}]")
    return list(dict.fromkeys(tags))


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise InvalidRequest(
            f"metadata: larger than {MAX_METADATA_BYTES} bytes ({size} bytes of JSON); keep large data elsewhere "
            "and store a reference"
        )
    return metadata
