"""Reading jobs over HTTP."""

from __future__ import annotations

from litestar import Controller, get
from litestar.params import FromPath, Parameter

from service.http.dependencies import PoolDependency, UserIdDependency
from service.jobs import queries
from service.jobs.models import Job
from service.jobs.queries import JobPage


class JobsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @get("/", summary="The caller's jobs, newest first")
    async def list_jobs(
        self,
        pool: PoolDependency,
        user_id: UserIdDependency,
        status: str | None = Parameter(default=None, description="pending, in_progress, completed, failed or cancelled"),
        type: str | None = Parameter(default=None, description="image or video"),
        limit: int = Parameter(default=queries.DEFAULT_PAGE_SIZE, description=f"1 to {queries.MAX_PAGE_SIZE}"),
        cursor: str | None = Parameter(default=None, description="next_cursor of the previous page"),
    ) -> JobPage:
        return await queries.list_jobs(pool, user_id, status=status, type=type, limit=limit, cursor=cursor)

    @get("/{request_id:str}", summary="One job")
    async def get_job(self, pool: PoolDependency, user_id: UserIdDependency, request_id: FromPath[str]) -> Job:
        return await queries.get_job(pool, user_id, request_id)
