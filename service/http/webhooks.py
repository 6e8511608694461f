"""fal's webhook: verify the signature on the raw body, then hand the change to the intake.

Answers: 200 once the change is durable (applied, a no-op duplicate, or parked for a job not yet
written); 401 naming why a signature fails; 400 for a body that is not a fal webhook; 503 when
the database or fal's keys are unreachable, so that fal retries. Nothing is dropped silently.
"""

from __future__ import annotations

from litestar import Request, post
from litestar.di import NamedDependency

from service.fal.webhooks import WebhookReceipt, WebhookReceiver

MAX_WEBHOOK_BYTES = 1024 * 1024
"""fal's webhook bodies carry output URLs, not media; anything larger is refused with 413."""


@post("/api/webhooks/fal", status_code=200, tags=["webhooks"], summary="fal's completion webhook (Ed25519-signed)",
      request_max_body_size=MAX_WEBHOOK_BYTES)
async def fal_webhook(request: Request, webhooks: NamedDependency[WebhookReceiver]) -> WebhookReceipt:
    # One dependency, not two: Litestar resolves several in a task group, two task spawns per webhook.
    return await webhooks.receive(request.headers, await request.body())
