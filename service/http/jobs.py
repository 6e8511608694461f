"""Jobs over HTTP: create, read, list, cancel, result."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from service.auth.stream_tokens import StreamTokens, job_scope
from service.errors import Conflict
from service.http.dependencies import CallerDependency, PoolDependency, UserIdDependency
from service.jobs import queries
from service.jobs.models import Job
from service.jobs.reservations import check_idempotency_key
from service.realtime.admission import Admission
from service.realtime.hub import Hub
from service.realtime.waiting import wait_for_job
from service.usecases.cancel_job import CancelJob
from service.usecases.delete_job import DeleteJob
from service.usecases.submit_job import MAX_INPUT_BYTES, CreateJobRequest, SubmitJob

MAX_WAIT_S = 300
MAX_CREATE_BODY_BYTES = 2 * MAX_INPUT_BYTES
"""64 KiB of input, with room for the envelope and for JSON written with spaces and escapes."""


class JobLinks(msgspec.Struct):
    self: str
    events: str
    result: str
    cancel: str


class JobView(Job, kw_only=True):
    links: JobLinks


class CreatedJob(JobView, kw_only=True):
    stream_token: str
    """For `GET links.events?token=...` from a browser's EventSource; short-lived."""
    stream_token_expires_at: int


class JobViewPage(msgspec.Struct, kw_only=True):
    jobs: list[JobView]
    next_cursor: str | None


def job_view(job: Job) -> JobView:
    base = f"/api/jobs/{job.request_id}"
    links = JobLinks(self=base, events=f"{base}/events", result=f"{base}/result", cancel=f"{base}/cancel")
    return JobView(**msgspec.structs.asdict(job), links=links)


class JobsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post("/", status_code=202, summary="Submit an image or video job to fal; answers at once",
          request_max_body_size=MAX_CREATE_BODY_BYTES)
    async def create_job(
        self, data: JSONBody[CreateJobRequest], caller: CallerDependency, submissions: NamedDependency[SubmitJob],
        tokens: NamedDependency[StreamTokens],
        idempotency_key: Annotated[str | None, HeaderParameter(
            name="Idempotency-Key",
            description="the same key and body within 24 h answer the same job and submit nothing to fal",
        )] = None,
    ) -> Response[CreatedJob]:
        key = check_idempotency_key(idempotency_key) if idempotency_key is not None else None
        created = await submissions.create(caller.user_id, data, idempotency_key=key)
        job = job_view(created.job)
        token, expires_at = tokens.issue(caller, job_scope(job.request_id))
        body = CreatedJob(**msgspec.structs.asdict(job), stream_token=token, stream_token_expires_at=expires_at)
        headers = {"Location": job.links.self}
        if created.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status_code=202, headers=headers)

    @get("/", summary="The caller's jobs, newest first")
    async def list_jobs(
        self,
        pool: PoolDependency,
        user_id: UserIdDependency,
        status: Annotated[str | None, QueryParameter(description="pending, in_progress, completed, failed or cancelled")] = None,
        type: Annotated[str | None, QueryParameter(description="image or video")] = None,
        tag: Annotated[str | None, QueryParameter(description="only the jobs carrying this tag")] = None,
        limit: Annotated[int, QueryParameter(description=f"1 to {queries.MAX_PAGE_SIZE}")] = queries.DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
    ) -> JobViewPage:
        page = await queries.list_jobs(pool, user_id, status=status, type=type, tag=tag, limit=limit, cursor=cursor)
        return JobViewPage(jobs=[job_view(job) for job in page.jobs], next_cursor=page.next_cursor)

    @get("/{request_id:str}", summary="One job; with ?wait=SECONDS, answers once it is terminal or at the deadline")
    async def get_job(
        self, pool: PoolDependency, caller: CallerDependency, hub: NamedDependency[Hub],
        admission: NamedDependency[Admission], request_id: FromPath[str],
        wait: Annotated[float, QueryParameter(ge=0, le=MAX_WAIT_S, description=f"seconds to wait for a terminal state, at most {MAX_WAIT_S}")] = 0,
    ) -> JobView:
        if wait > 0:
            queries.check_request_id(request_id)
            ticket = admission.admit(caller, "wait")
            try:
                job = await wait_for_job(hub, pool, user_id=caller.user_id, request_id=request_id, timeout_s=wait,
                                         ticket=ticket)
            finally:
                ticket.release()
            return job_view(job)
        return job_view(await queries.get_job(pool, caller.user_id, request_id))

    @get("/{request_id:str}/result", summary="The output of a completed job")
    async def get_result(self, pool: PoolDependency, user_id: UserIdDependency, request_id: FromPath[str]) -> Any:
        job = await queries.get_job(pool, user_id, request_id)
        if job.status != "completed":
            detail = f": {job.error}" if job.error else ""
            raise Conflict(f"job {request_id!r} is {job.status}, not completed{detail}")
        return job.result

    @post("/{request_id:str}/cancel", status_code=200, summary="Cancel a job that has not finished")
    async def cancel_job(
        self, user_id: UserIdDependency, request_id: FromPath[str], cancellations: NamedDependency[CancelJob]
    ) -> JobView:
        queries.check_request_id(request_id)
        return job_view(await cancellations.cancel(user_id, request_id))

    @delete("/{request_id:str}", status_code=200,
            summary="Delete a finished job's media: removed from our store, outputs answer 410; the job stays, as deleted")
    async def delete_job(
        self, user_id: UserIdDependency, request_id: FromPath[str], deletions: NamedDependency[DeleteJob]
    ) -> JobView:
        return job_view(await deletions.delete(user_id, request_id))
