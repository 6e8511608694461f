"""Taking fal's webhooks: a verified body becomes a job change, applied through the status machine.

A webhook can beat the INSERT of the job it is about (a fast model answers before our submit call
returns). Such a webhook is parked in `fal_early_webhooks` and applied when the job row appears;
an advisory lock on the request id makes "no row yet, park it" and "row created, adopt what is
parked" mutually exclusive, so nothing slips between them.

A webhook for a job already cancelled changes nothing of the job (terminal states are final), but
it is fal's word that the request ended: a job cancelled while fal ran it stops counting against
the open-jobs limit then (`reservations.fal_ended`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from service import metrics
from service.db.storable import storable_json
from service.errors import DomainError, InvalidRequest, NotAuthenticated, Unavailable
from service.fal.gateway import CANCELLED_ERROR, FalGateway, FalRequestFailed, describe_error, was_cancelled
from service.fal.signatures import HEADER_REQUEST_ID, JwksUnavailable, WebhookSignatureError, WebhookVerifier
from service.jobs import reservations, sql
from service.jobs.delivery_log import Delivery, DeliveryLog
from service.jobs.finish_batches import FinishBatches
from service.jobs.models import JobChange
from service.jobs.status_machine import Applied, apply_change

if TYPE_CHECKING:
    from collections.abc import Mapping

    import asyncpg

log = logging.getLogger(__name__)


class FalWebhook(msgspec.Struct, kw_only=True):
    request_id: str
    status: Literal["OK", "ERROR"]
    gateway_request_id: str | None = None
    payload: Any = None
    payload_error: str | None = None
    error: str | None = None


def parse_webhook(body: bytes, signed_request_id: str) -> FalWebhook:
    try:
        # After the signature check, which covers the raw bytes: NUL and lone surrogates escaped.
        webhook = msgspec.json.decode(storable_json(body), type=FalWebhook)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise InvalidRequest(f"body: not a fal webhook ({error})") from None
    if webhook.request_id != signed_request_id and webhook.gateway_request_id != signed_request_id:
        raise InvalidRequest("request_id: the body's request id differs from the signed X-Fal-Webhook-Request-Id")
    # The signed header decides which job changes, never the body.
    return msgspec.structs.replace(webhook, request_id=signed_request_id)


class WebhookIntake:
    def __init__(self, pool: asyncpg.Pool, gateway: FalGateway, finishes: FinishBatches | None = None) -> None:
        self._pool = pool
        self._gateway = gateway
        self._finishes = finishes or FinishBatches(pool)

    async def receive(self, webhook: FalWebhook) -> Applied | None:
        """Apply the webhook, or park it when its job is not there yet (None).

        The common case (a job's end, its row there and open) is one statement shared with the
        webhooks that arrive with it (`FinishBatches`). What that leaves alone goes through the
        status machine by itself; only a webhook without its row takes the advisory lock, in a
        transaction."""
        change = _change_from_payload(webhook)
        if change is not None and change.ends_without_logs:
            job = await self._finishes.finish(webhook.request_id, change)
            if job is not None:
                return Applied(job=job, accepted=True)
        async with self._pool.acquire() as connection:
            if change is not None:
                applied = await apply_change(connection, webhook.request_id, change)
                if applied.job is not None:
                    await _note_fal_end(connection, applied)
                    return applied
            async with connection.transaction():
                # No row yet (or the output must be fetched first): serialize with the job's creation.
                await connection.execute(sql.LOCK_REQUEST, webhook.request_id)
                model_id = await connection.fetchval(sql.JOB_MODEL, webhook.request_id)
                if model_id is None:
                    # A repeated delivery (fal's retries, or a replay within the signature's
                    # five minutes) is kept once.
                    await connection.execute(sql.PARK_WEBHOOK, webhook.request_id, webhook)
                    log.info("webhook parked until its job appears", extra={"request_id": webhook.request_id})
                    return None
                if change is not None:  # the row was created while we looked
                    return await apply_change(connection, webhook.request_id, change)
        change = await self._change_for(webhook, model_id)
        async with self._pool.acquire() as connection:
            applied = await apply_change(connection, webhook.request_id, change)
            await _note_fal_end(connection, applied)
            return applied

    async def adopt_early(self, request_id: str, model_id: str) -> int:
        """Apply the webhooks parked for a job whose row now exists; returns how many."""
        rows = await self._pool.fetch(sql.PARKED_WEBHOOKS, request_id)
        for row in rows:
            webhook = msgspec.convert(row["body"], FalWebhook)
            change = await self._change_for(webhook, model_id)
            async with self._pool.acquire() as connection, connection.transaction():
                await apply_change(connection, request_id, change)
                # Deleted only once applied: a crash in between re-applies, and duplicates are no-ops.
                await connection.execute(sql.UNPARK_WEBHOOK, row["id"])
        return len(rows)

    async def _change_for(self, webhook: FalWebhook, model_id: str) -> JobChange:
        change = _change_from_payload(webhook)
        if change is not None:
            return change
        # fal could not serialize the output into the webhook: fetch it from the queue.
        try:
            output = await self._gateway.result(model_id, webhook.request_id)
        except FalRequestFailed as failure:
            if failure.status_code >= 500:
                raise Unavailable(f"fal answered {failure.status_code} for the result; retry") from None
            return JobChange(status="failed", error=f"fal answered {failure.status_code} for the result", result=failure.detail)
        except Exception as error:  # transport errors: fal retries the webhook we refuse
            raise Unavailable(f"could not fetch the result from fal ({type(error).__name__}); retry") from None
        return JobChange(status="completed", result=output)


async def _note_fal_end(connection: asyncpg.Connection, applied: Applied) -> None:
    """A webhook is fal's end of its request: for a job cancelled before it (and only then: one
    statement more, for those jobs alone), the end frees the open-jobs slot the job kept."""
    if applied.job is not None and not applied.accepted and applied.job.status in ("cancelled", "deleted"):
        await reservations.fal_ended(connection, applied.job.request_id)


def _change_from_payload(webhook: FalWebhook) -> JobChange | None:
    """The change a webhook carries, or None when fal left the output out (`payload_error`)."""
    if webhook.status == "ERROR":
        if was_cancelled(webhook.error, webhook.payload):
            return JobChange(status="cancelled", error=CANCELLED_ERROR)
        return JobChange(status="failed", error=describe_error(webhook.error, webhook.payload), result=webhook.payload)
    if webhook.payload is None and webhook.payload_error is not None:
        return None
    return JobChange(status="completed", result=webhook.payload)


class WebhookReceipt(msgspec.Struct, frozen=True):
    request_id: str
    outcome: Literal["applied", "duplicate", "parked"]


class WebhookReceiver:
    """A delivery as it arrives: verify it (from fal, for our account), then take it in.

    Refusals are domain errors: a bad signature is NotAuthenticated (fal does not retry a 401 in
    vain: the same bytes would fail again), unreachable keys or database are Unavailable (fal
    retries)."""

    def __init__(self, verifier: WebhookVerifier, intake: WebhookIntake, deliveries: DeliveryLog | None = None) -> None:
        self._verifier = verifier
        self._intake = intake
        self._deliveries = deliveries

    async def receive(self, headers: Mapping[str, str], body: bytes) -> WebhookReceipt:
        """Take the delivery in, and note it in the delivery log (queued: no round trip of its own),
        whatever came of it: a refusal with its reason, an answer with its outcome."""
        arrived, started = time.time(), time.perf_counter()
        outcome: str = "rejected"
        reason: str | None = "error"
        status: str | None = None
        try:
            receipt, status = await self._receive(headers, body)
            outcome, reason = receipt.outcome, None
            return receipt
        except DomainError as error:
            reason = error.message
            raise
        finally:
            if self._deliveries is not None:
                self._deliveries.record(Delivery(
                    received_at=arrived, request_id=headers.get(HEADER_REQUEST_ID), source="webhook",
                    outcome="accepted" if outcome == "applied" else outcome, reason=reason, status=status,
                    duration_us=int((time.perf_counter() - started) * 1_000_000)))

    async def _receive(self, headers: Mapping[str, str], body: bytes) -> tuple[WebhookReceipt, str]:
        try:
            verified = await self._verifier.verify(headers, body)
        except WebhookSignatureError as error:
            metrics.webhook("rejected", "signature")
            raise NotAuthenticated(f"signature: {error.reason}") from None
        except JwksUnavailable:
            metrics.webhook("rejected", "keys_unavailable")
            raise Unavailable("fal's signing keys could not be fetched; retry later") from None
        try:
            webhook = parse_webhook(body, verified.request_id)
        except InvalidRequest:
            metrics.webhook("rejected", "body")
            raise
        applied = await self._intake.receive(webhook)  # a failing database is a 503 (see http_requests_total)
        receipt = WebhookReceipt(request_id=webhook.request_id,
                                 outcome="parked" if applied is None else "applied" if applied.accepted else "duplicate")
        metrics.webhook(receipt.outcome)
        return receipt, webhook.status
