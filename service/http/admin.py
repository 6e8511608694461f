"""The operator's API: every job, one job's timeline, figures, CSV. Admins only; to anyone else
every route here answers 404, as for a path that does not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from service.errors import InvalidRequest, NotFound
from service.http.dependencies import CallerDependency, PoolDependency
from service.http.events import AdmittedStream, last_event_id
from service.http.sse import EventStreamResponse
from service.jobs import admin, admin_export, admin_stats
from service.jobs.admin import AdminJobPage, JobFilter, Timeline, parse_moment
from service.jobs.delivery_log import DeliveryLog
from service.jobs.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from service.realtime.admission import Admission
from service.realtime.hub import Hub
from service.realtime.streams import open_user_stream

DEFAULT_STATS_WINDOW = timedelta(days=1)
MAX_STATS_WINDOW = timedelta(days=366)


async def provide_admin(caller: CallerDependency, pool: PoolDependency) -> str:
    if not await admin.is_admin(pool, caller.user_id):
        raise NotFound("not found: no such route for this caller")
    return caller.user_id


AdminDependency = NamedDependency[str]

Status = Annotated[str | None, QueryParameter(description="pending, in_progress, completed, failed, cancelled or deleted")]
Model = Annotated[str | None, QueryParameter(description="a model id, exactly")]
User = Annotated[str | None, QueryParameter(description="a user's name")]
Tag = Annotated[str | None, QueryParameter(description="only jobs carrying this tag")]
Since = Annotated[str | None, QueryParameter(description="created at or after: ISO 8601, or back from now (24h, 7d)")]
Until = Annotated[str | None, QueryParameter(description="created before: ISO 8601, or back from now")]
Text = Annotated[str | None, QueryParameter(description="text found in the prompt or the error (case ignored)")]


def _filter(status: str | None, model: str | None, user: str | None, tag: str | None, since: str | None,
            until: str | None, q: str | None) -> JobFilter:
    return JobFilter(status=status, model=model or None, user=user or None, tag=tag, since=parse_moment("since", since),
                     until=parse_moment("until", until), text=q or None).checked()


class AdminController(Controller):
    path = "/api/admin"
    tags = ["admin"]
    dependencies = {"admin_id": Provide(provide_admin)}

    @get("/jobs", summary="Every job across users, newest first (admins only)")
    async def list_jobs(
        self, pool: PoolDependency, admin_id: AdminDependency, status: Status = None, model: Model = None,
        user: User = None, tag: Tag = None, since: Since = None, until: Until = None, q: Text = None,
        limit: Annotated[int, QueryParameter(description=f"1 to {MAX_PAGE_SIZE}")] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
    ) -> AdminJobPage:
        return await admin.list_all_jobs(pool, _filter(status, model, user, tag, since, until, q), limit=limit,
                                         cursor=cursor)

    @get("/jobs.csv", summary="The filtered jobs as CSV, newest first (admins only)", media_type="text/csv")
    async def jobs_csv(
        self, pool: PoolDependency, admin_id: AdminDependency, status: Status = None, model: Model = None,
        user: User = None, tag: Tag = None, since: Since = None, until: Until = None, q: Text = None,
    ) -> Response[str]:
        document = await admin_export.jobs_csv(pool, _filter(status, model, user, tag, since, until, q))
        return Response(document, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="jobs.csv"'})

    @get("/jobs/{request_id:str}/timeline", summary="One job's events, deliveries, output copies and cost (admins only)")
    async def job_timeline(self, pool: PoolDependency, admin_id: AdminDependency, request_id: FromPath[str],
                           deliveries: NamedDependency[DeliveryLog]) -> Timeline:
        await deliveries.flush()  # what this process received is in the answer
        return await admin.timeline(pool, request_id)

    @get("/stats", summary="Per model and per user figures, failures grouped, over a window (admins only)")
    async def stats(self, pool: PoolDependency, admin_id: AdminDependency, since: Since = None,
                    until: Until = None) -> admin_stats.Stats:
        now = datetime.now(UTC)
        end = parse_moment("until", until, now=now) or now
        start = parse_moment("since", since, now=now) or end - DEFAULT_STATS_WINDOW
        if not start < end:
            raise InvalidRequest("since: must be before until")
        if end - start > MAX_STATS_WINDOW:
            raise InvalidRequest(f"since: a window of at most {MAX_STATS_WINDOW.days} days")
        return await admin_stats.stats(pool, start, end)

    @get("/events", summary="Every user's jobs, live (SSE); stays open (admins only)")
    async def events(
        self, request: Request, pool: PoolDependency, admin_id: AdminDependency, caller: CallerDependency,
        hub: NamedDependency[Hub], admission: NamedDependency[Admission],
        last_event_id_query: Annotated[str | None, QueryParameter(name="last_event_id", description="resume after this event id")] = None,
    ) -> EventStreamResponse:
        # The caller's key or browser session (same origin: EventSource sends the cookie), not a
        # stream token: a token in a URL is for end users' browsers, and opens one user's jobs at most.
        resume_after = last_event_id(request, last_event_id_query)
        # A sign-out, a revoked key, or the caller made an ordinary user again ends it.
        ticket = admission.admit(caller, "stream", admin_only=True)
        try:
            stream = await open_user_stream(hub, pool, user_id=None, statuses=None, types=None,
                                            last_event_id=resume_after)
        except BaseException:
            ticket.release()
            raise
        return EventStreamResponse(AdmittedStream(stream, ticket))
