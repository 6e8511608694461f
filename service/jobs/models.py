"""A job and a change to it, as the store, the API and the event stream all see them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

JobStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled", "deleted"]
JobType = Literal["image", "video"]
JobMode = Literal["webhook", "polling"]

JOB_STATUSES: tuple[JobStatus, ...] = ("pending", "in_progress", "completed", "failed", "cancelled", "deleted")
JOB_TYPES: tuple[JobType, ...] = ("image", "video")
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "deleted"})
"""`deleted` comes only after one of the others: the user removed a finished job's media."""

OutputKind = Literal["image", "video", "audio", "other"]
OutputStatus = Literal["pending", "stored", "failed", "deleted"]

LOG_LINES_KEPT = 20
"""fal resends every log line on each status; a job keeps only the tail a reader needs."""


class LogLine(msgspec.Struct, kw_only=True):
    message: str
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class JobOutput(msgspec.Struct, kw_only=True):
    """One media file of a completed job and our durable copy of it."""

    index: int
    kind: OutputKind
    status: OutputStatus
    """pending: being copied (its url redirects to fal's); stored: served from our store;
    failed: not copied (see error); deleted: removed with the job."""
    url: str
    """Our own URL for the file: `/api/jobs/{request_id}/outputs/{index}`."""
    content_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None


class JobCost(msgspec.Struct, kw_only=True):
    """Our estimate of what fal bills for a job, from fal's unit price for its model: not fal's invoice."""

    estimated: float | None
    """At submit, from the input (images asked for and their size, the video's duration); None
    when the input does not say how many units the job bills."""
    final: float | None
    """Once the job ended: the units its output shows (images and their megapixels, the video's
    duration) times `unit_price`; 0 for a failed job (fal bills successful outputs only); None
    while it runs, for a cancelled job, and when the units cannot be read."""
    unit: str
    """The billing unit: image, megapixel, second (of video), video, or fal's own word for another."""
    quantity: float | None
    """Units billed: requested at submit, read from the output once the job completed."""
    unit_price: float
    currency: str


class Job(msgspec.Struct, kw_only=True):
    request_id: str
    user_id: str
    model_id: str
    type: JobType
    input: dict[str, Any]
    status: JobStatus
    queue_position: int | None
    logs: list[LogLine] | None
    result: Any
    error: str | None
    error_type: str | None
    mode: JobMode
    version: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    outputs: list[JobOutput] = msgspec.field(default_factory=list)
    """The media files of a completed job (empty until then); `result` stays what fal returned."""
    tags: list[str] = msgspec.field(default_factory=list)
    """The app's labels for the job (`user:123`), fixed at creation: see `jobs/tags.py`."""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    """The app's own JSON object, fixed at creation; never sent to fal."""
    cost: JobCost | None = None
    """None when fal gave no price for the model when the job was submitted."""

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class NewJob(msgspec.Struct, kw_only=True, frozen=True):
    request_id: str
    user_id: str
    model_id: str
    type: JobType
    input: dict[str, Any]
    mode: JobMode
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    cost: JobCost | None = None


class JobChange(msgspec.Struct, kw_only=True, frozen=True):
    """What fal told us about a job: from a webhook, its status stream, a poll or a sweep."""

    status: JobStatus
    queue_position: int | None = None
    logs: list[LogLine] | None = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ends_without_logs(self) -> bool:
        """A job's end that brings no log lines (what every webhook brings): the status machine
        applies it without reading the row first, and several of them in one statement."""
        return self.status in TERMINAL_STATUSES and not self.logs


class OutputChange(msgspec.Struct, kw_only=True, frozen=True):
    """What a copy worker found out about one output: stored (with what), or failed (why)."""

    status: Literal["stored", "failed"]
    content_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    store_key: str | None = None
    error: str | None = None
    retryable: bool = False
    """A failure that may pass (a budget of transient failures spent): the sweep re-drives it."""


class OutputSettled(msgspec.Struct, kw_only=True, frozen=True):
    """A change to a completed job: one of its outputs was copied into our store, or could not be.
    Taken only while the output is pending and `claim` (the worker's) still holds it."""

    index: int
    outcome: OutputChange
    claim: str | None


class OutputsReopened(msgspec.Struct, kw_only=True, frozen=True):
    """A change to a completed job: its `failed` outputs among `indexes` are `pending` again, with
    fresh budgets (a re-drive by the sweep or by `outputs retry`)."""

    indexes: list[int]


class Deletion(msgspec.Struct, kw_only=True, frozen=True):
    """A change to a finished job: its owner deletes it, and its outputs with it."""

    user_id: str
    """The job's owner: another user's job is reported as not there."""
