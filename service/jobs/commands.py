"""Creating and cancelling jobs: the seed's `createFalJob`, and its counterpart.

Create: validate, submit to fal (with our webhook URL when fal can reach us), then record the job
as `pending`. fal answers first, so a refused submit leaves no job behind; a webhook that beats
the INSERT is parked and adopted right after it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec

from service.errors import Conflict, InvalidRequest, UpstreamError
from service.fal.follower import FollowTarget, JobFollower
from service.fal.gateway import FalGateway
from service.fal.webhooks import WebhookIntake
from service.jobs import queries
from service.jobs.catalog import model_type
from service.jobs.models import Job, JobChange, JobType, NewJob
from service.jobs.status_machine import apply_change, create_job

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$", re.IGNORECASE)
MAX_INPUT_BYTES = 64 * 1024


class CreateJobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: JobType
    model_id: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class JobCommands:
    def __init__(
        self, pool: asyncpg.Pool, gateway: FalGateway, intake: WebhookIntake, follower: JobFollower,
        *, allowed_models: tuple[str, ...], webhook_url: str | None,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._intake = intake
        self._follower = follower
        self._allowed_models = allowed_models
        self._webhook_url = webhook_url

    def validate(self, request: CreateJobRequest) -> None:
        if not MODEL_ID_PATTERN.match(request.model_id):
            raise InvalidRequest(f"model_id: {request.model_id!r} is not of the form owner/app[/path]")
        if request.model_id not in self._allowed_models:
            raise InvalidRequest(f"model_id: {request.model_id!r} is not allowed here; allowed: {', '.join(self._allowed_models)}")
        if model_type(request.model_id) != request.type:
            raise InvalidRequest(f"type: {request.model_id!r} makes {model_type(request.model_id)}s, not {request.type}s")
        size = len(msgspec.json.encode(request.input))
        if size > MAX_INPUT_BYTES:
            raise InvalidRequest(f"input: {size} bytes of JSON; at most {MAX_INPUT_BYTES} are accepted")

    async def create(self, user_id: str, request: CreateJobRequest) -> Job:
        self.validate(request)
        request_id = await self._gateway.submit(request.model_id, request.input, self._webhook_url)
        mode = "webhook" if self._webhook_url else "polling"
        try:
            async with self._pool.acquire() as connection:
                job = await create_job(
                    connection,
                    NewJob(request_id=request_id, user_id=user_id, model_id=request.model_id, type=request.type,
                           input=request.input, mode=mode),
                )
        except Exception:
            # fal has the request but we could not record it: do not leave it running unowned.
            try:
                await self._gateway.cancel(request.model_id, request_id)
            except Exception:
                log.warning("could not cancel an unrecorded fal request", extra={"request_id": request_id})
            raise
        try:
            if await self._intake.adopt_early(request_id, request.model_id):
                job = await queries.get_job(self._pool, user_id, request_id)
        except Exception:
            # The webhook stays parked; the reconciliation sweep adopts it.
            log.exception("adopting an early webhook failed", extra={"request_id": request_id})
        if not job.is_terminal:
            self._follower.follow(FollowTarget(request_id=request_id, model_id=request.model_id, mode=mode))
        return job

    async def cancel(self, user_id: str, request_id: str) -> Job:
        job = await queries.get_job(self._pool, user_id, request_id)
        if job.is_terminal:
            raise Conflict(f"job {request_id!r} is already {job.status}")
        outcome = await self._gateway.cancel(job.model_id, request_id)
        if outcome == "already_completed":
            raise Conflict(f"job {request_id!r} already completed at fal; its result is on its way")
        if outcome == "not_found":
            raise UpstreamError(f"fal does not know request {request_id!r}")
        async with self._pool.acquire() as connection:
            applied = await apply_change(connection, request_id, JobChange(status="cancelled", error="cancelled by the user"))
        assert applied.job is not None
        if not applied.accepted and applied.job.status != "cancelled":
            raise Conflict(f"job {request_id!r} is already {applied.job.status}")
        return applied.job
