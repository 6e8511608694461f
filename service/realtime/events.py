"""An event row as the realtime layer carries it: the job JSON stays the text Postgres gave us, so
an event is encoded once however many subscribers receive it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from service.jobs.models import TERMINAL_STATUSES

if TYPE_CHECKING:
    from collections.abc import Mapping


class JobEvent(msgspec.Struct, frozen=True):
    id: int
    request_id: str
    user_id: str
    version: int
    status: str
    type: str
    data: str
    """The job after this change, as JSON text (the `data` jsonb column)."""
    outputs_pending: bool = False
    """Some output of the job is still being copied: more events follow its terminal one."""
    written_at: float = 0.0
    """When the change was written, in Unix seconds (for the delivery-lag metric)."""
    tags: tuple[str, ...] = ()
    """The job's tags (fixed at creation): a user stream may follow only one tag's jobs."""

    @property
    def is_terminal(self) -> bool:
        """The job's last event: its status is final and every output has settled."""
        return self.status in TERMINAL_STATUSES and not self.outputs_pending


EVENT_COLUMNS = (
    "id, request_id, user_id, version, status, data->>'type' AS type, data::text AS data, "
    """coalesce(data->'outputs' @> '[{"status": "pending"}]', false) AS outputs_pending"""
    ", extract(epoch FROM created_at)::float8 AS written_at"
    ", ARRAY(SELECT jsonb_array_elements_text(data->'tags')) AS tags"
)


def event_from_row(row: Mapping[str, Any]) -> JobEvent:  # an asyncpg Record of EVENT_COLUMNS
    return JobEvent(row["id"], row["request_id"], row["user_id"], row["version"], row["status"], row["type"], row["data"],
                    row["outputs_pending"], row["written_at"], tuple(row["tags"]))
