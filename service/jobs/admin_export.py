"""The operator's CSV export of the filtered jobs, newest first: one row per job, and every cell a
user could have written made safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from service.jobs.admin import AdminJob, JobFilter, list_all_jobs

if TYPE_CHECKING:
    import asyncpg

MAX_CSV_ROWS = 50_000
CSV_PAGE = 1000
CSV_COLUMNS = ("request_id", "created_at", "completed_at", "user_name", "user_id", "model_id", "type", "status",
               "error", "prompt", "tags", "cost_estimated", "cost_final", "currency")

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes Excel, LibreOffice or Google Sheets read a cell as a formula (OWASP, CSV injection)."""


def spreadsheet_safe(text: str) -> str:
    """The cell as text: one that starts like a formula gets a leading apostrophe, which a spreadsheet
    reads as "this is text" (a prompt such as `=HYPERLINK(...)` would otherwise run when an operator
    opens the export). A plain-text reader sees the apostrophe: the price of the export being safe."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_row(job: AdminJob) -> tuple[str | float, ...]:
    cost = job.cost
    text = (job.request_id, job.created_at.isoformat(), job.completed_at.isoformat() if job.completed_at else "",
            job.user_name or "", job.user_id, job.model_id, job.type, job.status, job.error or "",
            str(job.input.get("prompt", "")), " ".join(job.tags))
    return (*map(spreadsheet_safe, text),
            "" if cost is None or cost.estimated is None else cost.estimated,
            "" if cost is None or cost.final is None else cost.final,
            "" if cost is None else cost.currency)


async def jobs_csv(connection: asyncpg.Connection | asyncpg.Pool, where: JobFilter) -> str:
    """At most MAX_CSV_ROWS jobs, read a page at a time (keyset), as one CSV document."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    cursor, written = None, 0
    while written < MAX_CSV_ROWS:
        page = await list_all_jobs(connection, where, limit=CSV_PAGE, cursor=cursor, max_limit=CSV_PAGE)
        writer.writerows(map(csv_row, page.jobs))
        written += len(page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break
    return out.getvalue()
