"""fal's news as job changes: what a status, a result or a failed result means for a job.

The follower, the sweep and a cancel all read fal's statuses; the translation lives here, between
the two vocabularies, so that `service.fal` speaks only fal's and `service.jobs` only ours. A
webhook's body is translated where it is taken in (`receive_webhook`).
"""

from __future__ import annotations

from service.fal.gateway import (
    CANCELLED_ERROR,
    FalGateway,
    FalLogLine,
    FalRequestFailed,
    FalStatus,
    describe_error,
    was_cancelled,
)
from service.jobs.models import JobChange, LogLine


def job_logs(logs: list[FalLogLine] | None) -> list[LogLine] | None:
    if logs is None:
        return None
    return [LogLine(message=line.message, level=line.level, source=line.source, timestamp=line.timestamp) for line in logs]


def change_from_status(status: FalStatus) -> JobChange | None:
    """Queue position and progress as job changes; COMPLETED needs a result fetch (`completion_change`)."""
    if status.status == "IN_QUEUE":
        return JobChange(status="pending", queue_position=status.queue_position)
    if status.status == "IN_PROGRESS":
        return JobChange(status="in_progress", logs=job_logs(status.logs))
    return None


async def completion_change(gateway: FalGateway, model_id: str, request_id: str, status: FalStatus) -> JobChange:
    """The terminal change for a COMPLETED status: fetch its result, or record its error."""
    logs = job_logs(status.logs)
    if was_cancelled(status.error, None):
        return JobChange(status="cancelled", error=status.error, error_type=status.error_type, logs=logs)
    try:
        output = await gateway.result(model_id, request_id)
    except FalRequestFailed as failure:
        if failure.status_code >= 500 and status.error is None:
            raise
        if was_cancelled(status.error, failure.detail):
            return JobChange(status="cancelled", error=CANCELLED_ERROR, error_type=status.error_type, logs=logs)
        return JobChange(
            status="failed",
            error=describe_error(status.error or f"fal answered {failure.status_code}", failure.detail),
            error_type=status.error_type,
            result=failure.detail,
            logs=logs,
        )
    if status.error:
        return JobChange(status="failed", error=describe_error(status.error, output), error_type=status.error_type,
                         result=output, logs=logs)
    return JobChange(status="completed", result=output, logs=logs)
