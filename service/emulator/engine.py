"""The emulator's state machine: requests move IN_QUEUE -> IN_PROGRESS -> COMPLETED in asyncio tasks,
and finished requests that carry a `fal_webhook` are delivered, signed, with retries.

Everything lives in memory: the emulator stands in for fal in tests and local runs, not in production.
This module answers the queue calls and runs each request's task; what a request holds is in
`records`, how it spends its time in `pacing`, how it ends in `outcomes`.

Decisions where fal's behaviour is not documented (see the report and module docs):
- queue_position = requests for the same owner/app submitted earlier and still queued, plus the
  per-request `fal_emulator.queue_position` countdown (which ticks down to 0 over queue_ms).
- cancel: a queued or running request stops at once and becomes COMPLETED with
  error "Request was cancelled"; its result answers 400 with that detail; NO webhook is sent
  (fal's docs: a queued request "is removed and never processed"). With `cancel_ignored`, a
  running request takes the cancel and runs on to its own end.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from . import outcomes
from .inputs import InputFetch, fetch_image, takes_image
from .pacing import Pace, queue_and_run, request_faults
from .pricing_routes import EMULATED_PRICES
from .records import AppRef, EmulatedRequest, QueueError, SubmitRecord, new_request, split_model_path
from .schemas import SCHEMA_PATH
from .signing import KeySet
from .storage_routes import StorageState
from .webhooks import FAL_RETRY_SCHEDULE_S, WebhookSender
from .wire import DeliveryAttempt, StatusResponse, SubmitResponse, WebhookBody

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class FalEmulator:
    def __init__(
        self,
        base_url: str,
        keys: str | Sequence[str],
        *,
        retry_schedule_s: Sequence[float] = FAL_RETRY_SCHEDULE_S,
        webhook_timeout_s: float = 15.0,
        heartbeat_s: float = 15.0,
        default_queue_ms: int = 50,
        default_run_ms: int = 100,
        user_id: str = "fal-emulator-user",
        pace: Pace = "fast",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.accepted_keys = frozenset([keys] if isinstance(keys, str) else keys)
        self.heartbeat_s = heartbeat_s
        self.default_queue_ms = default_queue_ms
        self.default_run_ms = default_run_ms
        self.user_id = user_id
        self.pace = pace
        self.keyset = KeySet()
        self.requests: dict[str, EmulatedRequest] = {}
        self.deliveries: list[DeliveryAttempt] = []
        self.submissions: list[SubmitRecord] = []
        self.storage = StorageState()
        """fal's storage for input files: tokens handed out and files uploaded (storage_routes.py)."""
        self.input_fetches: list[InputFetch] = []
        """Every input URL a run fetched (image-to-video and image-to-image models)."""
        # The last media paths fetched (tests look for one); bounded, since the demo runs for days.
        self.media_fetches: collections.deque[str] = collections.deque(maxlen=1000)
        """The path of every media fetch, in order."""
        self.jwks_fetches = 0
        self.schema_reads: list[str] = []
        """The endpoint id of every read of a model's OpenAPI (schemas.py)."""
        # Flip to False to make the schema URL answer 503 (the "fal's schema cannot be had" path).
        self.schemas_available = True
        # Flip to False to make the JWKS URL answer 503 (a receiver's "fal's keys are unreachable" path).
        self.jwks_available = True
        self.prices: dict[str, tuple[float, str]] = dict(EMULATED_PRICES)
        """What the pricing call answers: (unit price in USD, unit) per endpoint id."""
        self.pricing_reads = 0
        # Flip to False to make the pricing call answer 503 (fal's Platform API down).
        self.pricing_available = True
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self._sender = WebhookSender(
            self.keyset,
            user_id=user_id,
            retry_schedule_s=retry_schedule_s,
            timeout_s=webhook_timeout_s,
            on_attempt=self._record_attempt,
        )

    # ---- keys -------------------------------------------------------------------------------

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def schema_url(self) -> str:
        """fal's per-endpoint OpenAPI (`?endpoint_id=<id>`), as the emulator serves it."""
        return f"{self.base_url}{SCHEMA_PATH}"

    @property
    def media_base(self) -> str:
        return f"{self.base_url}/media"

    def rotate_key(self, keep_old: bool = True) -> str:
        """New current signing key; returns its kid. keep_old=False drops the old key from the JWKS."""
        return self.keyset.rotate(keep_old=keep_old).kid

    def jwks(self) -> dict[str, Any]:
        self.jwks_fetches += 1
        return self.keyset.jwks_dict()

    def is_authorized(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "key" and token.strip() in self.accepted_keys

    # ---- change notification ------------------------------------------------------------------

    def changed(self) -> asyncio.Event:
        """An event set at the next state change (take it BEFORE reading state to not miss one)."""
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait for a condition on emulator state (e.g. a number of deliveries); TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._changed
                if predicate():
                    return
                await event.wait()

    # ---- queue calls ---------------------------------------------------------------------------

    async def submit(
        self, model_path: str, model_input: dict[str, Any], webhook_url: str | None,
        lifecycle_preference: str | None = None,
    ) -> SubmitResponse:
        split = split_model_path(model_path)
        if split is None:
            raise QueueError(404, {"detail": f"Application not found: {model_path!r}"})
        app_ref, model_id = split
        model_input = dict(model_input)
        faults = request_faults(model_id, model_input, self.pace)  # FaultOptionsError -> 422 in app
        if faults.submit_status is not None:
            self.submissions.append(SubmitRecord(model_id, faults.submit_status, None))
            raise QueueError(
                faults.submit_status,
                {"detail": f"Emulated queue failure (fal_emulator.submit_status = {faults.submit_status})"},
            )
        req = new_request(
            seq=next(self._seq), request_id=str(uuid.uuid4()), gateway_request_id=str(uuid.uuid4()),
            app_ref=app_ref, model_id=model_id, model_input=model_input, faults=faults, webhook_url=webhook_url,
            default_queue_ms=self.default_queue_ms, default_run_ms=self.default_run_ms,
        )
        self.requests[req.request_id] = req
        self.submissions.append(SubmitRecord(model_id, 200, req.request_id, lifecycle_preference))
        url = self._request_url(req)
        answer = SubmitResponse(
            request_id=req.request_id, response_url=url, status_url=url + "/status", cancel_url=url + "/cancel",
            queue_position=self._queue_position(req), gateway_request_id=req.gateway_request_id,
        )
        req.task = self._spawn(self._lifecycle(req))
        self._notify()
        if faults.webhook_before_submit_response:
            # The race fal can produce: the webhook lands before the submitter has the request id.
            budget = (req.queue_ms + req.run_ms + faults.webhook_delay_ms) / 1000 + self._sender.timeout_s + 10
            await asyncio.wait_for(req.webhook_settled.wait(), budget)
        return answer

    def status(self, app_ref: AppRef, request_id: str, *, with_logs: bool) -> tuple[int, StatusResponse]:
        """A status call (a poll, or the opening of a status stream), counted, and failed while a
        `status_failures` fault lasts."""
        req = self._find(app_ref, request_id)
        req.status_calls += 1
        self._notify()
        if req.take_status_failure():
            raise QueueError(req.faults.failure_status, {"detail": "Emulated status failure (fal_emulator.status_failures)"})
        return self.current_status(req, with_logs=with_logs)

    def stalls(self, app_ref: AppRef, request_id: str) -> bool:
        """Whether this status poll must never answer (`status_stalls`); counted as a status call."""
        req = self._find(app_ref, request_id)
        if not req.take_status_stall():
            return False
        req.status_calls += 1
        self._notify()
        return True

    async def wait_closed(self) -> None:
        while not self._closed:
            await self._changed.wait()

    def current_status(self, req: EmulatedRequest, *, with_logs: bool) -> tuple[int, StatusResponse]:
        return (200 if req.state == "COMPLETED" else 202), self.status_view(req, with_logs=with_logs)

    def forget(self, request_id: str) -> None:
        """fal losing a request (expired, or lost on its side): every later call about it answers
        404, and its open status streams end without COMPLETED."""
        req = self.requests[request_id]  # kept, so tests can still look at what was submitted
        req.forgotten = True
        self._notify()

    def release(self, request_id: str) -> None:
        """Let a held request (`hold`) past its next hold point: out of the queue, then to completion."""
        self.requests[request_id].released.release()

    def result(self, app_ref: AppRef, request_id: str) -> tuple[int, dict[str, Any]]:
        req = self._find(app_ref, request_id)
        if req.take_result_failure():
            raise QueueError(req.faults.failure_status, {"detail": "Emulated result failure (fal_emulator.result_failures)"})
        if req.state != "COMPLETED" or req.result_body is None:
            raise QueueError(400, {"detail": "Request is still in progress"})
        return req.result_status, req.result_body

    def cancel(self, app_ref: AppRef, request_id: str) -> tuple[int, dict[str, Any]]:
        req = self.requests.get(request_id)
        if req is None or req.app_ref != app_ref or req.forgotten:
            return 404, {"status": "NOT_FOUND"}
        if req.state == "COMPLETED":
            return 400, {"status": "ALREADY_COMPLETED"}
        if req.state == "IN_PROGRESS" and req.faults.cancel_ignored:
            return 202, {"status": "CANCELLATION_REQUESTED"}
        outcomes.cancel(req)
        self._notify()
        return 202, {"status": "CANCELLATION_REQUESTED"}

    # ---- views --------------------------------------------------------------------------------

    def status_view(self, req: EmulatedRequest, *, with_logs: bool) -> StatusResponse:
        url = self._request_url(req)
        view = StatusResponse(
            status=req.state, request_id=req.request_id, response_url=url, status_url=url + "/status", cancel_url=url + "/cancel"
        )
        if req.state == "IN_QUEUE":
            view.queue_position = self._queue_position(req)
            return view
        view.logs = list(req.logs) if with_logs else None
        if req.state == "COMPLETED":
            view.metrics = dict(req.metrics)
            if req.error is not None:
                view.error = req.error
                view.error_type = req.error_type
        return view

    def _request_url(self, req: EmulatedRequest) -> str:
        return f"{self.base_url}/{req.app_ref.path}/requests/{req.request_id}"

    def _queue_position(self, req: EmulatedRequest) -> int:
        ahead = sum(
            1
            for other in self.requests.values()
            if other.state == "IN_QUEUE" and other.app_ref == req.app_ref and other.seq < req.seq
        )
        return ahead + req.countdown

    def _find(self, app_ref: AppRef, request_id: str) -> EmulatedRequest:
        req = self.requests.get(request_id)
        if req is None or req.app_ref != app_ref or req.forgotten:
            raise QueueError(404, {"detail": f"Request {request_id} not found"})
        return req

    # ---- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _lifecycle(self, req: EmulatedRequest) -> None:
        try:
            await queue_and_run(req, self._notify)
            if takes_image(req.model_id):
                fetched = await fetch_image(req.request_id, req.input.get("image_url"), self.input_fetches)
                req.input_errors, req.input_colour = fetched.errors, fetched.colour
            outcomes.finish(req, self.media_base)
            self._notify()
            if req.webhook_url is not None:
                await self._deliver(req, req.webhook_url)
        finally:
            # Whatever happened (done, cancelled, emulator closing), a submit waiting on this must go on.
            req.webhook_settled.set()

    # ---- webhooks -----------------------------------------------------------------------------

    def webhook_body(self, req: EmulatedRequest) -> WebhookBody:
        return outcomes.webhook_body(req)

    async def _deliver(self, req: EmulatedRequest, url: str) -> None:
        if req.faults.webhook_delay_ms:
            await asyncio.sleep(req.faults.webhook_delay_ms / 1000)
        body = msgspec.json.encode(outcomes.webhook_body(req))
        for delivery in range(1, req.faults.duplicates + 1):
            await self._sender.deliver(
                url,
                body,
                request_id=req.request_id,
                delivery=delivery,
                bad_signature=req.faults.bad_signature,
                after_first_attempt=req.webhook_settled.set,
            )

    def _record_attempt(self, attempt: DeliveryAttempt) -> None:
        self.deliveries.append(attempt)
        self._notify()

    def deliveries_for(self, request_id: str) -> list[DeliveryAttempt]:
        return [d for d in self.deliveries if d.request_id == request_id]

    # ---- shutdown -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Cancel request and delivery tasks and close the webhook client; safe to call twice."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._sender.aclose()
        self._notify()  # wake status streams so they can end
