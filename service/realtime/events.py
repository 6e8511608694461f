"""An event row as the realtime layer carries it: the job JSON stays the text Postgres gave us, so
an event is encoded once however many subscribers receive it."""

from __future__ import annotations

import msgspec

from service.jobs.models import TERMINAL_STATUSES


class JobEvent(msgspec.Struct, frozen=True):
    id: int
    request_id: str
    user_id: str
    version: int
    status: str
    type: str
    data: str
    """The job after this change, as JSON text (the `data` jsonb column)."""

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


EVENT_COLUMNS = "id, request_id, user_id, version, status, data->>'type' AS type, data::text AS data"


def event_from_row(row: object) -> JobEvent:
    return JobEvent(row["id"], row["request_id"], row["user_id"], row["version"], row["status"], row["type"], row["data"])  # type: ignore[index]
