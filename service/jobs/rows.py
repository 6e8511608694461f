"""Turning `fal_jobs` rows into `Job`s: one column list and one converter for every query."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from service.jobs.models import Job

if TYPE_CHECKING:
    from collections.abc import Mapping

JOB_COLUMNS = (
    "request_id, user_id, model_id, type, input, status, queue_position, logs, result, error, "
    "error_type, mode, version, created_at, updated_at, completed_at, outputs, tags, metadata, cost"
)


def job_from_row(row: Mapping[str, Any]) -> Job:
    return msgspec.convert(dict(row), Job)
