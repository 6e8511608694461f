"""Submitting a job: the seed's `createFalJob` (its counterpart: `cancel_job`).

Validate, reserve within the user's limits, submit to fal (with our webhook URL when fal can reach
us), then record the job as `pending`. fal answers first, so a refused submit leaves no job
behind; a webhook that beats the INSERT is parked and adopted right after it.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from service import metrics
from service.errors import InvalidRequest
from service.jobs import queries, reservations
from service.jobs.catalog import model_type
from service.jobs.models import Job, JobMode, JobType, NewJob
from service.jobs.reservations import Limits, body_digest
from service.jobs.status_machine import create_job
from service.jobs.tags import check_metadata, check_tags
from service.uploads.references import UploadInputs, record_uses
from service.usecases.follow_jobs import FollowTarget, JobFollower
from service.usecases.job_costs import estimate_cost

if TYPE_CHECKING:
    import asyncpg

    from service.fal.gateway import FalGateway
    from service.fal.model_schemas import ModelSchemas
    from service.fal.pricing import PriceBook
    from service.usecases.receive_webhook import WebhookIntake

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$", re.IGNORECASE)
MAX_INPUT_BYTES = 64 * 1024


class CreateJobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: JobType
    model_id: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    """Up to 10 labels of the app's own (`user:123`): list, stream and scope tokens by them."""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    """The app's own JSON object (at most 4 KiB), stored and returned; never sent to fal."""

    def digest(self) -> str:
        """What an Idempotency-Key compares: the request as checked (tags deduplicated), with no
        tags and no metadata written as a request without them was before they existed."""
        body = msgspec.structs.asdict(self)
        for field in ("tags", "metadata"):
            if not body[field]:
                del body[field]
        return body_digest(body)

    # What a 400 for an unknown field says (service/http/validation.py): the usual slip is a model
    # parameter (`prompt`) beside `input` rather than in it.
    unknown_field_hint: ClassVar[str] = (
        'model parameters go inside `input`, like {"type": "image", "model_id": "fal-ai/flux/schnell", '
        '"input": {"prompt": "a red fox"}}; the body\'s fields are `type`, `model_id`, `input`, `tags` and `metadata`'
    )


class Created(msgspec.Struct, frozen=True):
    job: Job
    replayed: bool
    """True when an Idempotency-Key named an earlier create: that job, and nothing submitted."""


def _unstorable(value: Any, path: str) -> str | None:
    """The path of the first string Postgres' jsonb cannot hold (it refuses NUL), if any.
    Lone surrogates never get this far: the JSON decoder refuses them."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path} (a key)"
            if (found := _unstorable(item, f"{path}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _unstorable(item, f"{path}[{index}]")) is not None:
                return found
    return None


class SubmitJob:
    def __init__(
        self, pool: asyncpg.Pool, gateway: FalGateway, intake: WebhookIntake, follower: JobFollower,
        *, allowed_models: tuple[str, ...], webhook_url: str | None, limits: Limits, prices: PriceBook | None = None,
        inputs: UploadInputs | None = None, schemas: ModelSchemas | None = None,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._intake = intake
        self._follower = follower
        self._allowed_models = allowed_models
        self._webhook_url = webhook_url
        self._limits = limits
        self._prices = prices
        self._inputs = inputs
        self._schemas = schemas

    def validate(self, request: CreateJobRequest) -> CreateJobRequest:
        """The request as it is stored (tags deduplicated), or InvalidRequest naming the field."""
        if not MODEL_ID_PATTERN.match(request.model_id):
            raise InvalidRequest(f"model_id: {request.model_id!r} is not of the form owner/app[/path]")
        if request.model_id not in self._allowed_models:
            raise InvalidRequest(f"model_id: {request.model_id!r} is not allowed here; allowed: {', '.join(self._allowed_models)}")
        if model_type(request.model_id) != request.type:
            raise InvalidRequest(f"type: {request.model_id!r} makes {model_type(request.model_id)}s, not {request.type}s")
        size = len(msgspec.json.encode(request.input))
        if size > MAX_INPUT_BYTES:
            raise InvalidRequest(f"input: {size} bytes of JSON; at most {MAX_INPUT_BYTES} are accepted")
        for value, name in ((request.input, "input"), (request.metadata, "metadata")):
            if (path := _unstorable(value, name)) is not None:
                raise InvalidRequest(f"{path}: contains a NUL character (\\u0000), which cannot be stored")
        check_metadata(request.metadata)
        return msgspec.structs.replace(request, tags=check_tags(request.tags))

    async def create(self, user_id: str, request: CreateJobRequest, *, idempotency_key: str | None = None) -> Created:
        """Reserve within the user's limits, submit to fal, record the job; or replay the job an
        earlier request with the same Idempotency-Key created."""
        request = self.validate(request)
        if self._schemas is not None:  # the model's own schema (fal's): 422 naming the field, nothing sent
            await self._schemas.check(request.model_id, request.input)
        cost = await estimate_cost(self._prices, request.model_id, request.input)
        # `upload:<id>` strings become URLs fal can fetch; the job keeps the references.
        resolved = await self._inputs.resolve(user_id, request.input) if self._inputs else None
        reservation = await reservations.reserve(
            self._pool, user_id, digest=request.digest(), idempotency_key=idempotency_key, defaults=self._limits,
            estimate=cost.estimated if cost else None,
        )
        if reservation.replay_of is not None:
            return Created(job=await queries.get_job(self._pool, user_id, reservation.replay_of), replayed=True)
        try:
            request_id = await self._gateway.submit(request.model_id, resolved.input if resolved else request.input,
                                                    self._webhook_url)
        except BaseException:
            try:
                await reservations.cancel(self._pool, reservation.id)
            except Exception:  # it stops counting after reservations.SUBMIT_GRACE anyway
                log.warning("could not drop a reservation after a refused submit", extra={"action": "release_reservation"})
            raise
        mode: JobMode = "webhook" if self._webhook_url else "polling"
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                job = await create_job(
                    connection,
                    NewJob(request_id=request_id, user_id=user_id, model_id=request.model_id, type=request.type,
                           input=request.input, mode=mode, tags=request.tags, metadata=request.metadata, cost=cost),
                )
                await reservations.fulfil(connection, reservation.id, request_id)
                if resolved is not None:
                    await record_uses(connection, request_id, resolved.upload_ids)
        except Exception:
            # fal has the request but we could not record it: do not leave it running unowned.
            try:
                await self._gateway.cancel(request.model_id, request_id)
            except Exception:
                log.warning("could not cancel an unrecorded fal request", extra={"request_id": request_id})
            raise
        metrics.job_created(request.model_id)
        try:
            if await self._intake.adopt_early(request_id, request.model_id):
                job = await queries.get_job(self._pool, user_id, request_id)
        except Exception:
            # The webhook stays parked; the reconciliation sweep adopts it.
            log.exception("adopting an early webhook failed", extra={"request_id": request_id})
        if not job.is_terminal:
            self._follower.follow(FollowTarget(request_id=request_id, model_id=request.model_id, mode=mode))
        return Created(job=job, replayed=False)
