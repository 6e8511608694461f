"""fal's webhook: verify the signature on the raw body, then hand the change to the intake.

Answers: 200 once the change is durable (applied, a no-op duplicate, or parked for a job not yet
written); 401 naming why a signature fails; 400 for a body that is not a fal webhook; 503 when
the database or fal's keys are unreachable, so that fal retries. Nothing is dropped silently.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency

from service.errors import NotAuthenticated, Unavailable
from service.fal.signatures import JwksUnavailable, WebhookSignatureError, WebhookVerifier
from service.fal.webhooks import WebhookIntake, parse_webhook


class WebhookAck(msgspec.Struct):
    request_id: str
    outcome: Literal["applied", "duplicate", "parked"]


MAX_WEBHOOK_BYTES = 1024 * 1024
"""fal's webhook bodies carry output URLs, not media; anything larger is refused with 413."""


@post("/api/webhooks/fal", status_code=200, tags=["webhooks"], summary="fal's completion webhook (Ed25519-signed)",
      request_max_body_size=MAX_WEBHOOK_BYTES)
async def fal_webhook(
    request: Request,
    verifier: NamedDependency[WebhookVerifier],
    intake: NamedDependency[WebhookIntake],
) -> WebhookAck:
    body = await request.body()
    try:
        verified = await verifier.verify(request.headers, body)
    except WebhookSignatureError as error:
        raise NotAuthenticated(f"signature: {error.reason}") from None
    except JwksUnavailable:
        raise Unavailable("fal's signing keys could not be fetched; retry later") from None
    webhook = parse_webhook(body, verified.request_id)
    applied = await intake.receive(webhook)
    if applied is None:
        return WebhookAck(request_id=webhook.request_id, outcome="parked")
    return WebhookAck(request_id=webhook.request_id, outcome="applied" if applied.accepted else "duplicate")
